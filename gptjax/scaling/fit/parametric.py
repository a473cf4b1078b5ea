"""Chinchilla's Approach 3: the parametric loss surface L(N, D) = E + A/N^alpha + B/D^beta, fitted as
Hoffmann et al. (Appendix D.2) and Besiroglu et al. did, and its compute-optimal allocation under
C = 6 N D."""

import itertools
import math

import numpy as np
from scipy import optimize

from gptjax.scaling.fit.bootstrap import (Draws, Estimate, band, curve_grid, one_blas_thread, parametric_resamples,
                                          residual_scale, stratified_resamples)
from gptjax.scaling.fit.identify import bound_hits, identification
from gptjax.scaling.fit.noise import loss_sd, measure_noise
from gptjax.scaling.fit.rows import FitError, model_arrays

HUBER_DELTA = 1e-3  # Hoffmann et al.'s Huber threshold on log-loss residuals

# Hoffmann et al.'s grid of L-BFGS initialisations for (a, b, e, alpha, beta): 6 * 6 * 5 * 5 * 5 = 4500.
HOFFMANN_GRID = (
    np.arange(0.0, 26.0, 5.0),
    np.arange(0.0, 26.0, 5.0),
    np.arange(-1.0, 1.01, 0.5),
    np.arange(0.0, 2.01, 0.5),
    np.arange(0.0, 2.01, 0.5),
)
# Box for L-BFGS-B: wide enough never to bind on a sensible sweep, narrow enough that exp() stays finite.
APPROACH3_BOUNDS = ((-30.0, 80.0), (-30.0, 80.0), (-30.0, 10.0), (0.0, 4.0), (0.0, 4.0))
SURFACE_PARAMS = ("E", "A", "B", "alpha", "beta")


# ---------------------------------------------------------------------------------------------------
# Evaluating a fitted surface (also on fits.json's dicts, for notebooks)


def param_values(params):
    """{name: number} from a "params" dict whose entries are numbers, Estimates or their JSON dicts."""
    return {k: v.value if isinstance(v, Estimate) else v["value"] if isinstance(v, dict) else v
            for k, v in params.items()}


def predict_loss(fit: dict, N, D):
    """Approach 3's L(N, D) = E + A/N^alpha + B/D^beta. `fit` is fit_approach3's dict (or fit_all's
    "approach3"), its params, or plain {E, A, B, alpha, beta}."""
    p = param_values(fit.get("params", fit))
    N, D = np.asarray(N, float), np.asarray(D, float)
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def compute_optimal(fit: dict, C):
    """Approach 3's compute-optimal (N_opt, D_opt) under C = 6 N D (Hoffmann et al. eq. 4):
    N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)), D_opt = C / (6 N_opt).
    `fit` as for `predict_loss`."""
    p = param_values(fit.get("params", fit))
    return optimal_allocation(p["A"], p["B"], p["alpha"], p["beta"], np.asarray(C, float))


def optimal_allocation(A, B, alpha, beta, C):
    """(N_opt, D_opt) at compute C from the surface's parameters; nan where alpha or beta is 0."""
    A, B, alpha, beta = (np.float64(v) for v in (A, B, alpha, beta))  # numpy floats: nan, not ZeroDivisionError
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # alpha or beta = 0: no optimum
        G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        n_opt = G * (C / 6.0) ** (beta / (alpha + beta))
        return n_opt, C / (6.0 * n_opt)


# ---------------------------------------------------------------------------------------------------
# The Huber fit


def _huber(r, delta):
    """Huber(r) / delta^2: quadratic within delta, linear beyond."""
    r = np.abs(r)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)) / delta**2


def _huber_objective(theta, log_n, log_d, log_l, delta):
    """Sum of Huber(log L_hat - log L) / delta^2 and its gradient, log L_hat = LSE(a - alpha log N,
    b - beta log D, e).

    Dividing by delta^2 changes no minimiser but puts the objective at O(1) per point: L-BFGS-B's relative
    stopping test compares against max(|f|, 1), so an objective of ~1e-6 (the raw Huber sum) stops it long
    before convergence: the loss-scale problem Besiroglu et al. found in the original fit.
    """
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    weights /= total  # softmax: d LSE / d term
    r = top + np.log(total) - log_l
    value = _huber(r, delta).sum()
    dr = np.clip(r, -delta, delta) / delta**2  # d huber / d r
    g0, g1 = dr * weights[0], dr * weights[1]
    grad = np.array([g0.sum(), g1.sum(), (dr * weights[2]).sum(), -(g0 * log_n).sum(), -(g1 * log_d).sum()])
    return value, grad


