"""Chinchilla's Approach 2: per budget a parabola of loss in log N (an IsoFLOP profile) and N_opt at its
vertex; then N*(C) and D*(C) as power laws of compute."""

import math

import numpy as np

from gptjax.scaling.fit.bootstrap import (Estimate, band, curve_grid, law_estimates, one_blas_thread,
                                          stratified_resamples)
from gptjax.scaling.fit.rows import FitError, model_arrays


def fit_power_law(logc, logy):
    """(coef, exponent) of y = coef * C^exponent by least squares in log-log space."""
    exponent, intercept = np.polyfit(logc, logy, 1)
    return math.exp(intercept), exponent


def isoflop_vertices(budget, C, N, loss):
    """Per budget with >= 3 model sizes: a parabola of loss in log N and N_opt at its vertex.

    status "ok"; "clipped" (the vertex lies outside the sampled sizes, so N_opt is the nearest edge and
    the profile should be re-centred); "not_convex" (the parabola opens downwards; N_opt is the best
    sampled size). Only "ok" vertices enter the power laws.
    """
    out = []
    for b in np.unique(budget):
        sel = budget == b
        x, y = np.log(N[sel]), loss[sel]
        if np.unique(x).size < 3:
            continue
        center = x.mean()  # fit in centred log N: the raw values (~20) make the normal equations ill-conditioned
        c2, c1, c0 = np.polyfit(x - center, y, 2)
        lo, hi = x.min(), x.max()
        if c2 <= 0:
            status, vertex = "not_convex", x[np.argmin(y)]
        else:
            vertex = center - c1 / (2 * c2)
            status = "ok" if lo <= vertex <= hi else "clipped"
            vertex = min(max(vertex, lo), hi)
        c_budget = math.exp(np.log(C[sel]).mean())
        n_opt = math.exp(vertex)
        # The same parabola in raw log N, for plotting: c2 x^2 + c1' x + c0'.
        coef = (c2, c1 - 2 * c2 * center, c2 * center**2 - c1 * center + c0)
        out.append(dict(budget=float(b), C=c_budget, N_opt=n_opt, D_opt=c_budget / (6 * n_opt), status=status,
                        N_range=[math.exp(lo), math.exp(hi)], n_models=int(sel.sum()),
                        coef=[float(v) for v in coef]))
    return out


def _laws(vertices):
    """(N coef, N exponent, D coef, D exponent) from the "ok" vertices, or None with fewer than 3."""
    ok = [v for v in vertices if v["status"] == "ok"]
    if len(ok) < 3:
        return None
    logc = np.log([v["C"] for v in ok])
    return (*fit_power_law(logc, np.log([v["N_opt"] for v in ok])),
            *fit_power_law(logc, np.log([v["D_opt"] for v in ok])))


@one_blas_thread
def fit_approach2(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                  seed: int = 0) -> dict:
    """Chinchilla Approach 2: IsoFLOP parabolas, then N*(C) = coef C^exponent and D*(C) likewise.

    Returns {"budgets": [{budget, C, N_opt, D_opt, status, N_range, n_models, coef, N_opt_interval}],
    "N_law", "D_law": {"coef", "exponent": Estimate}, "at_target": {N, D, tokens_per_param: Estimate},
    "curve": {"N": band, "D": band}, "n_bootstrap"}; N_opt_interval is an Estimate. Models are resampled
    within budgets, every profile keeping 3 sizes (`stratified_resamples`). Raises FitError unless >= 3
    budgets with >= 3 models each have a convex parabola whose vertex lies inside the sampled sizes.
    """
    m = model_arrays(rows)
    vertices = isoflop_vertices(m["budget"], m["C"], m["N"], m["loss"])
    laws = _laws(vertices)
    if laws is None:
        counts = {float(b): int(np.unique(m["N"][m["budget"] == b]).size) for b in np.unique(m["budget"])}
        flagged = {v["budget"]: v["status"] for v in vertices if v["status"] != "ok"}
        raise FitError(f"need >= 3 budgets with >= 3 models each and an interior parabola vertex for Approach 2, "
                       f"got models per budget {counts}" + (f" and flagged vertices {flagged}" if flagged else ""))
    grid = curve_grid(m["C"], target_flops)

    law_samples, vertex_samples = [], {v["budget"]: [] for v in vertices}
    for resample in stratified_resamples(m["budget"], n_bootstrap, seed, sizes=m["N"]):
        resampled = isoflop_vertices(m["budget"][resample], m["C"][resample], m["N"][resample], m["loss"][resample])
        for v in resampled:
            vertex_samples[v["budget"]].append(v["N_opt"])
        sample = _laws(resampled)
        if sample is not None:
            law_samples.append(sample)
    law_samples = np.array(law_samples).reshape(-1, 4)

    for v in vertices:
        v["N_opt_interval"] = Estimate.from_samples(v["N_opt"], vertex_samples[v["budget"]])
    n_coef, n_exp, d_coef, d_exp = laws
    out = {
        "budgets": vertices,
        "N_law": law_estimates(n_coef, n_exp, law_samples[:, 0], law_samples[:, 1]),
        "D_law": law_estimates(d_coef, d_exp, law_samples[:, 2], law_samples[:, 3]),
        "curve": {"N": band(grid, n_coef * grid**n_exp, [s[0] * grid ** s[1] for s in law_samples]),
                  "D": band(grid, d_coef * grid**d_exp, [s[2] * grid ** s[3] for s in law_samples])},
        "n_bootstrap": len(law_samples),
    }
    if target_flops:
        n_t = law_samples[:, 0] * target_flops ** law_samples[:, 1]
        d_t = law_samples[:, 2] * target_flops ** law_samples[:, 3]
        n_hat, d_hat = n_coef * target_flops**n_exp, d_coef * target_flops**d_exp
        out["at_target"] = {"N": Estimate.from_samples(n_hat, n_t), "D": Estimate.from_samples(d_hat, d_t),
                            "tokens_per_param": Estimate.from_samples(d_hat / n_hat, d_t / n_t)}
    return out
