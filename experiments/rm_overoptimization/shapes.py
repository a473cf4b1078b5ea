"""The over-optimisation study's estimators and pass criteria, apart from its stages (run.py) so that tests can
check them against brute force and planted curves.

Best-of-n from a stored pool: each prompt's N samples are scored once; the best-by-proxy of n drawn without
replacement is the k-th lowest of the pool with probability C(k-1, n-1) / C(N, n) (k = 1..N). A random n-subset
of N independent samples is itself n independent samples, so this gives an unbiased estimate of the gold or
proxy reward of best-of-n from the policy for every n <= N (`bon_expectations`); its variance grows as n nears N,
which is why the pool should be much larger than the largest n. The best-of-n policy's KL to the policy is
log(n) - (n-1)/n (gptjax.align.losses.best_of_n_kl), whatever the pool.

A shape check (`shape_check`) reads one method x proxy: curves of U independent units (prompts) at X points of
increasing d = sqrt(KL). The proxy rises throughout when no step falls by more than 2 SE and the last point
is more than 2 SE above the first (best-of-n's proxy curve rises by construction; RL's need not). Gold peaks
then falls when its maximum is at an interior point and the last point is more than z SE below it, z = 2 raised
to the Bonferroni level for picking the peak among the X - 2 interior points (the largest of noisy means is
biased up: at plain 2 SE a flat curve would pass about one time in eight). SEs are those of the paired
per-unit differences. The fits R_bon(d) = d (alpha - beta d) and R_rl(d) = d (alpha - beta log d) get percentile
intervals from a bootstrap over the units.
"""

import math

import numpy as np
from scipy.stats import norm


def bon_pick_probabilities(n: int, pool: int) -> np.ndarray:
    """P(the best of n drawn without replacement is the k-th lowest of `pool` distinct values), k = 1..pool."""
    return np.array([math.comb(k, n - 1) for k in range(pool)], float) / math.comb(pool, n)


def bon_expectations(proxy_PxN, target_PxN, ns, rng) -> np.ndarray:
    """Per prompt, the expected `target` of the best-by-proxy of n samples drawn without replacement from the N
    stored ones (the unbiased order-statistics estimator), for each n: an array P x len(ns). Equal proxy scores
    are ordered at random (`rng`)."""
    P, N = proxy_PxN.shape
    jitter = rng.uniform(0, 1e-9, size=proxy_PxN.shape)
    order = np.argsort(proxy_PxN + jitter, axis=1)
    sorted_target_PxN = np.take_along_axis(np.asarray(target_PxN, float), order, axis=1)
    return np.stack([sorted_target_PxN @ bon_pick_probabilities(int(n), N) for n in ns], axis=1)


def fit_bon(d, r) -> np.ndarray:
    """alpha, beta of r = d (alpha - beta d) by least squares (no intercept: R(0) = 0)."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    return np.linalg.lstsq(np.stack([d, -d * d], 1), r, rcond=None)[0]


def fit_rl(d, r) -> np.ndarray:
    """alpha, beta of r = d (alpha - beta log d) by least squares, on the points with d > 0."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    keep = d > 0
    d, r = d[keep], r[keep]
    return np.linalg.lstsq(np.stack([d, -d * np.log(d)], 1), r, rcond=None)[0]


FITS = {"bon": fit_bon, "rl": fit_rl}


def _paired_se(curves_UxX, a: int, b: int) -> float:
    """The standard error of mean(curve[a]) - mean(curve[b]) from the per-unit differences."""
    diff_U = curves_UxX[:, a] - curves_UxX[:, b]
    return float(diff_U.std(ddof=1) / math.sqrt(len(diff_U)))


def interval(samples) -> list:
    """The 95% percentile interval [low, high] of bootstrap `samples`."""
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def shape_check(method: str, rm_pairs: int, d_X, proxy_UxX, gold_UxX, n_boot: int, rng) -> dict:
    """One entry of results.json's "shape_checks" (see the module docstring). d_X: the points' sqrt(KL),
    increasing; proxy_UxX, gold_UxX: each unit's rewards there (relative to the initial policy's)."""
    d_X = np.asarray(d_X, float)
    proxy_UxX, gold_UxX = np.asarray(proxy_UxX, float), np.asarray(gold_UxX, float)
    U, X = gold_UxX.shape
    proxy_X, gold_X = proxy_UxX.mean(0), gold_UxX.mean(0)
    proxy_rises = bool(all(proxy_X[i + 1] - proxy_X[i] > -2 * _paired_se(proxy_UxX, i + 1, i) for i in range(X - 1))
                       and proxy_X[-1] - proxy_X[0] > 2 * _paired_se(proxy_UxX, X - 1, 0))
    peak = int(np.argmax(gold_X))
    drop, drop_se = float(gold_X[peak] - gold_X[-1]), _paired_se(gold_UxX, peak, X - 1)
    drop_z = max(2.0, float(norm.ppf(1 - 0.025 / max(X - 2, 1))))
    fit = FITS[method]
    alpha, beta = fit(d_X, gold_X)
    boot_fits, boot_peaks = [], []
    for _ in range(n_boot):
        units = rng.integers(0, U, U)
        resampled_X = gold_UxX[units].mean(0)
        boot_fits.append(fit(d_X, resampled_X))
        boot_peaks.append(d_X[int(np.argmax(resampled_X))])
    boot_fits = np.array(boot_fits)
    return dict(method=method, rm_pairs=int(rm_pairs), proxy_rises=proxy_rises,
                gold_peaks_then_falls=bool(0 < peak < X - 1 and drop > drop_z * drop_se),
                d_peak=float(d_X[peak]), d_peak_ci=interval(boot_peaks), gold_drop=drop, gold_drop_se=drop_se,
                drop_z=drop_z,
                alpha=float(alpha), alpha_ci=interval(boot_fits[:, 0]),
                beta=float(beta), beta_ci=interval(boot_fits[:, 1]), units=int(U))


def verdict(checks: list[dict]) -> dict:
    """Per method: whether at least 2 of its proxies pass both shape criteria, and whether d_peak grows with the
    proxy's preference data: strictly, from each passing proxy to the next larger passing one (a proxy without an
    interior peak has no d_peak to compare), with at least two of them."""
    out = {}
    for method in sorted({c["method"] for c in checks}):
        mine = sorted((c for c in checks if c["method"] == method), key=lambda c: c["rm_pairs"])
        passing = [c for c in mine if c["proxy_rises"] and c["gold_peaks_then_falls"]]
        peaks = [c["d_peak"] for c in passing]
        out[method] = dict(proxies_passing=[c["rm_pairs"] for c in passing], shape_holds=len(passing) >= 2,
                           d_peak_grows_with_data=len(peaks) >= 2 and all(b > a for a, b in zip(peaks, peaks[1:])))
    return out
