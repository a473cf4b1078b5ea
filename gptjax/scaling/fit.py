"""Scaling-law fits over a sweep's trials, each with bootstrap intervals: numpy and scipy only (no jax),
so a notebook can import this module on its own.

  frontier     the best loss per budget, L(C) = E + (C0/C)^gamma
  approach2    Chinchilla's IsoFLOP profiles: per budget a parabola of loss in log N, its vertex N_opt;
               then N*(C) and D*(C) as power laws
  approach3    Chinchilla's parametric surface L(N, D) = E + A/N^alpha + B/D^beta and its compute-optimal
               allocation under C = 6 N D
  hyperparameters  DeepSeek LLM's laws: the best learning rate and batch size per budget, as power laws
               of compute
  backtest     refit without the largest budget and predict its best loss

Input rows are the dicts the sweep writes to WORKDIR/results.jsonl (`load_results`) or rows from a CSV
(`load_csv`). N is a row's "compute parameters" (with-attention FLOPs per token / 6) and D its tokens,
so C = 6 N D holds exactly; "budget" (the planned FLOPs) groups IsoFLOP profiles and the realised "C"
is used wherever a continuous compute value is needed. `fit_all` runs everything and returns one
JSON-serialisable dict whose layout its docstring gives.

Uncertainty: every fit is repeated on bootstrap resamples (seeded) and reported as a point estimate with
a 95% percentile interval, {"value", "low", "high"}. Approaches 2 and 3 resample models with replacement
within each budget, so every resample keeps the IsoFLOP design (budgets with a single model, as in a CSV
without a budget column, are resampled together); the frontier resamples its fit's residuals. Only rows
with status "ok" and a finite eval_loss are fitted; the loss fits use each model's best learning rate /
batch size, its loss averaged over seeds.

References: Hoffmann et al. 2022, "Training compute-optimal large language models" (Approaches 2 and 3,
Appendix D.2); Besiroglu et al. 2024, "Chinchilla scaling: a replication attempt" (the same fit run to
convergence, bootstrap intervals); DeepSeek-AI 2024, "DeepSeek LLM" Sec. 3.1 (hyperparameter laws).
"""

import csv
import functools
import itertools
import json
import math

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3  # Hoffmann et al.'s Huber threshold on log-loss residuals
PERCENTILES = (2.5, 97.5)  # 95% percentile bootstrap intervals
REQUIRED_KEYS = ("budget", "N", "D", "C", "eval_loss")
CSV_COLUMNS = ("params", "tokens", "loss")
CURVE_POINTS = 60

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


class FitError(ValueError):
    """Rows that cannot be read, or too few of them for a fit; the message names the input and the need."""


# ---------------------------------------------------------------------------------------------------
# Rows


