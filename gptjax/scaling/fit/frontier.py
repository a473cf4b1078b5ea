"""The loss frontier: each budget's best loss against its realised compute, L(C) = E + (C0/C)^gamma.

An offset E is kept only when it improves the fit significantly (an F-test of the nested models): otherwise,
as when the free fit puts E at its lower bound 0, the data cannot tell an offset from none, and the frontier
is the nested pure power law L(C) = (C0/C)^gamma (Kaplan et al. 2020's form), whose two parameters the
points can pin down; "form" says which. Far beyond the swept budgets a pure power law is optimistic (it
never levels off); the sweep's validation run checks it at 3-10x.
"""

import math

import numpy as np
from scipy import optimize, stats

from gptjax.scaling.fit.bootstrap import (Draws, Estimate, band, curve_grid, one_blas_thread, parametric_resamples,
                                          residual_resamples, residual_scale)
from gptjax.scaling.fit.identify import bound_hits, identification
from gptjax.scaling.fit.noise import loss_sd, measure_noise
from gptjax.scaling.fit.rows import FitError, model_arrays

GAMMA_BOUNDS = (1e-4, 5.0)


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


FREE_E, ZERO_E = "E + (C0/C)^gamma", "(C0/C)^gamma, E fixed at 0"


def fit_frontier_points(c, loss, start=None, form=FREE_E):
    """(E, C0, gamma) minimising the squared log-loss residuals, E in [0, min loss) (or E = 0 with
    form=ZERO_E: a straight line in log L against log C).

    Parametrised as L = E + exp(s - gamma u), u = log C - mean log C, which keeps exp() in range. Bounded
    least squares runs from `start` (an (E, C0, gamma)) or else from a few guesses of E, each with gamma
    and s from a straight-line fit of log(L - E) against u.
    """
    logc, logl = np.log(c), np.log(loss)
    ref = logc.mean()
    u = logc - ref
    if form == ZERO_E:
        slope, s = np.polyfit(u, logl, 1)
        return 0.0, math.exp(ref + s / -slope), float(-slope)
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
    lower, upper = [0.0, GAMMA_BOUNDS[0], -60.0], [e_max, GAMMA_BOUNDS[1], 60.0]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lower, [e_max * (1 - 1e-9), GAMMA_BOUNDS[1], 60.0])  # strictly inside, as least_squares needs
        result = optimize.least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    e, gamma, s = best.x
    return e, math.exp(ref + s / gamma), gamma


def frontier_bound_hits(e, gamma, min_loss, e_interval=None, gamma_interval=None, form=FREE_E) -> list[str]:
    """`bound_hits` for the frontier's box: E in [0, the lowest frontier loss] (unless fixed), gamma in
    GAMMA_BOUNDS."""
    gamma_check = ("gamma", gamma, gamma_interval, GAMMA_BOUNDS)
    if form == ZERO_E:
        return bound_hits([gamma_check])
    return bound_hits([("E", e, e_interval, (0.0, min_loss)), gamma_check])


def fit_frontier_form(c, loss):
    """(point (E, C0, gamma), form): the free fit, or the pure power law unless the offset E improves the
    fit significantly (an F-test of the nested models on the log-loss residuals, 5% level). A free E at
    its lower bound improves nothing, so it always gives the pure power law."""
    free, zero = fit_frontier_points(c, loss), fit_frontier_points(c, loss, form=ZERO_E)

    def sse(p):
        return float(np.sum((np.log(frontier_curve(p, c)) - np.log(loss)) ** 2))

    sse_free, sse_zero = sse(free), sse(zero)
    gain, dof = sse_zero - sse_free, len(c) - 3  # dof: the free fit's residual degrees of freedom
    no_gain = gain <= 1e-9 * max(sse_zero, 1e-12)  # E at 0: the two fits coincide (3 points included)
    if no_gain or (dof > 0 and gain * dof <= stats.f.ppf(0.95, 1, dof) * sse_free):
        return zero, ZERO_E
    return free, FREE_E


def frontier_curve(p, c):
    """L(C) = E + (C0/C)^gamma for p = (E, C0, gamma)."""
    return p[0] + (p[1] / c) ** p[2]


