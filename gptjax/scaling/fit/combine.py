"""The fits together: the backtest (the frontier and Approach 3 against a held-out budget) and `fit_all`,
which measures the noise, runs every fit, writes its notes, picks the recommendation from the identified
fits, and returns fits.json's dict."""

import numpy as np

from gptjax.scaling.fit.bootstrap import one_blas_thread, to_json
from gptjax.scaling.fit.frontier import (ZERO_E, fit_frontier, fit_frontier_form, frontier_bound_hits,
                                         frontier_points)
from gptjax.scaling.fit.hyper import edge_budgets, fit_hyperparameter_law
from gptjax.scaling.fit.isoflop import fit_approach2
from gptjax.scaling.fit.noise import measure_noise
from gptjax.scaling.fit.parametric import HUBER_DELTA, fit_approach3, predict_loss
from gptjax.scaling.fit.rows import FitError, best_per_model, model_arrays, usable_rows


class Fits(dict):
    """`fit_all`'s result: fits.json's dict (JSON-serialisable as it is), and in memory only `draws`,
    {"frontier", "approach3": Draws or None}, the bootstrap parameter sets that `predict_with_interval`
    needs. fits.json read back is a plain dict without them."""

    draws: dict


def _bound_verdict(hits) -> dict:
    """{"identified", "reason"} of a backtest refit, which draws no resamples: off the box's bounds or not."""
    if hits:
        return {"identified": False, "reason": "Not identified: " + "; ".join(hits) + "."}
    return {"identified": True, "reason": "Identified: off the bounds of its search box (no resamples drawn)."}


@one_blas_thread
def backtest(rows: list[dict], n_starts: int | None = 100) -> dict:
    """Refit without the largest budget and predict that budget's best loss.

    The frontier predicts L(C) at the held-out best model's realised C; Approach 3 predicts the lowest
    L_hat(N, D) over the held-out budget's models (the best loss that design is expected to reach).
    Returns {"held_out_budget", "observed", "trial", "frontier": {predicted, error, rel_error, identified,
    reason} or {"skipped": why}, "approach3": likewise}; error = predicted - observed; identified says
    whether the refit's parameters are off the bounds of its search box (it draws no resamples). Raises
    FitError with fewer than 2 budgets.
    """
    m = model_arrays(rows)
    budgets = np.unique(m["budget"])
    if budgets.size < 2:
        raise FitError(f"need >= 2 budgets to hold one out for the backtest, got {budgets.size}")
    held = budgets[-1]
    train_rows = [r for r in rows if r.get("budget") != held]  # all rows: seed_means drops unstable settings
    sel = m["budget"] == held
    best = np.argmin(np.where(sel, m["loss"], np.inf))
    observed = float(m["loss"][best])

    def entry(predicted):
        return {"predicted": float(predicted), "error": float(predicted - observed),
                "rel_error": float((predicted - observed) / observed)}

    out = {"held_out_budget": float(held), "observed": observed, "trial": m["rows"][best].get("trial")}
    try:
        t = model_arrays(train_rows)
        idx, _ = frontier_points(t["budget"], t["loss"])
        if idx.size < 3:
            raise FitError(f"need >= 3 frontier budgets below the held-out one, got {idx.size}")
        (e, c0, gamma), form = fit_frontier_form(t["C"][idx], t["loss"][idx])
        out["frontier"] = {**entry(e + (c0 / m["C"][best]) ** gamma), "form": form,
                           **_bound_verdict(frontier_bound_hits(e, gamma, t["loss"][idx].min(), form=form))}
    except FitError as err:
        out["frontier"] = {"skipped": str(err)}
    try:
        fit = fit_approach3(train_rows, n_bootstrap=0, n_starts=n_starts)
        out["approach3"] = {**entry(np.min(predict_loss(fit, m["N"][sel], m["D"][sel]))),
                            **_bound_verdict([f"{name} at a bound of its search box" for name in fit["at_bound"]])}
    except FitError as err:
        out["approach3"] = {"skipped": str(err)}
    return out


