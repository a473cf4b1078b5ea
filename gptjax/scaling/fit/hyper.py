"""DeepSeek LLM's hyperparameter laws (Sec. 3.1): the best learning rate and batch size per budget, as
power laws of compute."""

import math

import numpy as np

from gptjax.scaling.fit.bootstrap import (Estimate, band, curve_grid, law_estimates, one_blas_thread,
                                          parametric_resamples, residual_scale)
from gptjax.scaling.fit.identify import identification
from gptjax.scaling.fit.isoflop import fit_power_law
from gptjax.scaling.fit.noise import loss_sd, measure_noise
from gptjax.scaling.fit.rows import FitError, seed_means


def _best_value(values, losses):
    """(value, method) minimising `losses` (one per swept value, ascending) over `values`.

    With >= 3 swept values: the vertex of a parabola of loss in log value, clipped to the swept range
    ("parabola" / "clipped"), or the best swept value if the parabola opens downwards ("argmin");
    with 2 values: the better one ("argmin").
    """
    x = np.log(values)
    if len(values) >= 3:
        c2, c1, _ = np.polyfit(x - x.mean(), losses, 2)
        if c2 > 0:
            vertex = x.mean() - c1 / (2 * c2)
            clipped = min(max(vertex, x[0]), x[-1])
            return math.exp(clipped), "parabola" if clipped == vertex else "clipped"
    return float(values[int(np.argmin(losses))]), "argmin"


def _sweep(rows, key):
    """(swept values ascending, the best row at each): rows of one model, the other hyperparameters
    minimised out."""
    values = sorted({r[key] for r in rows})
    return values, [min((r for r in rows if r[key] == v), key=lambda r: r["eval_loss"]) for v in values]


def _per_budget_optima(rows, key):
    """Per budget, the best `key` at the best model whose `key` was swept (>= 2 values): the optima (the
    dicts fits.json stores) and, alongside, each one's sweep (`_sweep`)."""
    by_model = {}
    for r in seed_means(rows):  # a setting's loss is its mean over seeds, as in best_per_model
        if r.get(key) is not None:
            by_model.setdefault((r["budget"], r["N"]), []).append(r)
    swept = {k: v for k, v in by_model.items() if len({r[key] for r in v}) >= 2}
    optima, sweeps = [], []
    for b in sorted({k[0] for k in swept}):
        model = min((k for k in swept if k[0] == b), key=lambda k: min(r["eval_loss"] for r in swept[k]))
        values, best = _sweep(swept[model], key)
        value, method = _best_value(values, [r["eval_loss"] for r in best])
        optima.append(dict(budget=float(b), C=math.exp(np.mean([math.log(r["C"]) for r in swept[model]])),
                           N=float(model[1]), value=value, method=method, swept=[float(v) for v in values]))
        sweeps.append((values, best))
    return optima, sweeps


def edge_budgets(optima) -> list[float]:
    """The budgets whose best value is at (or beyond) the edge of the values swept there."""
    return [o["budget"] for o in optima if not o["swept"][0] * (1 + 1e-9) < o["value"] < o["swept"][-1] * (1 - 1e-9)]


def _optimum_sd(sweeps, measured, seed, n_draws=200):
    """The SD of each budget's log optimum under the measured loss noise: its sweep's losses redrawn
    `n_draws` times with each setting's noise SD (`measured`, one array per sweep) and the optimum found
    again (`_best_value`)."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own, apart from the law's draws
    out = []
    for (values, best), sd in zip(sweeps, measured):
        losses = np.array([r["eval_loss"] for r in best]) + sd * rng.standard_normal((n_draws, len(values)))
        out.append(float(np.std([math.log(_best_value(values, draw)[0]) for draw in losses])))
    return np.array(out)


@one_blas_thread
def fit_hyperparameter_law(rows: list[dict], key: str = "lr", target_flops: float | None = None,
                           n_bootstrap: int = 200, seed: int = 0) -> dict:
    """DeepSeek LLM's law for the best `key` ("lr" or "batch_size"): value*(C) = coef * C^exponent.

    Per budget the best value comes from the sweep at the best model whose `key` was swept (see
    `_best_value`). Where the rows measured their noise (noise.py) the bootstrap is parametric: each
    budget's log optimum is the law plus Normal noise of the larger of its own SD under the measured loss
    noise (`_optimum_sd`) and the law's residual scatter (dof: budgets - 2). Otherwise it resamples budgets
    (the regression's cases); a resample with fewer than 2 distinct budgets cannot fit a line and counts as
    failed. Not identified (identify.py) when a budget's optimum is at the edge of its sweep, or by the
    general rules (key quantities: the exponent and the value at the target).
    Returns {"budgets": [{budget, C, N, value, method, swept}], "law": {coef, exponent: Estimate},
    "at_target": Estimate, "curve": band, "bootstrap": "parametric" | "cases", "n_bootstrap" (drawn),
    "n_failed", "identified", "reason"}. Raises FitError when fewer than 3 budgets swept `key`.
    """
    optima, sweeps = _per_budget_optima(rows, key)
    if not optima:
        raise FitError(f"{key} was not swept (no model was trained with >= 2 values of it), so it has no law")
    if len(optima) < 3:
        raise FitError(f"need >= 3 budgets that swept >= 2 values of {key} for its law, got {len(optima)}")
    logc = np.log([o["C"] for o in optima])
    logv = np.log([o["value"] for o in optima])
    coef, exponent = fit_power_law(logc, logv)
    noise = measure_noise(rows)
    measured = [loss_sd(best, noise) for _, best in sweeps]
    samples = []
    if measured[0] is None:
        scheme = "cases"
        for pick in np.random.default_rng(seed).integers(0, len(optima), size=(n_bootstrap, len(optima))):
            if np.unique(logc[pick]).size >= 2:  # a line needs two distinct budgets
                samples.append(fit_power_law(logc[pick], logv[pick]))
    else:
        scheme = "parametric"
        fitted = math.log(coef) + exponent * logc
        for draw in parametric_resamples(fitted, _optimum_sd(sweeps, measured, seed),
                                         residual_scale(logv - fitted, 2), n_bootstrap, seed):
            samples.append(fit_power_law(logc, draw))
    samples = np.array(samples).reshape(-1, 2)
    n_failed = n_bootstrap - len(samples)
    grid = curve_grid(np.exp(logc), target_flops)
    out = {"budgets": optima, "law": law_estimates(coef, exponent, samples[:, 0], samples[:, 1], n_failed),
           "curve": band(grid, coef * grid**exponent, [s[0] * grid ** s[1] for s in samples], n_failed),
           "bootstrap": scheme, "n_bootstrap": n_bootstrap, "n_failed": n_failed}
    key_estimates = {"the exponent": out["law"]["exponent"]}
    if target_flops:
        out["at_target"] = Estimate.from_samples(coef * target_flops**exponent,
                                                 samples[:, 0] * target_flops ** samples[:, 1], n_failed)
        key_estimates["the value at the target"] = out["at_target"]
    edge = edge_budgets(optima)
    hits = []
    if edge:
        hits.append(f"the best {key} at the edge of its sweep at budget(s) {', '.join(f'{b:.3g}' for b in edge)}")
    out.update(identification(n_bootstrap, n_failed, hits, key_estimates))
    return out
