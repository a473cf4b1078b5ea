"""Uncertainty shared by every fit: the `Estimate` type, the bootstrap resampling schemes (parametric
draws from the measured noise; cases; residuals), and the summaries of resampled fits as 95% percentile
intervals (scalars) and bands (curves over compute).

A resample that could not be fitted is counted, never dropped: it is placed half at -inf and half at +inf
before the percentiles are taken (`percentile_interval`), so failures widen an interval and more than 5%
of them leave both of its ends unbounded (None in fits.json). Dropping them would report the interval of
the resamples that happened to fit, which is narrower the more the fit fails."""

import dataclasses
import functools
import math

import numpy as np

PERCENTILES = (2.5, 97.5)  # 95% percentile bootstrap intervals
CURVE_POINTS = 60


def plain(x):
    """A JSON-safe float: non-finite values become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def percentile_interval(samples, n_failed: int = 0):
    """(low, high): the 95% percentile interval (`PERCENTILES`) over axis 0 of `samples` (resamples, ...),
    counting `n_failed` more resamples, and every resample with a non-finite entry, as failures placed half
    at -inf and half at +inf. An end that reaches a failure is inf (unbounded); with no resamples, nan.

    Linear interpolation as np.percentile's default, between the two order statistics around the rank
    q (n - 1); an end that touches an infinite one is unbounded.
    """
    samples = np.asarray(samples, float)
    if samples.ndim <= 1:
        samples = samples.reshape(-1, 1)
    samples = samples.reshape(len(samples), math.prod(samples.shape[1:]))
    finite = np.isfinite(samples).all(axis=1)
    ok = np.sort(samples[finite], axis=0)
    failed = int(n_failed) + int((~finite).sum())
    n_low, n = failed // 2, ok.shape[0] + failed
    width = samples.shape[1]
    if n == 0:
        return np.full(width, np.nan), np.full(width, np.nan)
    ranked = np.concatenate([np.full((n_low, width), -np.inf), ok, np.full((failed - n_low, width), np.inf)])
    ends = []
    for q in PERCENTILES:
        rank = q / 100 * (n - 1)
        below, above = ranked[math.floor(rank)], ranked[math.ceil(rank)]
        with np.errstate(invalid="ignore"):
            between = below + (above - below) * (rank - math.floor(rank))
        ends.append(np.where(np.isfinite(below) & np.isfinite(above), between, np.inf))
    return ends[0], ends[1]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% percentile bootstrap interval. Each is a finite float or None: the
    value when the fit gave no finite number, low and high when the interval is unbounded on that side
    (too many resamples failed, `percentile_interval`) or no resample was drawn."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def from_samples(cls, value, samples, n_failed: int = 0) -> "Estimate":
        """`value` with the interval of `samples` (one per bootstrap resample that fitted) and `n_failed`
        resamples that did not; a non-finite sample counts as failed too (`percentile_interval`)."""
        low, high = percentile_interval(np.asarray(samples, float).reshape(-1), n_failed)
        return cls(plain(value), plain(low[0]), plain(high[0]))

    def to_json(self) -> dict:
        """{"value", "low", "high"}: the form fits.json stores."""
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True, eq=False)
class Draws:
    """A fit's parameter sets on the resamples that fitted, shape (resamples, parameters), and how many
    resamples failed. Kept in memory for predictions with intervals (`combine.predict_with_interval`);
    `to_json` leaves it out of fits.json."""

    params: np.ndarray
    n_failed: int


def to_json(tree):
    """`tree` (dicts, lists and tuples of plain values) with every Estimate in it replaced by its JSON dict
    and every Draws left out."""
    if isinstance(tree, Estimate):
        return tree.to_json()
    if isinstance(tree, dict):
        return {k: to_json(v) for k, v in tree.items() if not isinstance(v, Draws)}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_json(v) for v in tree)
    return tree


def law_estimates(coef, exponent, coef_samples, exponent_samples, n_failed: int = 0) -> dict:
    """A power law coef * C^exponent as {"coef": Estimate, "exponent": Estimate}."""
    return {"coef": Estimate.from_samples(coef, coef_samples, n_failed),
            "exponent": Estimate.from_samples(exponent, exponent_samples, n_failed)}


def band(grid, center, samples, n_failed: int = 0) -> dict:
    """A curve over `grid` with its pointwise 95% bootstrap band, {"C", "value", "low", "high"} (lists);
    samples has shape (resamples that fitted, len(grid)), failures counted as in `percentile_interval`."""
    samples = np.asarray(samples, float).reshape(-1, len(grid))
    low, high = percentile_interval(samples, n_failed)
    return {"C": [plain(c) for c in grid], "value": [plain(v) for v in center],
            "low": [plain(v) for v in low], "high": [plain(v) for v in high]}


def curve_grid(c_values, target_flops):
    """Log-spaced compute values from the smallest sweep budget to the target (or the largest budget)."""
    hi = max(np.max(c_values), target_flops or 0.0)
    return np.geomspace(np.min(c_values), hi, CURVE_POINTS)


def strata(groups):
    """(members, is_profile) per stratum: each budget with >= 2 models, then the one-model budgets pooled.

    A stratum of one model resamples to itself, so with one row per budget (a CSV without a budget
    column) every resample would be the data and every interval zero-width; pooled, those rows are an
    ordinary case bootstrap and the intervals reflect their scatter.
    """
    labels, counts = np.unique(groups, return_counts=True)
    out = [(np.flatnonzero(groups == g), True) for g in labels[counts > 1]]
    single = np.isin(groups, labels[counts == 1])
    if single.any():
        out.append((np.flatnonzero(single), False))
    return out


def stratified_resamples(groups, n_bootstrap, seed, sizes=None):
    """Index arrays (n_bootstrap, len(groups)) resampling models with replacement within every budget.

    Stratifying by budget keeps every IsoFLOP profile, with its number of models, in every resample (an
    unstratified resample can drop a whole budget); one-model budgets are resampled together (`strata`).
    With `sizes`, a profile's draw that keeps fewer than 3 distinct sizes (when it had 3) is redrawn, for
    Approach 2: a parabola needs 3 sizes, and with 4-5 models per budget a third of plain draws would
    leave it nothing to fit, so its bootstrap is conditional on every profile staying fittable.
    """
    rng = np.random.default_rng(seed)
    indices = np.empty((n_bootstrap, len(groups)), int)
    for members, is_profile in strata(groups):
        draw = rng.choice(members, size=(n_bootstrap, members.size))
        need = 0 if sizes is None or not is_profile else min(3, np.unique(sizes[members]).size)
        while need:
            distinct = 1 + (np.diff(np.sort(sizes[draw], axis=1), axis=1) != 0).sum(axis=1)
            short = distinct < need
            if not short.any():
                break
            draw[short] = rng.choice(members, size=(int(short.sum()), members.size))
        indices[:, members] = draw
    return indices


def residual_resamples(fitted, observed, n_bootstrap, seed, n_params=3):
    """Loss arrays (n_bootstrap, len(fitted)): the fitted curve times resampled log residuals.

    The frontier's points are each budget's minimum, so resampling models within budgets and taking the
    minimum again can only raise a point, which gives one-sided intervals several times too wide. The
    frontier's noise is the scatter of those minima about the curve, which the residuals measure. They are
    centred and scaled by sqrt(n / (n - p)), since a least-squares fit of p parameters leaves residuals
    smaller than the noise (Davison & Hinkley 1997, ch. 6). With n = p the fit is exact and there
    is no scatter to resample: no resamples.
    """
    n = len(fitted)
    if n <= n_params:
        return np.empty((0, n))
    log_fit = np.log(fitted)
    residuals = np.log(observed) - log_fit
    residuals = (residuals - residuals.mean()) * math.sqrt(n / (n - n_params))
    picks = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    return np.exp(log_fit + residuals[picks])


def residual_scale(residuals, n_params: int) -> float:
    """The residuals' RMS with the least-squares dof correction, sqrt(sum r^2 / (n - p)); 0 when n <= p
    (an exact fit says nothing about the scatter)."""
    residuals = np.asarray(residuals, float)
    dof = residuals.size - n_params
    return math.sqrt(float((residuals**2).sum()) / dof) if dof > 0 else 0.0


def parametric_resamples(fitted, measured_sd, residual_sd: float, n_bootstrap: int, seed: int):
    """Arrays (n_bootstrap, len(fitted)) of fitted + eps, eps_i ~ Normal(0, sigma_i^2) with
    sigma_i = max(measured_sd_i, residual_sd): the parametric bootstrap.

    measured_sd is each point's measured noise (noise.py); residual_sd the fit's own scatter
    (`residual_scale`). Taking the larger keeps the interval honest both ways: a fit that misses its
    points by more than the noise (a misspecified law) gets its misfit as noise, and a fit through few
    points, whose residuals underestimate the noise, gets the measured noise.
    """
    fitted = np.asarray(fitted, float)
    sigma = np.maximum(np.asarray(measured_sd, float), residual_sd)
    return fitted + sigma * np.random.default_rng(seed).standard_normal((n_bootstrap, fitted.size))


def one_blas_thread(fn):
    """Run `fn` with BLAS limited to one thread, where threadpoolctl is installed.

    SciPy >= 1.15's L-BFGS-B calls BLAS/LAPACK on 5-element vectors; with a multi-threaded OpenBLAS each
    call waits on its thread pool, which made every start ~10x slower on a busy 2-core machine (scipy
    issue #22438); the bootstrap repeats every fit hundreds of times. Nested calls just re-apply the
    same limit.
    """
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # the fits are the same without it, only slower
            return fn(*args, **kwargs)
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapped
