"""The fits together: the backtest (the frontier and Approach 3 against a held-out budget) and `fit_all`,
which runs every fit, writes its notes, picks the recommendation, and returns fits.json's dict."""

import numpy as np

from gptjax.scaling.fit.bootstrap import one_blas_thread, to_json
from gptjax.scaling.fit.frontier import fit_frontier, fit_frontier_points, frontier_points
from gptjax.scaling.fit.hyper import fit_hyperparameter_law
from gptjax.scaling.fit.isoflop import fit_approach2
from gptjax.scaling.fit.parametric import HUBER_DELTA, fit_approach3, predict_loss
from gptjax.scaling.fit.rows import FitError, best_per_model, model_arrays, usable_rows


@one_blas_thread
def backtest(rows: list[dict], n_starts: int | None = 100) -> dict:
    """Refit without the largest budget and predict that budget's best loss.

    The frontier predicts L(C) at the held-out best model's realised C; Approach 3 predicts the lowest
    L_hat(N, D) over the held-out budget's models (the best loss that design is expected to reach).
    Returns {"held_out_budget", "observed", "trial", "frontier": {predicted, error, rel_error} or
    {"skipped": why}, "approach3": likewise}; error = predicted - observed. Raises FitError with fewer
    than 2 budgets.
    """
    m = model_arrays(rows)
    budgets = np.unique(m["budget"])
    if budgets.size < 2:
        raise FitError(f"need >= 2 budgets to hold one out for the backtest, got {budgets.size}")
    held = budgets[-1]
    train_rows = [r for r in usable_rows(rows) if r["budget"] != held]
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
        e, c0, gamma = fit_frontier_points(t["C"][idx], t["loss"][idx])
        out["frontier"] = entry(e + (c0 / m["C"][best]) ** gamma)
    except FitError as err:
        out["frontier"] = {"skipped": str(err)}
    try:
        fit = fit_approach3(train_rows, n_bootstrap=0, n_starts=n_starts)
        out["approach3"] = entry(np.min(predict_loss(fit, m["N"][sel], m["D"][sel])))
    except FitError as err:
        out["approach3"] = {"skipped": str(err)}
    return out


