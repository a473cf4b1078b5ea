"""DeepSeek LLM's hyperparameter laws (Sec. 3.1): the best learning rate and batch size per budget, as
power laws of compute."""

import math

import numpy as np

from gptjax.scaling.fit.bootstrap import Estimate, band, curve_grid, law_estimates, one_blas_thread
from gptjax.scaling.fit.isoflop import fit_power_law
from gptjax.scaling.fit.rows import FitError, seed_means


def _best_setting(rows, key):
    """(value, method) minimising loss over `key` in rows of one model, the others minimised out.

    With >= 3 swept values: the vertex of a parabola of loss in log value, clipped to the swept range
    ("parabola" / "clipped"), or the best swept value if the parabola opens downwards ("argmin");
    with 2 values: the better one ("argmin").
    """
    values = sorted({r[key] for r in rows})
    best = np.array([min(r["eval_loss"] for r in rows if r[key] == v) for v in values])
    x = np.log(values)
    if len(values) >= 3:
        c2, c1, _ = np.polyfit(x - x.mean(), best, 2)
        if c2 > 0:
            vertex = x.mean() - c1 / (2 * c2)
            clipped = min(max(vertex, x[0]), x[-1])
            return math.exp(clipped), "parabola" if clipped == vertex else "clipped"
    return float(values[int(np.argmin(best))]), "argmin"


def _per_budget_optima(rows, key):
    """Per budget, the best `key` at the best model whose `key` was swept (>= 2 values)."""
    by_model = {}
    for r in seed_means(rows):  # a setting's loss is its mean over seeds, as in best_per_model
        if r.get(key) is not None:
            by_model.setdefault((r["budget"], r["N"]), []).append(r)
    swept = {k: v for k, v in by_model.items() if len({r[key] for r in v}) >= 2}
    out = []
    for b in sorted({k[0] for k in swept}):
        model = min((k for k in swept if k[0] == b), key=lambda k: min(r["eval_loss"] for r in swept[k]))
        value, method = _best_setting(swept[model], key)
        out.append(dict(budget=float(b), C=math.exp(np.mean([math.log(r["C"]) for r in swept[model]])),
                        N=float(model[1]), value=value, method=method,
                        swept=[float(v) for v in sorted({r[key] for r in swept[model]})]))
    return out


@one_blas_thread
def fit_hyperparameter_law(rows: list[dict], key: str = "lr", target_flops: float | None = None,
                           n_bootstrap: int = 200, seed: int = 0) -> dict:
    """DeepSeek LLM's law for the best `key` ("lr" or "batch_size"): value*(C) = coef * C^exponent.

    Per budget the best value comes from the sweep at the best model whose `key` was swept (see
    `_best_setting`). The bootstrap resamples budgets (the regression's cases): each per-budget optimum
    is one noisy measurement, and the scatter of those optima about the line is the law's uncertainty.
    Returns {"budgets": [{budget, C, N, value, method, swept}], "law": {coef, exponent: Estimate},
    "at_target": Estimate, "curve": band, "n_bootstrap"}. Raises FitError when fewer than 3 budgets
    swept `key`.
    """
    optima = _per_budget_optima(rows, key)
    if not optima:
        raise FitError(f"{key} was not swept (no model was trained with >= 2 values of it), so it has no law")
    if len(optima) < 3:
        raise FitError(f"need >= 3 budgets that swept >= 2 values of {key} for its law, got {len(optima)}")
    logc = np.log([o["C"] for o in optima])
    logv = np.log([o["value"] for o in optima])
    coef, exponent = fit_power_law(logc, logv)
    rng = np.random.default_rng(seed)
    samples = []
    for pick in rng.integers(0, len(optima), size=(n_bootstrap, len(optima))):
        if np.unique(logc[pick]).size >= 2:  # a line needs two distinct budgets
            samples.append(fit_power_law(logc[pick], logv[pick]))
    samples = np.array(samples).reshape(-1, 2)
    grid = curve_grid(np.exp(logc), target_flops)
    out = {"budgets": optima, "law": law_estimates(coef, exponent, samples[:, 0], samples[:, 1]),
           "curve": band(grid, coef * grid**exponent, [s[0] * grid ** s[1] for s in samples]),
           "n_bootstrap": len(samples)}
    if target_flops:
        out["at_target"] = Estimate.from_samples(coef * target_flops**exponent,
                                                 samples[:, 0] * target_flops ** samples[:, 1])
    return out
