"""The loss frontier: each budget's best loss against its realised compute, L(C) = E + (C0/C)^gamma."""

import math

import numpy as np
from scipy import optimize

from gptjax.scaling.fit.bootstrap import Estimate, band, curve_grid, one_blas_thread, residual_resamples
from gptjax.scaling.fit.rows import FitError, model_arrays


def frontier_points(budget, loss):
    """Indices of the frontier: per budget its best model, kept only if it beats every smaller budget.

    The Pareto filter drops a budget whose best loss is no better than a cheaper one (a sweep that missed
    its optimum there); it also makes a CSV with one row per budget usable, as its lower envelope.
    Returns (indices, number of budgets dropped).
    """
    best = [np.flatnonzero(budget == b)[np.argmin(loss[budget == b])] for b in np.unique(budget)]
    kept, record = [], np.inf
    for i in best:  # budgets ascending
        if loss[i] < record:
            kept.append(i)
            record = loss[i]
    return np.array(kept, int), len(best) - len(kept)


def fit_frontier_points(c, loss, start=None):
    """(E, C0, gamma) minimising the squared log-loss residuals, E in [0, min loss).

    Parametrised as L = E + exp(s - gamma u), u = log C - mean log C, which keeps exp() in range. Bounded
    least squares runs from `start` (an (E, C0, gamma)) or else from a few guesses of E, each with gamma
    and s from a straight-line fit of log(L - E) against u.
    """
    logc, logl = np.log(c), np.log(loss)
    ref = logc.mean()
    u = logc - ref
    e_max = loss.min() * (1 - 1e-9)

    def residuals(p):
        e, gamma, s = p
        return np.log(e + np.exp(s - gamma * u)) - logl

    if start is None:
        starts = []
        for frac in (0.0, 0.5, 0.9, 0.99):
            e = frac * loss.min()
            slope, intercept = np.polyfit(u, np.log(loss - e), 1)
            starts.append((e, -slope, intercept))
    else:
        e, c0, gamma = start
        starts = [(e, gamma, gamma * (math.log(c0) - ref))]
    lower, upper = [0.0, 1e-4, -60.0], [e_max, 5.0, 60.0]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lower, [e_max * (1 - 1e-9), 5.0, 60.0])  # strictly inside, as least_squares needs
        result = optimize.least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    e, gamma, s = best.x
    return e, math.exp(ref + s / gamma), gamma


@one_blas_thread
def fit_frontier(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                 seed: int = 0) -> dict:
    """The loss frontier L(C) = E + (C0/C)^gamma through each budget's best loss (at its realised C).

    Returns {"points": [{budget, C, loss, trial}], "params": {E, C0, gamma: Estimate}, "at_target":
    {"loss": Estimate} (with target_flops), "curve": band from the smallest budget to the target,
    "n_bootstrap": resamples that fitted, "dropped": budgets not on the Pareto frontier}; the intervals
    come from a residual bootstrap (`residual_resamples`; none with exactly 3 points, which the curve fits
    exactly). Raises FitError with fewer than 3 frontier points.
    """
    m = model_arrays(rows)
    idx, dropped = frontier_points(m["budget"], m["loss"])
    if idx.size < 3:
        raise FitError(f"need >= 3 budgets on the loss frontier to fit E, C0 and gamma, got {idx.size}")
    front_c, front_loss = m["C"][idx], m["loss"][idx]
    e, c0, gamma = fit_frontier_points(front_c, front_loss)
    grid = curve_grid(m["C"], target_flops)

    def curve(p, c):
        return p[0] + (p[1] / c) ** p[2]

    # Warm start from the point estimate: a resampled frontier is a perturbation of the observed one.
    resamples = residual_resamples(curve((e, c0, gamma), front_c), front_loss, n_bootstrap, seed)
    samples = np.array([fit_frontier_points(front_c, loss, (e, c0, gamma)) for loss in resamples]).reshape(-1, 3)

    out = {
        "points": [{"budget": float(m["budget"][i]), "C": float(m["C"][i]), "loss": float(m["loss"][i]),
                    "trial": m["rows"][i].get("trial")} for i in idx],
        "params": {name: Estimate.from_samples(v, samples[:, k])
                   for k, (name, v) in enumerate((("E", e), ("C0", c0), ("gamma", gamma)))},
        "curve": band(grid, curve((e, c0, gamma), grid), [curve(p, grid) for p in samples]),
        "n_bootstrap": len(samples),
        "dropped": int(dropped),
    }
    if target_flops:
        out["at_target"] = {"loss": Estimate.from_samples(curve((e, c0, gamma), target_flops),
                                                          [curve(p, target_flops) for p in samples])}
    return out