def _minimise_huber(starts, log_n, log_d, log_l, delta):
    """The best L-BFGS-B result over `starts` (analytic gradient, tight tolerances)."""
    best = None
    for start in starts:
        result = optimize.minimize(_huber_objective, start, args=(log_n, log_d, log_l, delta), jac=True,
                                   method="L-BFGS-B", bounds=APPROACH3_BOUNDS,
                                   options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-9})
        if best is None or result.fun < best.fun:
            best = result
    return best


def _huber_on_grid(starts, log_n, log_d, log_l, delta):
    """The objective of `_huber_objective` at every row of `starts` (shape (S, 5)) at once."""
    a, b, e, alpha, beta = (starts[:, k, None] for k in range(5))
    lse = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    return _huber(lse - log_l, delta).sum(axis=1)


def _surface_params(result):
    a, b, e, alpha, beta = result.x
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha), "beta": float(beta),
            "objective": float(result.fun), "theta": [float(v) for v in result.x]}


@one_blas_thread
def fit_loss_surface(N, D, loss, grid=HOFFMANN_GRID, n_starts: int | None = 100,
                     delta: float = HUBER_DELTA) -> dict:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to points (Hoffmann et al. Appendix D.2).

    Minimises the summed Huber loss (threshold `delta`) between log predicted and log observed loss in
    the log-sum-exp form log L = LSE(a - alpha log N, b - beta log D, e), A = e^a, B = e^b, E = e^e, by
    L-BFGS-B with the analytic gradient, and keeps the best optimum. `grid` gives five sequences (a, b, e,
    alpha, beta) whose product are the initialisations (default: Hoffmann et al.'s 4500). L-BFGS-B runs
    from the `n_starts` grid points with the lowest objective (None: from all of them): the whole grid
    costs ~1 minute on a CPU core, and on Chinchilla-like data the global optimum is reached from
    most of the best-scoring starts. Returns {"E", "A", "B", "alpha", "beta", "objective", "theta"}.
    """
    log_n, log_d, log_l = np.log(N), np.log(D), np.log(loss)
    starts = np.array(list(itertools.product(*grid)), float)
    if n_starts is not None and n_starts < len(starts):
        starts = starts[np.argsort(_huber_on_grid(starts, log_n, log_d, log_l, delta))[:n_starts]]
    return _surface_params(_minimise_huber(starts, log_n, log_d, log_l, delta))


# ---------------------------------------------------------------------------------------------------
# Approach 3 on a sweep's rows


def _resampled_data(m, fit, noise, n_bootstrap, seed):
    """(scheme, iterable of (log N, log D, log L) per resample) for Approach 3's bootstrap; `noise` is
    `measure_noise` of the sweep's rows.

    Parametric where the rows measured their noise: log L* = log L_hat + eps, with each model's measured
    noise (sd(L) / L) or the Huber fit's residual scatter (dof n - 5), whichever is larger. Otherwise models
    are resampled within budgets (`stratified_resamples`).
    """
    log_n, log_d, log_l = np.log(m["N"]), np.log(m["D"]), np.log(m["loss"])
    measured = loss_sd(m["rows"], noise)
    if measured is None:
        picks = stratified_resamples(m["budget"], n_bootstrap, seed)
        return "cases", ((log_n[p], log_d[p], log_l[p]) for p in picks)
    log_fit = np.log(predict_loss(fit, m["N"], m["D"]))
    draws = parametric_resamples(log_fit, measured / m["loss"], residual_scale(log_l - log_fit, 5), n_bootstrap, seed)
    return "parametric", ((log_n, log_d, log_l) for log_l in draws)


def _bound_checks(theta, params, min_loss):
    """`bound_hits` checks for the surface: log A, log B, alpha and beta in the search box, and E in
    [0, the lowest loss].

    E is searched as log E, but its real bounds are 0 and the lowest loss (L >= E): once E / L is below
    ~1e-6 its gradient vanishes and L-BFGS-B stops wherever it is (log E = -20 as well as at the box's -30),
    so E is checked on that scale, as the frontier's is.
    """
    checks = []
    for name, value, box in zip(("A", "B", "E", "alpha", "beta"), theta, APPROACH3_BOUNDS):
        est = params[name]
        ends = (est.low, est.high)
        if name == "E":
            value, box = math.exp(value), (0.0, min_loss)
        elif name in ("A", "B"):
            ends = tuple(None if x is None else math.log(x) if x > 0 else -math.inf for x in ends)
        checks.append((name, value, ends, box))
    return checks


@one_blas_thread
def fit_approach3(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200, seed: int = 0,
                  n_starts: int | None = 100) -> dict:
    """Chinchilla Approach 3 on each model's best loss, with bootstrap intervals.

    Returns {"params": {E, A, B, alpha, beta, G, a, b: Estimate} (a = beta/(alpha+beta) and
    b = alpha/(alpha+beta) are the exponents of N_opt and D_opt in C), "objective", "n_points",
    "at_target": {N, D, tokens_per_param, loss: Estimate} (loss = L(N_opt, D_opt)), "curve": {"N": band,
    "D": band}, "bootstrap": "parametric" | "cases" (`_resampled_data`), "n_bootstrap" (resamples drawn),
    "n_failed", "at_bound": names of parameters stuck at a box bound, "identified", "reason" (identify.py:
    not identified with E, alpha or beta, or an end of their intervals, at the box, or an unbounded interval
    of E, alpha, beta or the optimum at the target), "draws": the resamples' (E, A, B, alpha, beta) as a
    Draws, which fits.json leaves out}. Raises FitError with fewer than 6 models or fewer than 2 distinct
    N or D.
    """
    m = model_arrays(rows)
    if len(m["N"]) < 6 or np.unique(m["N"]).size < 2 or np.unique(m["D"]).size < 2:
        raise FitError(f"need >= 6 models with >= 2 distinct sizes and token counts for Approach 3, got "
                       f"{len(m['N'])} models, {np.unique(m['N']).size} sizes, {np.unique(m['D']).size} token counts")
    fit = fit_loss_surface(m["N"], m["D"], m["loss"], n_starts=n_starts)
    c_grid = curve_grid(m["C"], target_flops)

    def derived(p):
        """Every reported quantity of one parameter set, as a flat tuple."""
        E, A, B, alpha, beta = p
        n_1, _ = optimal_allocation(A, B, alpha, beta, 6.0)  # N_opt at C/6 = 1 is G
        scalars = [E, A, B, alpha, beta, n_1, beta / (alpha + beta), alpha / (alpha + beta)]
        if target_flops:
            n_t, d_t = optimal_allocation(A, B, alpha, beta, target_flops)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                scalars += [n_t, d_t, d_t / n_t, E + A / n_t**alpha + B / d_t**beta]
        n_c, d_c = optimal_allocation(A, B, alpha, beta, c_grid)
        return np.array(scalars), n_c, d_c

    point = derived([fit[k] for k in SURFACE_PARAMS])
    scheme, resamples = _resampled_data(m, fit, measure_noise(rows), n_bootstrap, seed)
    drawn, samples = [], []
    # The bootstrap warm-starts L-BFGS-B from the point estimate instead of rerunning the whole grid per
    # resample (4500 starts x 200 resamples is too slow); a resample is a small perturbation of the data,
    # so its optimum lies in the point estimate's basin.
    for log_n, log_d, log_l in resamples:
        result = _minimise_huber([fit["theta"]], log_n, log_d, log_l, HUBER_DELTA)
        # Not `result.success`: a line search that stalls at the optimum (the Huber kink) reports ABNORMAL.
        if np.isfinite(result.fun):
            p = _surface_params(result)
            drawn.append([p[k] for k in SURFACE_PARAMS])
            samples.append(derived(drawn[-1]))
    n_failed = n_bootstrap - len(samples)

    names = ["E", "A", "B", "alpha", "beta", "G", "a", "b"]
    scalars = np.array([s[0] for s in samples]).reshape(-1, len(point[0]))
    params = {name: Estimate.from_samples(point[0][k], scalars[:, k], n_failed) for k, name in enumerate(names)}
    out = {
        "params": params,
        "objective": fit["objective"],
        "n_points": len(m["N"]),
        "curve": {"N": band(c_grid, point[1], [s[1] for s in samples], n_failed),
                  "D": band(c_grid, point[2], [s[2] for s in samples], n_failed)},
        "bootstrap": scheme,
        "n_bootstrap": n_bootstrap,
        "n_failed": n_failed,
    }
    checks = _bound_checks(fit["theta"], params, float(m["loss"].min()))
    out["at_bound"] = [name for name, value, _, box in checks if bound_hits([(name, value, None, box)])]
    key = {name: params[name] for name in ("E", "alpha", "beta")}
    if target_flops:
        out["at_target"] = {name: Estimate.from_samples(point[0][k], scalars[:, k], n_failed)
                            for k, name in enumerate(("N", "D", "tokens_per_param", "loss"), start=len(names))}
        key.update({f"{name} at the target": out["at_target"][name] for name in ("N", "D", "loss")})
    out.update(identification(n_bootstrap, n_failed, bound_hits(checks), key))
    out["draws"] = Draws(np.array(drawn, float).reshape(-1, 5), n_failed)
    return out
