"""Honest intervals (gptjax/scaling/fit/): measured noise, the parametric bootstrap drawn from it, failed
resamples counted, fits that say whether they are identified, and predictions with intervals."""

import json
import math

import numpy as np
import pytest

from gptjax.scaling import fit as F
from gptjax.scaling.fit import frontier as frontier_module
from gptjax.scaling.fit.bootstrap import Estimate
from test_fit import CHINCHILLA, frontier_rows, isoflop_rows, lr_sweep_rows


def with_seeds(rows, spread):
    """Each row as two seeds whose losses are its loss -/+ spread: the seed mean is the row, the pooled seed
    SD is spread * sqrt(2) and each mean's noise SD is spread."""
    return [dict(r, seed=s, eval_loss=r["eval_loss"] + sign * spread) for r in rows for s, sign in ((0, -1), (1, 1))]


def test_measure_noise_pools_the_seed_spread_of_every_seeded_setting():
    base = dict(C=1e18, D=1e10, status="ok")
    rows = [dict(base, budget=1e18, N=1e6, lr=1e-3, seed=0, eval_loss=1.0, eval_loss_se=0.01),
            dict(base, budget=1e18, N=1e6, lr=1e-3, seed=1, eval_loss=1.2, eval_loss_se=0.03),
            dict(base, budget=1e18, N=2e6, lr=1e-3, seed=0, eval_loss=2.0, eval_loss_se=0.02),
            dict(base, budget=1e18, N=2e6, lr=1e-3, seed=1, eval_loss=2.1),
            dict(base, budget=1e18, N=2e6, lr=1e-3, seed=2, eval_loss=2.2),
            dict(base, budget=1e18, N=4e6, lr=1e-3, seed=0, eval_loss=9.0),  # one seed: no spread to measure
            # A setting where a seed diverged is left out, as the fits leave it out.
            dict(base, budget=1e18, N=8e6, lr=1e-3, seed=0, eval_loss=5.0),
            dict(base, budget=1e18, N=8e6, lr=1e-3, seed=1, eval_loss=math.nan, status="diverged")]
    noise = F.measure_noise(rows)
    # Squared deviations 0.02 + 0.02 over 1 + 2 degrees of freedom.
    assert noise == {"seed_sd": pytest.approx(math.sqrt(0.04 / 3)), "seed_dof": 3, "n_seeded_settings": 2,
                     "eval_se": pytest.approx(0.02)}
    # A model's point averages its seeds but keeps the shared validation set's error.
    means = {m["N"]: m for m in F.best_per_model(rows)}
    assert F.loss_sd([means[1e6], means[4e6]], noise) == pytest.approx(
        [math.sqrt(0.04 / 3 / 2 + 0.02**2), math.sqrt(0.04 / 3 + 0.02**2)])

    # Many settings with a known seed spread: the pooled SD recovers it.
    rng = np.random.default_rng(0)
    many = [dict(base, budget=1e18, N=float(n), lr=1e-3, seed=s, eval_loss=3.0 + 0.1 * n + 0.02 * rng.standard_normal())
            for n in range(1, 41) for s in range(3)]
    noise = F.measure_noise(many)
    assert noise["seed_dof"] == 80 and noise["n_seeded_settings"] == 40 and noise["eval_se"] is None
    assert noise["seed_sd"] == pytest.approx(0.02, rel=0.2)
    # Nothing measured: no seeds, no eval SE.
    none = F.measure_noise(frontier_rows([1e14, 1e15]))
    assert none == {"seed_sd": None, "seed_dof": 0, "n_seeded_settings": 0, "eval_se": None}
    assert F.loss_sd(F.best_per_model(frontier_rows([1e14, 1e15])), none) is None


