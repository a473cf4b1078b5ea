"""A loss prediction with its 95% interval for any (N, D) or compute C, from the identified fits: what a
validation run at the recommendation is checked against."""

import numpy as np

from gptjax.scaling.fit.bootstrap import Estimate
from gptjax.scaling.fit.frontier import frontier_curve
from gptjax.scaling.fit.parametric import SURFACE_PARAMS, param_values, predict_loss
from gptjax.scaling.fit.rows import FitError


def _draws(fits, name):
    """The section's bootstrap Draws: its own "draws" (a fit function's in-memory dict) or `fits.draws`
    (fit_all's `Fits`)."""
    draws = fits[name].get("draws") or (getattr(fits, "draws", None) or {}).get(name)
    if draws is None:
        raise FitError(f"{name} has no bootstrap draws here: they are kept in memory, not in fits.json; pass the "
                       "dict fit_all returned in this process (or the fit function's own dict)")
    return draws


def predict_with_interval(fits: dict, N=None, D=None, C=None) -> dict:
    """The predicted loss with its 95% bootstrap interval, {"value", "low", "high", "source"}.

    From Approach 3 at (N, D) when it is identified and N and D are given: L_hat(N, D) and the same
    prediction by each bootstrap resample's surface. Else from the frontier at C (default 6 N D) when it is
    identified. Failed resamples are counted as in every interval (bootstrap.py). `fits` is `fit_all`'s
    result from this process, or {"approach3": fit_approach3(...), "frontier": fit_frontier(...)}: the
    resamples' parameters are held in memory (`Fits.draws`, or each fit's "draws"), not in fits.json.
    Raises FitError when neither fit is identified or the arguments do not say where to predict.
    """
    approach3, frontier = fits.get("approach3"), fits.get("frontier")
    if approach3 and approach3["identified"] and N is not None and D is not None:
        draws = _draws(fits, "approach3")
        value = float(predict_loss(approach3, N, D))
        samples = [predict_loss(dict(zip(SURFACE_PARAMS, p)), N, D) for p in draws.params]
        return {**Estimate.from_samples(value, samples, draws.n_failed).to_json(), "source": "approach3"}
    if C is None and N is not None and D is not None:
        C = 6.0 * float(N) * float(D)
    if C is None:
        raise FitError("predict_with_interval needs N and D (for Approach 3) or C (for the frontier)")
    if frontier and frontier["identified"]:
        draws = _draws(fits, "frontier")
        p = param_values(frontier["params"])
        value = float(frontier_curve((p["E"], p["C0"], p["gamma"]), C))
        samples = [frontier_curve(q, C) for q in np.asarray(draws.params).reshape(-1, 3)]
        return {**Estimate.from_samples(value, samples, draws.n_failed).to_json(), "source": "frontier"}
    why = "; ".join(f"{name}: {'could not be fitted' if s is None else s['reason']}"
                    for name, s in (("approach3", approach3), ("frontier", frontier)))
    raise FitError(f"no identified fit predicts the loss here ({why}); add budgets or seeds and refit")