def load_results(path: str) -> list[dict]:
    """The trial rows of a sweep's results.jsonl (one JSON object per line; blank lines skipped)."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FitError(f"{path}: no such results file; run the sweep first or pass its results.jsonl") from None
    rows = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FitError(f"{path}:{lineno}: not a JSON object ({e.msg}); fix or delete that line") from None
    return rows


def load_csv(path: str) -> list[dict]:
    """Rows from a CSV with columns params, tokens, loss and optionally budget, flops, lr, batch_size.

    `flops` is the realised training compute (default 6 * params * tokens); `budget` groups IsoFLOP
    profiles (default: flops, i.e. every row its own budget, which allows the frontier and Approach 3 but
    not Approach 2). Every row counts as status "ok"; the rows look like the sweep's, so every fit here
    takes them.
    """
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise FitError(f"{path}: no such CSV file; pass a CSV with columns params,tokens,loss") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise FitError(f"{path}: lacks column(s) {', '.join(missing)}; a scaling CSV needs params,tokens,loss "
                           "(optional: budget, flops, lr, batch_size)")
        rows = []
        for lineno, record in enumerate(reader, 2):
            try:
                n, d, loss = (float(record[c]) for c in CSV_COLUMNS)
                c = float(record["flops"]) if record.get("flops") else 6.0 * n * d
                row = dict(trial=f"{path}:{lineno}", budget=float(record["budget"]) if record.get("budget") else c,
                           N=n, D=d, C=c, tokens=d, eval_loss=loss, status="ok")
                if record.get("lr"):
                    row["lr"] = float(record["lr"])
                if record.get("batch_size"):
                    row["batch_size"] = float(record["batch_size"])
            except (TypeError, ValueError):  # TypeError: a short row leaves None in a column
                raise FitError(f"{path}:{lineno}: a value is missing or not a number ({dict(record)}); "
                               "fix that row") from None
            rows.append(row)
    return rows


def usable_rows(rows: list[dict]) -> list[dict]:
    """The rows a fit may use: status "ok" (or no status) with a finite eval_loss.

    Raises FitError for an ok row that lacks budget/N/D/C/eval_loss or has a non-positive one: that is a
    broken results file, not a failed trial.
    """
    kept = []
    for i, row in enumerate(rows):
        loss = row.get("eval_loss")
        if row.get("status", "ok") != "ok" or loss is None or not math.isfinite(loss):
            continue
        name = f"row {i} ({row.get('trial', 'unnamed')})"
        missing = [k for k in REQUIRED_KEYS if row.get(k) is None]
        if missing:
            raise FitError(f"{name} lacks {', '.join(missing)}; every ok row needs {', '.join(REQUIRED_KEYS)}")
        bad = [k for k in REQUIRED_KEYS if not row[k] > 0]
        if bad:
            raise FitError(f"{name} has non-positive {', '.join(bad)}; budgets, sizes, tokens and losses must be > 0")
        kept.append(row)
    return kept


def _seed_means(rows: list[dict]) -> list[dict]:
    """The usable rows with the seeds of each setting (budget, N, lr, batch_size) averaged into one row.

    The best setting must be chosen on mean losses: the minimum over seeds picks the luckiest seed, which
    biases every fitted loss low, and most at settings that were run with more seeds. A merged row is the
    first seed's row with the mean eval_loss and "n_seeds"; a lone row is returned as it is. Rows that
    record no seed but share a setting (a CSV's repeated runs) count as seeds of it too. A setting with
    a diverged seed is left out.
    """
    def setting(row):
        return row.get("budget"), row.get("N"), row.get("lr"), row.get("batch_size")

    # A setting where some seed diverged is unstable: its surviving seeds alone would be the lucky ones.
    unstable = {setting(row) for row in rows if row.get("status") == "diverged"}
    groups = {}
    for row in usable_rows(rows):
        if setting(row) not in unstable:
            groups.setdefault(setting(row), []).append(row)
    return [group[0] if len(group) == 1 else
            {**group[0], "eval_loss": float(np.mean([r["eval_loss"] for r in group])), "n_seeds": len(group)}
            for group in groups.values()]


def best_per_model(rows: list[dict]) -> list[dict]:
    """The lowest-loss setting of each model, keyed by (budget, N): the minimum over the learning-rate and
    batch-size sweep at that scale of the seed-averaged losses (`_seed_means`). Sorted by budget, then N."""
    best = {}
    for row in _seed_means(rows):
        key = (row["budget"], row["N"])
        if key not in best or row["eval_loss"] < best[key]["eval_loss"]:
            best[key] = row
    return [best[key] for key in sorted(best)]


def _model_arrays(rows):
    """best_per_model as arrays: budget, C, N, D, loss (one entry per model) and the rows themselves."""
    models = best_per_model(rows)
    arrays = {k: np.array([m[src] for m in models], float)
              for k, src in (("budget", "budget"), ("C", "C"), ("N", "N"), ("D", "D"), ("loss", "eval_loss"))}
    arrays["rows"] = models
    return arrays


# ---------------------------------------------------------------------------------------------------
# Small numeric helpers


def _plain(x):
    """A JSON-safe float: non-finite values become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _estimate(value, samples):
    """{"value", "low", "high"}: a point estimate and its 95% percentile interval over bootstrap samples."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    low, high = np.percentile(samples, PERCENTILES) if samples.size else (np.nan, np.nan)
    return {"value": _plain(value), "low": _plain(low), "high": _plain(high)}


def _band(grid, center, samples):
    """A curve over `grid` with its pointwise 95% bootstrap band; samples has shape (resamples, len(grid))."""
    samples = np.asarray(samples, float).reshape(-1, len(grid))
    samples = samples[np.isfinite(samples).all(axis=1)]
    if samples.shape[0]:
        low, high = np.percentile(samples, PERCENTILES, axis=0)
    else:
        low = high = np.full(len(grid), np.nan)
    return {"C": [_plain(c) for c in grid], "value": [_plain(v) for v in center],
            "low": [_plain(v) for v in low], "high": [_plain(v) for v in high]}


def _strata(groups):
    """(members, is_profile) per stratum: each budget with >= 2 models, then the one-model budgets pooled.

    A stratum of one model resamples to itself, so with one row per budget (a CSV without a budget
    column) every resample would be the data and every interval zero-width; pooled, those rows are an
    ordinary case bootstrap and the intervals reflect their scatter.
    """
    labels, counts = np.unique(groups, return_counts=True)
    strata = [(np.flatnonzero(groups == g), True) for g in labels[counts > 1]]
    single = np.isin(groups, labels[counts == 1])
    if single.any():
        strata.append((np.flatnonzero(single), False))
    return strata


def _stratified_resamples(groups, n_bootstrap, seed, sizes=None):
    """Index arrays (n_bootstrap, len(groups)) resampling models with replacement within every budget.

    Stratifying by budget keeps every IsoFLOP profile, with its number of models, in every resample (an
    unstratified resample can drop a whole budget); one-model budgets are resampled together (`_strata`).
    With `sizes`, a profile's draw that keeps fewer than 3 distinct sizes (when it had 3) is redrawn, for
    Approach 2: a parabola needs 3 sizes, and with 4-5 models per budget a third of plain draws would
    leave it nothing to fit, so its bootstrap is conditional on every profile staying fittable.
    """
    rng = np.random.default_rng(seed)
    indices = np.empty((n_bootstrap, len(groups)), int)
    for members, is_profile in _strata(groups):
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


def _power_law(logc, logy):
    """(coef, exponent) of y = coef * C^exponent by least squares in log-log space."""
    exponent, intercept = np.polyfit(logc, logy, 1)
    return math.exp(intercept), exponent


def _law_entry(coef, exponent, coef_samples, exponent_samples):
    return {"coef": _estimate(coef, coef_samples), "exponent": _estimate(exponent, exponent_samples)}


def _curve_grid(c_values, target_flops):
    """Log-spaced compute values from the smallest sweep budget to the target (or the largest budget)."""
    hi = max(np.max(c_values), target_flops or 0.0)
    return np.geomspace(np.min(c_values), hi, CURVE_POINTS)


def _one_blas_thread(fn):
    """Run `fn` with BLAS limited to one thread, where threadpoolctl is installed.

    SciPy >= 1.15's L-BFGS-B calls BLAS/LAPACK on 5-element vectors; with a multi-threaded OpenBLAS each
    call waits on its thread pool, which made every start ~10x slower on a busy 2-core machine (scipy
    issue #22438). Nested calls just re-apply the same limit.
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


def _values(params):
    """{name: number} from a "params" dict whose entries may be {"value", "low", "high"} estimates."""
    return {k: (v["value"] if isinstance(v, dict) else v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------
# Public helpers for notebooks: evaluate fitted laws


def frontier_loss(fit: dict, C):
    """The frontier's best loss at compute C: E + (C0/C)^gamma. `fit` is fit_all(...)["frontier"]."""
    p = _values(fit.get("params", fit))
    return p["E"] + (p["C0"] / np.asarray(C, float)) ** p["gamma"]


def power_law(law: dict, C):
    """A fitted power law coef * C^exponent (e.g. fit_all(...)["approach2"]["N_law"]) at compute C."""
    p = _values(law)
    return p["coef"] * np.asarray(C, float) ** p["exponent"]


def predict_loss(fit: dict, N, D):
    """Approach 3's L(N, D) = E + A/N^alpha + B/D^beta. `fit` is fit_all(...)["approach3"] or its params."""
    p = _values(fit.get("params", fit))
    N, D = np.asarray(N, float), np.asarray(D, float)
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def compute_optimal(fit: dict, C):
    """Approach 3's compute-optimal (N_opt, D_opt) under C = 6 N D (Hoffmann et al. eq. 4):
    N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)), D_opt = C / (6 N_opt)."""
    p = _values(fit.get("params", fit))
    return _optimal_allocation(p["A"], p["B"], p["alpha"], p["beta"], np.asarray(C, float))


def _optimal_allocation(A, B, alpha, beta, C):
    A, B, alpha, beta = (np.float64(v) for v in (A, B, alpha, beta))  # numpy floats: nan, not ZeroDivisionError
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # alpha or beta = 0: no optimum
        G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        n_opt = G * (C / 6.0) ** (beta / (alpha + beta))
        return n_opt, C / (6.0 * n_opt)


# ---------------------------------------------------------------------------------------------------
# Frontier: best loss per budget, L(C) = E + (C0/C)^gamma


def _frontier_points(budget, loss):
    """Indices of the frontier: per budget its best model, kept only if it beats every smaller budget.

    The Pareto filter drops a budget whose best loss is no better than a cheaper one (a sweep that missed
    its optimum there); it also makes a CSV with one row per budget usable, as its lower envelope.
    """
    best = [np.flatnonzero(budget == b)[np.argmin(loss[budget == b])] for b in np.unique(budget)]
    kept, record = [], np.inf
    for i in best:  # budgets ascending
        if loss[i] < record:
            kept.append(i)
            record = loss[i]
    return np.array(kept, int), len(best) - len(kept)


def _fit_frontier_points(c, loss, start=None):
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


def _residual_resamples(fitted, observed, n_bootstrap, seed, n_params=3):
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


@_one_blas_thread
def fit_frontier(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                 seed: int = 0) -> dict:
    """The loss frontier L(C) = E + (C0/C)^gamma through each budget's best loss (at its realised C).

    Returns {"points": [{budget, C, loss, trial}], "params": {E, C0, gamma: estimate}, "at_target":
    {"loss": estimate} (with target_flops), "curve": band from the smallest budget to the target,
    "n_bootstrap": resamples that fitted, "dropped": budgets not on the Pareto frontier}; an estimate is
    {"value", "low", "high"} with a 95% interval from a residual bootstrap (`_residual_resamples`; none
    with exactly 3 points, which the curve fits exactly). Raises FitError with fewer than 3 frontier points.
    """
    m = _model_arrays(rows)
    idx, dropped = _frontier_points(m["budget"], m["loss"])
    if idx.size < 3:
        raise FitError(f"need >= 3 budgets on the loss frontier to fit E, C0 and gamma, got {idx.size}")
    front_c, front_loss = m["C"][idx], m["loss"][idx]
    e, c0, gamma = _fit_frontier_points(front_c, front_loss)
    grid = _curve_grid(m["C"], target_flops)

    def curve(p, c):
        return p[0] + (p[1] / c) ** p[2]

    # Warm start from the point estimate: a resampled frontier is a perturbation of the observed one.
    resamples = _residual_resamples(curve((e, c0, gamma), front_c), front_loss, n_bootstrap, seed)
    samples = np.array([_fit_frontier_points(front_c, loss, (e, c0, gamma)) for loss in resamples]).reshape(-1, 3)

    out = {
        "points": [{"budget": float(m["budget"][i]), "C": float(m["C"][i]), "loss": float(m["loss"][i]),
                    "trial": m["rows"][i].get("trial")} for i in idx],
        "params": {name: _estimate(v, samples[:, k]) for k, (name, v) in enumerate((("E", e), ("C0", c0),
                                                                                      ("gamma", gamma)))},
        "curve": _band(grid, curve((e, c0, gamma), grid), [curve(p, grid) for p in samples]),
        "n_bootstrap": len(samples),
        "dropped": int(dropped),
    }
    if target_flops:
        out["at_target"] = {"loss": _estimate(curve((e, c0, gamma), target_flops),
                                              [curve(p, target_flops) for p in samples])}
    return out


# ---------------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas


def _isoflop_vertices(budget, C, N, loss):
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


def _approach2_laws(vertices):
    """(N coef, N exponent, D coef, D exponent) from the "ok" vertices, or None with fewer than 3."""
    ok = [v for v in vertices if v["status"] == "ok"]
    if len(ok) < 3:
        return None
    logc = np.log([v["C"] for v in ok])
    return (*_power_law(logc, np.log([v["N_opt"] for v in ok])), *_power_law(logc, np.log([v["D_opt"] for v in ok])))


@_one_blas_thread
def fit_approach2(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200,
                  seed: int = 0) -> dict:
    """Chinchilla Approach 2: IsoFLOP parabolas, then N*(C) = coef C^exponent and D*(C) likewise.

    Returns {"budgets": [{budget, C, N_opt, D_opt, status, N_range, n_models, coef, N_opt_interval}],
    "N_law", "D_law": {"coef", "exponent": estimate}, "at_target": {N, D, tokens_per_param: estimate},
    "curve": {"N": band, "D": band}, "n_bootstrap"}. Raises FitError unless >= 3 budgets with >= 3 models
    each have a convex parabola whose vertex lies inside the sampled sizes.
    """
    m = _model_arrays(rows)
    vertices = _isoflop_vertices(m["budget"], m["C"], m["N"], m["loss"])
    laws = _approach2_laws(vertices)
    if laws is None:
        counts = {float(b): int(np.unique(m["N"][m["budget"] == b]).size) for b in np.unique(m["budget"])}
        flagged = {v["budget"]: v["status"] for v in vertices if v["status"] != "ok"}
        raise FitError(f"need >= 3 budgets with >= 3 models each and an interior parabola vertex for Approach 2, "
                       f"got models per budget {counts}" + (f" and flagged vertices {flagged}" if flagged else ""))
    grid = _curve_grid(m["C"], target_flops)

    law_samples, vertex_samples = [], {v["budget"]: [] for v in vertices}
    for resample in _stratified_resamples(m["budget"], n_bootstrap, seed, sizes=m["N"]):
        resampled = _isoflop_vertices(m["budget"][resample], m["C"][resample], m["N"][resample], m["loss"][resample])
        for v in resampled:
            vertex_samples[v["budget"]].append(v["N_opt"])
        sample = _approach2_laws(resampled)
        if sample is not None:
            law_samples.append(sample)
    law_samples = np.array(law_samples).reshape(-1, 4)

    for v in vertices:
        v["N_opt_interval"] = _estimate(v["N_opt"], vertex_samples[v["budget"]])
    n_coef, n_exp, d_coef, d_exp = laws
    out = {
        "budgets": vertices,
        "N_law": _law_entry(n_coef, n_exp, law_samples[:, 0], law_samples[:, 1]),
        "D_law": _law_entry(d_coef, d_exp, law_samples[:, 2], law_samples[:, 3]),
        "curve": {"N": _band(grid, n_coef * grid**n_exp, [s[0] * grid ** s[1] for s in law_samples]),
                  "D": _band(grid, d_coef * grid**d_exp, [s[2] * grid ** s[3] for s in law_samples])},
        "n_bootstrap": len(law_samples),
    }
    if target_flops:
        n_t = law_samples[:, 0] * target_flops ** law_samples[:, 1]
        d_t = law_samples[:, 2] * target_flops ** law_samples[:, 3]
        n_hat, d_hat = n_coef * target_flops**n_exp, d_coef * target_flops**d_exp
        out["at_target"] = {"N": _estimate(n_hat, n_t), "D": _estimate(d_hat, d_t),
                            "tokens_per_param": _estimate(d_hat / n_hat, d_t / n_t)}
    return out


# ---------------------------------------------------------------------------------------------------
# Approach 3: the parametric loss surface


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


@_one_blas_thread
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


def _surface_params(result):
    a, b, e, alpha, beta = result.x
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha), "beta": float(beta),
            "objective": float(result.fun), "theta": [float(v) for v in result.x]}


@_one_blas_thread
def fit_approach3(rows: list[dict], target_flops: float | None = None, n_bootstrap: int = 200, seed: int = 0,
                  n_starts: int | None = 100) -> dict:
    """Chinchilla Approach 3 on each model's best loss, with bootstrap intervals.

    Returns {"params": {E, A, B, alpha, beta, G, a, b: estimate} (a = beta/(alpha+beta) and
    b = alpha/(alpha+beta) are the exponents of N_opt and D_opt in C), "objective", "n_points",
    "at_target": {N, D, tokens_per_param, loss: estimate} (loss = L(N_opt, D_opt)), "curve": {"N": band,
    "D": band}, "n_bootstrap", "at_bound": names of parameters stuck at a box bound}. Raises FitError with
    fewer than 6 models or fewer than 2 distinct N or D.
    """
    m = _model_arrays(rows)
    if len(m["N"]) < 6 or np.unique(m["N"]).size < 2 or np.unique(m["D"]).size < 2:
        raise FitError(f"need >= 6 models with >= 2 distinct sizes and token counts for Approach 3, got "
                       f"{len(m['N'])} models, {np.unique(m['N']).size} sizes, {np.unique(m['D']).size} token counts")
    log_n, log_d, log_l = np.log(m["N"]), np.log(m["D"]), np.log(m["loss"])
    fit = fit_loss_surface(m["N"], m["D"], m["loss"], n_starts=n_starts)
    c_grid = _curve_grid(m["C"], target_flops)

    def derived(p):
        """Every reported quantity of one parameter set, as a flat tuple."""
        E, A, B, alpha, beta = p
        n_1, _ = _optimal_allocation(A, B, alpha, beta, 6.0)  # N_opt at C/6 = 1 is G
        scalars = [E, A, B, alpha, beta, n_1, beta / (alpha + beta), alpha / (alpha + beta)]
        if target_flops:
            n_t, d_t = _optimal_allocation(A, B, alpha, beta, target_flops)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                scalars += [n_t, d_t, d_t / n_t, E + A / n_t**alpha + B / d_t**beta]
        n_c, d_c = _optimal_allocation(A, B, alpha, beta, c_grid)
        return np.array(scalars), n_c, d_c

    point = derived([fit[k] for k in ("E", "A", "B", "alpha", "beta")])
    samples = []
    # The bootstrap warm-starts L-BFGS-B from the point estimate instead of rerunning the whole grid per
    # resample (4500 starts x 200 resamples is too slow); a resample is a small perturbation of the data,
    # so its optimum lies in the point estimate's basin.
    for resample in _stratified_resamples(m["budget"], n_bootstrap, seed):
        result = _minimise_huber([fit["theta"]], log_n[resample], log_d[resample], log_l[resample], HUBER_DELTA)
        # Not `result.success`: a line search that stalls at the optimum (the Huber kink) reports ABNORMAL.
        if np.isfinite(result.fun):
            p = _surface_params(result)
            samples.append(derived([p[k] for k in ("E", "A", "B", "alpha", "beta")]))

    names = ["E", "A", "B", "alpha", "beta", "G", "a", "b"]
    scalars = np.array([s[0] for s in samples]).reshape(-1, len(point[0]))
    out = {
        "params": {name: _estimate(point[0][k], scalars[:, k]) for k, name in enumerate(names)},
        "objective": fit["objective"],
        "n_points": len(m["N"]),
        "curve": {"N": _band(c_grid, point[1], [s[1] for s in samples]),
                  "D": _band(c_grid, point[2], [s[2] for s in samples])},
        "n_bootstrap": len(samples),
        "at_bound": [name for name, v, (lo, hi) in zip(("a", "b", "e", "alpha", "beta"), fit["theta"],
                                                       APPROACH3_BOUNDS) if v <= lo + 1e-6 or v >= hi - 1e-6],
    }
    if target_flops:
        out["at_target"] = {name: _estimate(point[0][k], scalars[:, k])
                            for k, name in enumerate(("N", "D", "tokens_per_param", "loss"), start=len(names))}
    return out


# ---------------------------------------------------------------------------------------------------
# Backtest


@_one_blas_thread
def backtest(rows: list[dict], n_starts: int | None = 100) -> dict:
    """Refit without the largest budget and predict that budget's best loss.

    The frontier predicts L(C) at the held-out best model's realised C; Approach 3 predicts the lowest
    L_hat(N, D) over the held-out budget's models (the best loss that design is expected to reach).
    Returns {"held_out_budget", "observed", "frontier": {predicted, error, rel_error} or {"skipped": why},
    "approach3": likewise}; error = predicted - observed. Raises FitError with fewer than 2 budgets.
    """
    m = _model_arrays(rows)
    budgets = np.unique(m["budget"])
    if budgets.size < 2:
        raise FitError(f"need >= 2 budgets to hold one out for the backtest, got {budgets.size}")
    held = budgets[-1]
    train_rows = [r for r in usable_rows(rows) if r["budget"] != held]
    sel = m["budget"] == held
    best = np.argmin(np.where(sel, m["loss"], np.inf))
    observed = float(m["loss"][best])

    def entry(predicted):
        return {"predicted": float(predicted), "error": float(predicted - observed),
                "rel_error": float((predicted - observed) / observed)}

    out = {"held_out_budget": float(held), "observed": observed, "trial": m["rows"][best].get("trial")}
    try:
        t = _model_arrays(train_rows)
        idx, _ = _frontier_points(t["budget"], t["loss"])
        if idx.size < 3:
            raise FitError(f"need >= 3 frontier budgets below the held-out one, got {idx.size}")
        e, c0, gamma = _fit_frontier_points(t["C"][idx], t["loss"][idx])
        out["frontier"] = entry(e + (c0 / m["C"][best]) ** gamma)
    except FitError as err:
        out["frontier"] = {"skipped": str(err)}
    try:
        fit = fit_approach3(train_rows, n_bootstrap=0, n_starts=n_starts)
        out["approach3"] = entry(np.min(predict_loss(fit, m["N"][sel], m["D"][sel])))
    except FitError as err:
        out["approach3"] = {"skipped": str(err)}
    return out


# ---------------------------------------------------------------------------------------------------
# Hyperparameter laws (DeepSeek LLM form)


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
    for r in _seed_means(rows):  # a setting's loss is its mean over seeds, as in best_per_model
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


@_one_blas_thread
def fit_hyperparameter_law(rows: list[dict], key: str = "lr", target_flops: float | None = None,
                           n_bootstrap: int = 200, seed: int = 0) -> dict:
    """DeepSeek LLM's law for the best `key` ("lr" or "batch_size"): value*(C) = coef * C^exponent.

    Per budget the best value comes from the sweep at the best model whose `key` was swept (see
    `_best_setting`). The bootstrap resamples budgets (the regression's cases): each per-budget optimum
    is one noisy measurement, and the scatter of those optima about the line is the law's uncertainty.
    Returns {"budgets": [{budget, C, N, value, method, swept}], "law": {coef, exponent: estimate},
    "at_target": estimate, "curve": band, "n_bootstrap"}. Raises FitError when fewer than 3 budgets
    swept `key`.
    """
    optima = _per_budget_optima(rows, key)
    if not optima:
        raise FitError(f"{key} was not swept (no model was trained with >= 2 values of it), so it has no law")
    if len(optima) < 3:
        raise FitError(f"need >= 3 budgets that swept >= 2 values of {key} for its law, got {len(optima)}")
    logc = np.log([o["C"] for o in optima])
    logv = np.log([o["value"] for o in optima])
    coef, exponent = _power_law(logc, logv)
    rng = np.random.default_rng(seed)
    samples = []
    for pick in rng.integers(0, len(optima), size=(n_bootstrap, len(optima))):
        if np.unique(logc[pick]).size >= 2:  # a line needs two distinct budgets
            samples.append(_power_law(logc[pick], logv[pick]))
    samples = np.array(samples).reshape(-1, 2)
    grid = _curve_grid(np.exp(logc), target_flops)
    out = {"budgets": optima, "law": _law_entry(coef, exponent, samples[:, 0], samples[:, 1]),
           "curve": _band(grid, coef * grid**exponent, [s[0] * grid ** s[1] for s in samples]),
           "n_bootstrap": len(samples)}
    if target_flops:
        out["at_target"] = _estimate(coef * target_flops**exponent, samples[:, 0] * target_flops ** samples[:, 1])
    return out


# ---------------------------------------------------------------------------------------------------
# Everything at once


@_one_blas_thread
def fit_all(rows: list[dict], target_flops: float, n_bootstrap: int = 200, seed: int = 0,
            n_starts: int | None = 100) -> dict:
    """Every fit of this module on a sweep's rows, as one JSON-serialisable dict.

    An estimate is {"value", "low", "high"} (95% percentile bootstrap interval, `n_bootstrap` resamples
    seeded by `seed`); a band is {"C": [...], "value": [...], "low": [...], "high": [...]}. Keys:
      n_rows           {"total", "fitted" (status ok, finite loss), "excluded", "models", "budgets"}
      target_flops     the compute the predictions are for
      frontier         fit_frontier's dict (E, C0, gamma, the loss at target_flops) or None
      approach2        fit_approach2's dict (IsoFLOP vertices per budget, N*(C) and D*(C) laws) or None
      approach3        fit_approach3's dict (E, A, B, alpha, beta, the optimum at target_flops) or None
      backtest         backtest's dict or None
      hyperparameters  {"lr": fit_hyperparameter_law(key="lr") or None, "batch_size": ... or None}
      recommendation   at target_flops: N, D, tokens_per_param, loss, lr, batch_size, each an estimate
                       plus "source" (the fit it came from), or None where no fit gives it
      notes            one sentence per fit that could not be made or needs attention
    A fit that cannot be made is None with its reason in notes; nothing here raises for too little data.
    """
    if not (isinstance(target_flops, (int, float)) and target_flops > 0):
        raise FitError(f"target_flops={target_flops!r}: must be a positive number of training FLOPs, e.g. 1e21")
    fitted = usable_rows(rows)
    notes = []
    models = best_per_model(fitted)
    n_rows = {"total": len(rows), "fitted": len(fitted), "excluded": len(rows) - len(fitted),
              "models": len(models), "budgets": len({m["budget"] for m in models})}
    if n_rows["excluded"]:
        notes.append(f"{n_rows['excluded']} of {len(rows)} rows excluded (status not ok or non-finite eval_loss).")

    def attempt(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FitError as err:
            notes.append(f"{name}: {err}.")
            return None

    boot = dict(n_bootstrap=n_bootstrap, seed=seed)
    frontier = attempt("frontier", fit_frontier, fitted, target_flops, **boot)
    approach2 = attempt("approach2", fit_approach2, fitted, target_flops, **boot)
    approach3 = attempt("approach3", fit_approach3, fitted, target_flops, n_starts=n_starts, **boot)
    back = attempt("backtest", backtest, fitted, n_starts=n_starts)
    hyper = {key: attempt(f"hyperparameters[{key}]", fit_hyperparameter_law, fitted, key, target_flops, **boot)
             for key in ("lr", "batch_size")}

    if frontier and frontier["dropped"]:
        notes.append(f"frontier: {frontier['dropped']} budget(s) left out: their best loss was no better than a "
                     "smaller budget's.")
    if approach2:
        flagged = [f"{v['budget']:.3g} ({v['status']})" for v in approach2["budgets"] if v["status"] != "ok"]
        if flagged:
            notes.append(f"approach2: vertices left out of the laws: {', '.join(flagged)}; re-centre those "
                         "profiles on the optimum.")
    if approach3 and approach3["at_bound"]:
        notes.append(f"approach3: {', '.join(approach3['at_bound'])} at the bound of the search box: these rows do "
                     "not identify the surface, so the recommendation does not use its optimum.")
    for key, law in hyper.items():
        edge = [f"{o['budget']:.3g}" for o in (law["budgets"] if law else ())
                if not o["swept"][0] * (1 + 1e-9) < o["value"] < o["swept"][-1] * (1 - 1e-9)]
        if edge:
            notes.append(f"hyperparameters[{key}]: the best {key} is at the edge of the swept values at budget(s) "
                         f"{', '.join(edge)}; widen the sweep there.")
    if frontier and len(frontier["points"]) == 3:
        notes.append("frontier: its 3 points fix E, C0 and gamma exactly, leaving no residuals to bootstrap, so it "
                     "has no interval; a 4th budget gives one.")
    elif frontier and frontier["n_bootstrap"] < 0.9 * n_bootstrap:
        notes.append(f"frontier: only {frontier['n_bootstrap']} of {n_bootstrap} bootstrap resamples could be fitted.")
    for name, section in (("approach2", approach2), ("approach3", approach3)):
        if section and section["n_bootstrap"] < 0.9 * n_bootstrap:
            notes.append(f"{name}: only {section['n_bootstrap']} of {n_bootstrap} bootstrap resamples could be fitted.")

    return {
        "n_rows": n_rows,
        "target_flops": float(target_flops),
        "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "n_starts": n_starts, "huber_delta": HUBER_DELTA},
        "frontier": frontier,
        "approach2": approach2,
        "approach3": approach3,
        "backtest": back,
        "hyperparameters": hyper,
        "recommendation": _recommend(target_flops, frontier, approach2, approach3, hyper, notes),
        "notes": notes,
    }


def _recommend(target_flops, frontier, approach2, approach3, hyper, notes):
    """The numbers to train at target_flops, each from the most complete fit that gives it.

    Approach 3 comes first: it models the whole surface, so its N*, D* and loss are one consistent
    optimum; Approach 2 (N*, D*) and the frontier (loss) stand in when it could not be fitted.
    """
    def pick(*candidates):
        for source, section, key in candidates:
            entry = (section or {}).get("at_target", {}).get(key)
            if entry and entry["value"] is not None:
                return {**entry, "source": source}
        return None

    if approach3 and approach3["at_bound"]:
        approach3 = None  # not identified (see its note): its optimum would be an artefact of the search box

    rec = {"target_flops": float(target_flops)}
    for key in ("N", "D", "tokens_per_param"):
        rec[key] = pick(("approach3", approach3, key), ("approach2", approach2, key))
    rec["loss"] = pick(("approach3", approach3, "loss"), ("frontier", frontier, "loss"))
    for key in ("lr", "batch_size"):
        law = hyper[key]
        rec[key] = {**law["at_target"], "source": f"hyperparameters[{key}]"} if law else None
    missing = [k for k, v in rec.items() if v is None]
    if missing:
        notes.append(f"recommendation: no fit gives {', '.join(missing)}.")
    return rec