def test_parametric_interval_widens_with_the_measured_noise_and_is_seeded():
    budgets = list(np.geomspace(1e14, 1e19, 6))
    fits = {spread: F.fit_frontier(with_seeds(frontier_rows(budgets), spread), 1e21, n_bootstrap=200, seed=0)
            for spread in (0.002, 0.01)}
    width = {}
    for spread, fit in fits.items():
        gamma = fit["params"]["gamma"]
        assert fit["bootstrap"] == "parametric" and fit["identified"], fit["reason"]
        assert gamma.low <= 0.15 <= gamma.high, gamma
        width[spread] = gamma.high - gamma.low
    # Exact points, so no residual scatter: the interval is the measured noise's, 5x the noise ~5x as wide.
    assert 3 < width[0.01] / width[0.002] < 8, width
    again = F.fit_frontier(with_seeds(frontier_rows(budgets), 0.002), 1e21, n_bootstrap=200, seed=0)
    assert again["params"] == fits[0.002]["params"]

    # The same for Approach 3 and the lr law, with the noise given by each run's eval-loss SE.
    surface = {se: F.fit_approach3([dict(r, eval_loss_se=se) for r in isoflop_rows(np.geomspace(1e18, 1e21, 5), 7, 30)],
                                   1e23, n_bootstrap=40, n_starts=20) for se in (0.0005, 0.003)}
    alpha = {se: s["params"]["alpha"] for se, s in surface.items()}
    assert all(s["bootstrap"] == "parametric" for s in surface.values())
    assert alpha[0.003].high - alpha[0.003].low > 2 * (alpha[0.0005].high - alpha[0.0005].low), alpha
    lr_rows = lr_sweep_rows(list(np.geomspace(1e17, 1e20, 5)))
    laws = {se: F.fit_hyperparameter_law([dict(r, eval_loss_se=se) for r in lr_rows], "lr", 1e22, n_bootstrap=200)
            for se in (0.001, 0.01)}
    exponent = {se: law["law"]["exponent"] for se, law in laws.items()}
    assert all(law["bootstrap"] == "parametric" for law in laws.values())
    assert exponent[0.001].low <= -0.125 <= exponent[0.001].high, exponent
    assert exponent[0.01].high - exponent[0.01].low > 2 * (exponent[0.001].high - exponent[0.001].low), exponent


def failing_frontier_fits(monkeypatch, every):
    """Make every `every`-th resample's frontier fit raise (the point fit, the first call, is kept)."""
    real, calls = frontier_module.fit_frontier_points, []

    def flaky(c, loss, start=None, form=frontier_module.FREE_E):
        calls.append(start)
        if start is not None and len(calls) % every == 0:
            raise ValueError("planted failure")
        return real(c, loss, start, form)

    monkeypatch.setattr(frontier_module, "fit_frontier_points", flaky)


def test_half_the_resamples_failing_leaves_the_interval_unbounded_and_the_fit_not_identified(monkeypatch):
    rows = frontier_rows(list(np.geomspace(1e14, 1e19, 6)), noise=0.003, seed=1)
    failing_frontier_fits(monkeypatch, every=2)
    fit = F.fit_frontier(rows, 1e21, n_bootstrap=200, seed=0)
    assert fit["n_bootstrap"] == 200 and fit["n_failed"] == 100 and len(fit["draws"].params) == 100
    for estimate in (*fit["params"].values(), fit["at_target"]["loss"]):
        assert estimate.low is None and estimate.high is None and estimate.value is not None
    assert not fit["identified"] and "100 of 200 bootstrap resamples failed" in fit["reason"]


def test_a_few_failed_resamples_widen_the_interval_over_dropping_them(monkeypatch):
    rows = frontier_rows(list(np.geomspace(1e14, 1e19, 6)), noise=0.003, seed=1)
    failing_frontier_fits(monkeypatch, every=33)  # 6 of 200: 3%
    fit = F.fit_frontier(rows, 1e21, n_bootstrap=200, seed=0)
    assert fit["n_failed"] == 6
    gamma = fit["params"]["gamma"]
    dropped = Estimate.from_samples(gamma.value, fit["draws"].params[:, 2])
    assert gamma.low < dropped.low and gamma.high > dropped.high, (gamma, dropped)
    assert fit["identified"], fit["reason"]  # <= 5% failed: still identified


