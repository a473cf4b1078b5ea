"""Chinchilla's Approach 2: per budget a parabola of loss in log N (an IsoFLOP profile) and N_opt at its
vertex; then N*(C) and D*(C) as power laws of compute."""

import math

import numpy as np

from gptjax.scaling.fit.bootstrap import (Estimate, band, curve_grid, law_estimates, one_blas_thread,
                                          parametric_resamples, residual_scale, stratified_resamples)
from gptjax.scaling.fit.identify import identification
from gptjax.scaling.fit.noise import loss_sd, measure_noise
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


def _laws(vertices, budgets=None):
    """(N coef, N exponent, D coef, D exponent) from the "ok" vertices, or None with fewer than 3; with
    `budgets`, from exactly those budgets' vertices, or None unless every one of them is "ok"."""
    ok = [v for v in vertices if v["status"] == "ok"]
    if budgets is not None:
        ok = [v for v in ok if v["budget"] in budgets]
        if len(ok) < len(budgets):
            return None
    if len(ok) < 3:
        return None
    logc = np.log([v["C"] for v in ok])
    return (*fit_power_law(logc, np.log([v["N_opt"] for v in ok])),
            *fit_power_law(logc, np.log([v["D_opt"] for v in ok])))


def _resampled_losses(m, vertices, noise, n_bootstrap, seed):
    """(scheme, index arrays or None, loss arrays (n_bootstrap, models)) for Approach 2's bootstrap; `noise`
    is `measure_noise` of the sweep's rows.

    Parametric where the rows measured their noise: each model's loss is its profile's parabola plus
    Normal noise of its measured SD or the profiles' pooled residual scatter (dof: models - 3 per
    profile), whichever is larger; models outside a profile keep their loss. Otherwise models are
    resampled within budgets, every profile keeping 3 sizes (`stratified_resamples`).
    """
    measured = loss_sd(m["rows"], noise)
    if measured is None:
        picks = stratified_resamples(m["budget"], n_bootstrap, seed, sizes=m["N"])
        return "cases", picks, m["loss"][picks]
    fitted, residuals, n_params = m["loss"].copy(), [], 0
    for v in vertices:
        sel = m["budget"] == v["budget"]
        fitted[sel] = np.polyval(v["coef"], np.log(m["N"][sel]))
        residuals.append(m["loss"][sel] - fitted[sel])
        n_params += 3
    residuals = np.concatenate(residuals)
    return "parametric", None, parametric_resamples(fitted, measured, residual_scale(residuals, n_params),
                                                    n_bootstrap, seed)


@one_blas_thread
def fit_approach2(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                  seed: int = 0) -> dict:
    """Chinchilla Approach 2: IsoFLOP parabolas, then N*(C) = coef C^exponent and D*(C) likewise.

    Returns {"budgets": [{budget, C, N_opt, D_opt, status, N_range, n_models, coef, N_opt_interval}],
    "N_law", "D_law": {"coef", "exponent": Estimate}, "at_target": {N, D, tokens_per_param: Estimate},
    "curve": {"N": band, "D": band}, "bootstrap": "parametric" | "cases", "n_bootstrap" (resamples drawn),
    "n_failed", "identified", "reason"}; N_opt_interval is an Estimate.

    The bootstrap (`_resampled_losses`) is parametric where the rows measured their noise, else it resamples
    models within budgets. A resample fails, and is counted (bootstrap.py), when a budget whose vertex
    entered the laws has a clipped or non-convex parabola in it: its N_opt is then not determined, and
    fitting the laws without it would report the interval of the resamples that happened to work. The
    key quantities for identification (identify.py) are the two exponents and N, D at the target. Raises
    FitError unless >= 3 budgets with >= 3 models each have a convex parabola whose vertex lies inside the
    sampled sizes.
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
    in_laws = {v["budget"] for v in vertices if v["status"] == "ok"}

    scheme, picks, losses = _resampled_losses(m, vertices, measure_noise(rows), n_bootstrap, seed)
    law_samples, vertex_samples = [], {v["budget"]: [] for v in vertices}
    for k, loss in enumerate(losses):
        pick = slice(None) if picks is None else picks[k]
        resampled = isoflop_vertices(m["budget"][pick], m["C"][pick], m["N"][pick], loss)
        for v in resampled:
            if v["status"] == "ok":
                vertex_samples[v["budget"]].append(v["N_opt"])
        sample = _laws(resampled, in_laws)
        if sample is not None:
            law_samples.append(sample)
    law_samples = np.array(law_samples).reshape(-1, 4)
    n_failed = len(losses) - len(law_samples)

    for v in vertices:
        drawn = vertex_samples[v["budget"]]
        v["N_opt_interval"] = Estimate.from_samples(v["N_opt"], drawn, len(losses) - len(drawn))
    n_coef, n_exp, d_coef, d_exp = laws
    out = {
        "budgets": vertices,
        "N_law": law_estimates(n_coef, n_exp, law_samples[:, 0], law_samples[:, 1], n_failed),
        "D_law": law_estimates(d_coef, d_exp, law_samples[:, 2], law_samples[:, 3], n_failed),
        "curve": {"N": band(grid, n_coef * grid**n_exp, [s[0] * grid ** s[1] for s in law_samples], n_failed),
                  "D": band(grid, d_coef * grid**d_exp, [s[2] * grid ** s[3] for s in law_samples], n_failed)},
        "bootstrap": scheme,
        "n_bootstrap": len(losses),
        "n_failed": n_failed,
    }
    key = {"the N* exponent": out["N_law"]["exponent"], "the D* exponent": out["D_law"]["exponent"]}
    if target_flops:
        n_t = law_samples[:, 0] * target_flops ** law_samples[:, 1]
        d_t = law_samples[:, 2] * target_flops ** law_samples[:, 3]
        n_hat, d_hat = n_coef * target_flops**n_exp, d_coef * target_flops**d_exp
        out["at_target"] = {"N": Estimate.from_samples(n_hat, n_t, n_failed),
                            "D": Estimate.from_samples(d_hat, d_t, n_failed),
                            "tokens_per_param": Estimate.from_samples(d_hat / n_hat, d_t / n_t, n_failed)}
        key.update({"N at the target": out["at_target"]["N"], "D at the target": out["at_target"]["D"]})
    out.update(identification(len(losses), n_failed, (), key))
    return out
