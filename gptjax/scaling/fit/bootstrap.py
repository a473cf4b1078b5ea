"""Uncertainty shared by every fit: the `Estimate` type, the bootstrap resampling schemes, and the
summaries of resampled fits as 95% percentile intervals (scalars) and bands (curves over compute)."""

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


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% percentile bootstrap interval. Each is a finite float or None: the
    value when the fit gave no finite number, low and high when no resample could be fitted."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def from_samples(cls, value, samples) -> "Estimate":
        """`value` with the interval of the finite entries of `samples` (one per bootstrap resample)."""
        samples = np.asarray(samples, float)
        samples = samples[np.isfinite(samples)]
        low, high = np.percentile(samples, PERCENTILES) if samples.size else (np.nan, np.nan)
        return cls(plain(value), plain(low), plain(high))

    def to_json(self) -> dict:
        """{"value", "low", "high"}: the form fits.json stores."""
        return {"value": self.value, "low": self.low, "high": self.high}


def to_json(tree):
    """`tree` (dicts, lists and tuples of plain values) with every Estimate in it replaced by its JSON dict."""
    if isinstance(tree, Estimate):
        return tree.to_json()
    if isinstance(tree, dict):
        return {k: to_json(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_json(v) for v in tree)
    return tree


def law_estimates(coef, exponent, coef_samples, exponent_samples) -> dict:
    """A power law coef * C^exponent as {"coef": Estimate, "exponent": Estimate}."""
    return {"coef": Estimate.from_samples(coef, coef_samples),
            "exponent": Estimate.from_samples(exponent, exponent_samples)}


def band(grid, center, samples) -> dict:
    """A curve over `grid` with its pointwise 95% bootstrap band, {"C", "value", "low", "high"} (lists);
    samples has shape (resamples, len(grid))."""
    samples = np.asarray(samples, float).reshape(-1, len(grid))
    samples = samples[np.isfinite(samples).all(axis=1)]
    if samples.shape[0]:
        low, high = np.percentile(samples, PERCENTILES, axis=0)
    else:
        low = high = np.full(len(grid), np.nan)
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