@one_blas_thread
def fit_all(rows: list[dict], target_flops: float, n_bootstrap: int = 200, seed: int = 0,
            n_starts: int | None = 100) -> dict:
    """Every fit on a sweep's rows, as one JSON-serialisable dict: the dict fits.json stores.

    Each fit's Estimates appear here as {"value", "low", "high"} (`Estimate.to_json`: 95% percentile
    bootstrap interval, `n_bootstrap` resamples seeded by `seed`); a band is {"C": [...], "value": [...],
    "low": [...], "high": [...]}. Keys:
      n_rows           {"total", "fitted" (status ok, finite loss), "excluded", "models", "budgets"}
      target_flops     the compute the predictions are for
      settings         {"n_bootstrap", "seed", "n_starts", "huber_delta"}
      frontier         fit_frontier's dict (E, C0, gamma, the loss at target_flops) or None
      approach2        fit_approach2's dict (IsoFLOP vertices per budget, N*(C) and D*(C) laws) or None
      approach3        fit_approach3's dict (E, A, B, alpha, beta, the optimum at target_flops) or None
      backtest         backtest's dict or None
      hyperparameters  {"lr": fit_hyperparameter_law(key="lr") or None, "batch_size": ... or None}
      recommendation   at target_flops: N, D, tokens_per_param, loss, lr, batch_size, each an estimate
                       plus "source" (the fit it came from), or None where no fit gives it
      notes            one sentence per fit that could not be made or needs attention
    A fit that cannot be made is None with its reason in notes; nothing here raises for too little data.
    """
    if not (isinstance(target_flops, (int, float)) and target_flops > 0):
        raise FitError(f"target_flops={target_flops!r}: must be a positive number of training FLOPs, e.g. 1e21")
    fitted = usable_rows(rows)
    notes = []
    models = best_per_model(fitted)
    n_rows = {"total": len(rows), "fitted": len(fitted), "excluded": len(rows) - len(fitted),
              "models": len(models), "budgets": len({m["budget"] for m in models})}
    if n_rows["excluded"]:
        notes.append(f"{n_rows['excluded']} of {len(rows)} rows excluded (status not ok or non-finite eval_loss).")

    def attempt(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FitError as err:
            notes.append(f"{name}: {err}.")
            return None

    boot = dict(n_bootstrap=n_bootstrap, seed=seed)
    frontier = attempt("frontier", fit_frontier, fitted, target_flops, **boot)
    approach2 = attempt("approach2", fit_approach2, fitted, target_flops, **boot)
    approach3 = attempt("approach3", fit_approach3, fitted, target_flops, n_starts=n_starts, **boot)
    back = attempt("backtest", backtest, fitted, n_starts=n_starts)
    hyper = {key: attempt(f"hyperparameters[{key}]", fit_hyperparameter_law, fitted, key, target_flops, **boot)
             for key in ("lr", "batch_size")}

    if frontier and frontier["dropped"]:
        notes.append(f"frontier: {frontier['dropped']} budget(s) left out: their best loss was no better than a "
                     "smaller budget's.")
    if approach2:
        flagged = [f"{v['budget']:.3g} ({v['status']})" for v in approach2["budgets"] if v["status"] != "ok"]
        if flagged:
            notes.append(f"approach2: vertices left out of the laws: {', '.join(flagged)}; re-centre those "
                         "profiles on the optimum.")
    if approach3 and approach3["at_bound"]:
        notes.append(f"approach3: {', '.join(approach3['at_bound'])} at the bound of the search box: these rows do "
                     "not identify the surface, so the recommendation does not use its optimum.")
    for key, law in hyper.items():
        edge = [f"{o['budget']:.3g}" for o in (law["budgets"] if law else ())
                if not o["swept"][0] * (1 + 1e-9) < o["value"] < o["swept"][-1] * (1 - 1e-9)]
        if edge:
            notes.append(f"hyperparameters[{key}]: the best {key} is at the edge of the swept values at budget(s) "
                         f"{', '.join(edge)}; widen the sweep there.")
    if frontier and len(frontier["points"]) == 3:
        notes.append("frontier: its 3 points fix E, C0 and gamma exactly, leaving no residuals to bootstrap, so it "
                     "has no interval; a 4th budget gives one.")
    elif frontier and frontier["n_bootstrap"] < 0.9 * n_bootstrap:
        notes.append(f"frontier: only {frontier['n_bootstrap']} of {n_bootstrap} bootstrap resamples could be fitted.")
    for name, section in (("approach2", approach2), ("approach3", approach3)):
        if section and section["n_bootstrap"] < 0.9 * n_bootstrap:
            notes.append(f"{name}: only {section['n_bootstrap']} of {n_bootstrap} bootstrap resamples could be fitted.")

    return to_json({
        "n_rows": n_rows,
        "target_flops": float(target_flops),
        "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "n_starts": n_starts, "huber_delta": HUBER_DELTA},
        "frontier": frontier,
        "approach2": approach2,
        "approach3": approach3,
        "backtest": back,
        "hyperparameters": hyper,
        "recommendation": _recommend(target_flops, frontier, approach2, approach3, hyper, notes),
        "notes": notes,
    })


def _recommend(target_flops, frontier, approach2, approach3, hyper, notes):
    """The numbers to train at target_flops, each from the most complete fit that gives it: an Estimate's
    JSON dict plus "source", or None.

    Approach 3 comes first: it models the whole surface, so its N*, D* and loss are one consistent
    optimum; Approach 2 (N*, D*) and the frontier (loss) stand in when it could not be fitted.
    """
    def pick(*candidates):
        for source, section, key in candidates:
            estimate = (section or {}).get("at_target", {}).get(key)
            if estimate is not None and estimate.value is not None:
                return {**estimate.to_json(), "source": source}
        return None

    if approach3 and approach3["at_bound"]:
        approach3 = None  # not identified (see its note): its optimum would be an artefact of the search box

    rec = {"target_flops": float(target_flops)}
    for key in ("N", "D", "tokens_per_param"):
        rec[key] = pick(("approach3", approach3, key), ("approach2", approach2, key))
    rec["loss"] = pick(("approach3", approach3, "loss"), ("frontier", frontier, "loss"))
    for key in ("lr", "batch_size"):
        law = hyper[key]
        rec[key] = {**law["at_target"].to_json(), "source": f"hyperparameters[{key}]"} if law else None
    missing = [k for k, v in rec.items() if v is None]
    if missing:
        notes.append(f"recommendation: no fit gives {', '.join(missing)}.")
    return rec
