"""The measured noise of a sweep's losses: the spread between seeds of one setting and each run's own
eval-loss standard error, and from them the noise of every point a fit uses.

The parametric bootstraps (bootstrap.py `parametric_resamples`) draw their noise from here, so an interval
is as wide as the loss really scatters between reruns; a sweep that measured neither (old results, a CSV)
falls back to resampling its cases or residuals.
"""

import math

import numpy as np

from gptjax.scaling.fit.rows import setting_groups, usable_rows


def measure_noise(rows: list[dict]) -> dict:
    """The noise of a sweep's eval losses, from its rows (results.jsonl dicts).

    Returns {"seed_sd": the pooled within-setting SD of eval_loss over the settings (budget, N, lr,
    batch_size) run with >= 2 seeds, sqrt(sum of squared deviations from each setting's mean / seed_dof),
    or None when no setting has 2; "seed_dof": sum over those settings of (seeds - 1); "n_seeded_settings";
    "eval_se": the median of the rows' eval_loss_se (the SD of a run's per-batch eval losses / sqrt(batches)),
    or None when no row records one}. Settings with a diverged seed are left out, as the fits leave them out.
    """
    seeded = [np.array([r["eval_loss"] for r in group], float) for group in setting_groups(rows) if len(group) >= 2]
    dof = sum(g.size - 1 for g in seeded)
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in seeded)
    ses = [r["eval_loss_se"] for r in usable_rows(rows)
           if isinstance(r.get("eval_loss_se"), (int, float)) and math.isfinite(r["eval_loss_se"])
           and r["eval_loss_se"] >= 0]
    return {"seed_sd": math.sqrt(squares / dof) if dof else None, "seed_dof": int(dof),
            "n_seeded_settings": len(seeded), "eval_se": float(np.median(ses)) if ses else None}


def loss_sd(rows: list[dict], noise: dict):
    """The noise SD of each row's (seed-mean) eval_loss, shape (len(rows),), or None when `noise` (from
    `measure_noise`) measured nothing.

    A row that averages n_seeds seeds (`seed_means`) has variance seed_sd^2 / n_seeds + eval_se^2: the seeds
    average out their own scatter but share one validation set, whose sampling error stays.
    """
    if noise["seed_sd"] is None and noise["eval_se"] is None:
        return None
    seed_var, eval_var = (noise["seed_sd"] or 0.0) ** 2, (noise["eval_se"] or 0.0) ** 2
    return np.sqrt([seed_var / row.get("n_seeds", 1) + eval_var for row in rows])