@one_blas_thread
def fit_frontier(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                 seed: int = 0) -> dict:
    """The loss frontier L(C) = E + (C0/C)^gamma through each budget's best loss (at its realised C).

    Returns {"form": FREE_E or ZERO_E (module docstring), "points": [{budget, C, loss, trial}], "params":
    {E, C0, gamma: Estimate}, "at_target":
    {"loss": Estimate} (with target_flops), "curve": band from the smallest budget to the target,
    "bootstrap": "parametric" | "residuals", "n_bootstrap": resamples drawn, "n_failed": of those, the ones
    that could not be fitted, "dropped": budgets not on the Pareto frontier, "identified", "reason"
    (identify.py; E, gamma and the loss at the target are the key quantities), "draws": the resamples'
    (E, C0, gamma) as a Draws, which fits.json leaves out}.

    The bootstrap is parametric where the rows measured their noise (noise.py): log L* = log L_hat + eps
    with each point's measured noise or the residual scatter, whichever is larger
    (`parametric_resamples`); otherwise it resamples the fit's residuals (`residual_resamples`; none with
    exactly 3 points, which the curve fits exactly). Raises FitError with fewer than 3 frontier points.
    """
    m = model_arrays(rows)
    idx, dropped = frontier_points(m["budget"], m["loss"])
    if idx.size < 3:
        raise FitError(f"need >= 3 budgets on the loss frontier to fit E, C0 and gamma, got {idx.size}")
    front_c, front_loss = m["C"][idx], m["loss"][idx]
    point, form = fit_frontier_form(front_c, front_loss)
    grid = curve_grid(m["C"], target_flops)

    fitted = frontier_curve(point, front_c)
    measured = loss_sd([m["rows"][i] for i in idx], measure_noise(rows))
    if measured is None:
        scheme, resamples = "residuals", residual_resamples(fitted, front_loss, n_bootstrap, seed)
    else:  # the fit is least squares in log L, so the noise is drawn there: sd(log L) = sd(L) / L
        scheme = "parametric"
        resamples = np.exp(parametric_resamples(np.log(fitted), measured / front_loss,
                                                residual_scale(np.log(front_loss / fitted), 3), n_bootstrap, seed))
    samples = []
    for loss in resamples:
        # Warm start from the point estimate: a resampled frontier is a perturbation of the observed one.
        try:
            sample = fit_frontier_points(front_c, loss, point, form)
        except (ValueError, FloatingPointError):  # least_squares on a degenerate resample
            continue
        if np.isfinite(sample).all():
            samples.append(sample)
    samples = np.array(samples, float).reshape(-1, 3)
    n_failed = len(resamples) - len(samples)

    params = {name: Estimate.from_samples(v, samples[:, k], n_failed)
              for k, (name, v) in enumerate(zip(("E", "C0", "gamma"), point))}
    out = {
        "form": form,
        "points": [{"budget": float(m["budget"][i]), "C": float(m["C"][i]), "loss": float(m["loss"][i]),
                    "trial": m["rows"][i].get("trial")} for i in idx],
        "params": params,
        "curve": band(grid, frontier_curve(point, grid), [frontier_curve(p, grid) for p in samples], n_failed),
        "bootstrap": scheme,
        "n_bootstrap": len(resamples),
        "n_failed": n_failed,
        "dropped": int(dropped),
    }
    key = {"gamma": params["gamma"]} if form == ZERO_E else {"E": params["E"], "gamma": params["gamma"]}
    if target_flops:
        out["at_target"] = {"loss": Estimate.from_samples(frontier_curve(point, target_flops),
                                                          [frontier_curve(p, target_flops) for p in samples], n_failed)}
        key["the loss at the target"] = out["at_target"]["loss"]
    hits = frontier_bound_hits(point[0], point[2], front_loss.min(), (params["E"].low, params["E"].high),
                               (params["gamma"].low, params["gamma"].high), form)
    out.update(identification(len(resamples), n_failed, hits, key))
    if form == ZERO_E:
        out["reason"] += (" A free offset E did not improve the fit significantly, so E is fixed at 0 (a pure power "
                          "law).")
    out["draws"] = Draws(samples, n_failed)
    return out