@one_blas_thread
def fit_all(rows: list[dict], target_flops: float, n_bootstrap: int = 200, seed: int = 0,
            n_starts: int | None = 100) -> Fits:
    """Every fit on a sweep's rows, as one JSON-serialisable dict (a `Fits`): the dict fits.json stores.

    Each fit's Estimates appear here as {"value", "low", "high"} (`Estimate.to_json`: 95% percentile
    bootstrap interval, `n_bootstrap` resamples seeded by `seed`, failed resamples counted; an unbounded
    end is null); a band is {"C": [...], "value": [...], "low": [...], "high": [...]}. Every fit carries
    "identified" and "reason" (identify.py), and the bootstrapped ones "bootstrap" ("parametric" from the
    measured noise, else "cases" or "residuals"), "n_bootstrap" (attempted) and "n_failed". Keys:
      n_rows           {"total", "fitted" (status ok, finite loss), "excluded", "models", "budgets"}
      target_flops     the compute the predictions are for
      settings         {"n_bootstrap", "seed", "n_starts", "huber_delta"}
      noise            measure_noise's dict: {"seed_sd", "seed_dof", "n_seeded_settings", "eval_se"}
      frontier         fit_frontier's dict (E, C0, gamma, the loss at target_flops) or None
      approach2        fit_approach2's dict (IsoFLOP vertices per budget, N*(C) and D*(C) laws) or None
      approach3        fit_approach3's dict (E, A, B, alpha, beta, the optimum at target_flops) or None
      backtest         backtest's dict or None
      hyperparameters  {"lr": fit_hyperparameter_law(key="lr") or None, "batch_size": ... or None}
      recommendation   at target_flops, from identified fits only: N, D, tokens_per_param, loss, lr,
                       batch_size, each an estimate plus "source" (the fit it came from), or None where no
                       identified fit gives it (a note says why)
      notes            one sentence per fit that could not be made, is not identified or needs attention
    A fit that cannot be made is None with its reason in notes; nothing here raises for too little data.
    """
    if not (isinstance(target_flops, (int, float)) and target_flops > 0):
        raise FitError(f"target_flops={target_flops!r}: must be a positive number of training FLOPs, e.g. 1e21")
    fitted = usable_rows(rows)
    notes = []
    models = best_per_model(rows)
    n_rows = {"total": len(rows), "fitted": len(fitted), "excluded": len(rows) - len(fitted),
              "models": len(models), "budgets": len({m["budget"] for m in models})}
    if n_rows["excluded"]:
        notes.append(f"{n_rows['excluded']} of {len(rows)} rows excluded (status not ok or non-finite eval_loss).")
    # From all rows, not only the usable ones: a setting with a diverged seed is left out of the noise as
    # it is left out of the fits.
    noise = measure_noise(rows)
    if noise["seed_sd"] is None and noise["eval_se"] is None:
        notes.append("noise: no setting was run with >= 2 seeds and no row records eval_loss_se, so the intervals "
                     "resample cases and residuals instead of drawing the measured noise; run some settings with "
                     "several seeds (sweep.seeds) to measure it.")

    def attempt(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FitError as err:
            notes.append(f"{name}: {err}.")
            return None

    boot = dict(n_bootstrap=n_bootstrap, seed=seed)
    frontier = attempt("frontier", fit_frontier, rows, target_flops, **boot)
    approach2 = attempt("approach2", fit_approach2, rows, target_flops, **boot)
    approach3 = attempt("approach3", fit_approach3, rows, target_flops, n_starts=n_starts, **boot)
    back = attempt("backtest", backtest, rows, n_starts=n_starts)
    hyper = {key: attempt(f"hyperparameters[{key}]", fit_hyperparameter_law, rows, key, target_flops, **boot)
             for key in ("lr", "batch_size")}

    if frontier and frontier["dropped"]:
        notes.append(f"frontier: {frontier['dropped']} budget(s) left out: their best loss was no better than a "
                     "smaller budget's.")
    if approach2:
        flagged = [f"{v['budget']:.3g} ({v['status']})" for v in approach2["budgets"] if v["status"] != "ok"]
        if flagged:
            notes.append(f"approach2: vertices left out of the laws: {', '.join(flagged)}; re-centre those "
                         "profiles on the optimum.")
    for key, law in hyper.items():
        edge = edge_budgets(law["budgets"]) if law else []
        if edge:
            notes.append(f"hyperparameters[{key}]: the best {key} is at the edge of the swept values at budget(s) "
                         f"{', '.join(f'{b:.3g}' for b in edge)}; widen the sweep there.")
    if frontier and frontier["bootstrap"] == "residuals" and len(frontier["points"]) == 3:
        notes.append("frontier: its 3 points fix E, C0 and gamma exactly, leaving no residuals to bootstrap, so it "
                     "has no interval; a 4th budget, or seeds that measure the noise, give one.")
    sections = {"frontier": frontier, "approach2": approach2, "approach3": approach3,
                **{f"hyperparameters[{key}]": law for key, law in hyper.items()}}
    for name, section in sections.items():
        if section and not section["identified"]:
            notes.append(f"{name}: {section['reason']} Neither quoted nor used by the recommendation.")

    fits = Fits(to_json({
        "n_rows": n_rows,
        "target_flops": float(target_flops),
        "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "n_starts": n_starts, "huber_delta": HUBER_DELTA},
        "noise": noise,
        "frontier": frontier,
        "approach2": approach2,
        "approach3": approach3,
        "backtest": back,
        "hyperparameters": hyper,
        "recommendation": _recommend(target_flops, sections, notes),
        "notes": notes,
    }))
    fits.draws = {name: section["draws"] if section else None
                  for name, section in (("frontier", frontier), ("approach3", approach3))}
    return fits


def known_truth(fits: dict, entropy_rate: float) -> dict:
    """The fitted irreducible losses against the exact entropy rate H of a synthetic source (nats/token): for
    Approach 3 and the frontier (when its E is free, not fixed at 0), E with its interval, E - H, whether H lies
    inside the interval, and whether the fit is identified. Each fit is reported on its own: identification
    checks bounds and intervals, not whether the law's form is right, and on the known-truth sweep an
    identified Approach 3 missed H by -0.14 nats with H outside its interval while the frontier found it."""
    entries = {}
    for name in ("approach3", "frontier"):
        section = fits.get(name)
        if not section or section.get("form") == ZERO_E:
            continue
        e = section["params"]["E"]
        inside = e["low"] is not None and e["high"] is not None and e["low"] <= entropy_rate <= e["high"]
        entries[name] = {"E": e, "error": e["value"] - entropy_rate, "truth_in_interval": inside,
                         "identified": section["identified"]}
    return {"entropy_rate": entropy_rate, "fits": entries}


# Per recommended quantity: the fits that may give it, in order, and the key of its at_target estimate.
_SOURCES = {"N": ("approach3", "approach2"), "D": ("approach3", "approach2"),
            "tokens_per_param": ("approach3", "approach2"), "loss": ("approach3", "frontier"),
            "lr": ("hyperparameters[lr]",), "batch_size": ("hyperparameters[batch_size]",)}


def _recommend(target_flops, sections, notes):
    """The numbers to train at target_flops, each from the first identified fit that gives it (`_SOURCES`):
    an Estimate's JSON dict plus "source", or None with a note naming the fits that could not give it.

    Approach 3 comes first: it models the whole surface, so its N*, D* and loss are one consistent
    optimum; Approach 2 (N*, D*) and the frontier (loss) stand in when it is not identified. A fit that is
    not identified (at a bound of its search box, too many failed resamples, an unbounded interval) gives
    nothing: its optimum would be an artefact of the box or of the resamples that happened to fit.
    """
    rec = {"target_flops": float(target_flops)}
    missing = {}
    for key, names in _SOURCES.items():
        rec[key] = None
        for name in names:
            section = sections[name]
            at = (section or {}).get("at_target")
            estimate = at.get(key) if isinstance(at, dict) else at
            if section and section["identified"] and estimate is not None and estimate.value is not None:
                rec[key] = {**estimate.to_json(), "source": name}
                break
        if rec[key] is None:
            missing.setdefault(names, []).append(key)
    for names, keys in missing.items():
        why = "; ".join(f"{name} {'could not be fitted' if sections[name] is None else 'is not identified'}"
                        for name in names)
        notes.append(f"recommendation: no identified fit gives {', '.join(keys)} ({why}).")
    return rec