def no_data_dependence_rows():
    """IsoFLOP profiles of L = E + A/N^alpha: the loss does not depend on D, so beta is not identified."""
    rng = np.random.default_rng(0)
    rows = []
    for c in np.geomspace(1e18, 1e21, 5):
        n_opt, _ = F.compute_optimal(CHINCHILLA, c)
        for n in n_opt * np.geomspace(0.2, 5, 5):
            loss = (1.69 + 406.4 / n**0.34) * math.exp(0.002 * rng.standard_normal())
            rows.append(dict(trial=f"{c:.3g}-{n:.3g}", budget=float(c), C=float(c), N=float(n), D=float(c / (6 * n)),
                             eval_loss=float(loss), status="ok"))
    return rows


def test_approach3_at_a_bound_is_not_identified_and_not_recommended():
    fits = F.fit_all(no_data_dependence_rows(), target_flops=1e22, n_bootstrap=50, n_starts=20)
    a3 = fits["approach3"]
    assert a3["at_bound"] == ["beta"] and not a3["identified"], a3["reason"]
    assert "beta at the lower bound of its search box" in a3["reason"]
    rec = fits["recommendation"]
    assert all(rec[key] is None or rec[key]["source"] != "approach3" for key in ("N", "D", "tokens_per_param", "loss"))
    assert rec["N"] is None and rec["loss"]["source"] == "frontier" and fits["frontier"]["identified"]
    assert any(n.startswith("recommendation: no identified fit gives N, D, tokens_per_param (approach3 is not "
                            "identified") for n in fits["notes"])
    # Every fit carries the verdict, the scheme and its counts.
    for section in (fits["frontier"], a3, fits["backtest"]["frontier"], fits["backtest"]["approach3"]):
        assert isinstance(section["identified"], bool) and section["reason"].endswith(".")
    assert (fits["frontier"]["bootstrap"], a3["bootstrap"]) == ("residuals", "cases")
    assert a3["n_bootstrap"] == 50 and a3["n_failed"] == 0


def test_predict_with_interval_uses_approach3_draws_else_the_frontier():
    rows = [dict(r, eval_loss_se=0.002 * r["eval_loss"])
            for r in isoflop_rows(np.geomspace(1e18, 1e21, 5), per_budget=7, spread=30, noise=0.002)]
    fits = F.fit_all(rows, target_flops=1e23, n_bootstrap=50, n_starts=20)
    a3 = fits["approach3"]
    assert a3["identified"] and a3["bootstrap"] == "parametric", a3["reason"]
    n, d = 3e9, 6e10
    pred = F.predict_with_interval(fits, N=n, D=d)
    assert pred["source"] == "approach3" and pred["value"] == pytest.approx(float(F.predict_loss(a3, n, d)))
    assert pred["low"] < pred["value"] < pred["high"] and pred["high"] - pred["low"] < 0.05
    assert pred["low"] <= F.predict_loss(CHINCHILLA, n, d) <= pred["high"]
    # Given only C, the frontier predicts.
    by_c = F.predict_with_interval(fits, C=1e22)
    p = {k: v["value"] for k, v in fits["frontier"]["params"].items()}
    assert by_c["source"] == "frontier" and by_c["value"] == pytest.approx(p["E"] + (p["C0"] / 1e22) ** p["gamma"])
    # fits.json read back has no draws: it says where they are instead of inventing an interval.
    with pytest.raises(F.FitError, match="in memory"):
        F.predict_with_interval(json.loads(json.dumps(fits)), N=n, D=d)

    # Approach 3 not identified: the frontier at C = 6 N D.
    fits = F.fit_all(no_data_dependence_rows(), target_flops=1e22, n_bootstrap=50, n_starts=20)
    pred = F.predict_with_interval(fits, N=n, D=d)
    assert pred["source"] == "frontier" and pred == {**F.predict_with_interval(fits, C=6 * n * d), "source": "frontier"}
