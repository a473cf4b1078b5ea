"""Scaling-law fits (gptjax/scaling/fit/) on synthetic sweeps whose true laws are known."""

import csv
import itertools
import json
import math

import numpy as np
import pytest

from gptjax.scaling import fit as F
from gptjax.scaling.fit.bootstrap import Estimate, residual_resamples, stratified_resamples, to_json

# Hoffmann et al. 2022's published fit of L(N, D).
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def isoflop_rows(budgets, per_budget, spread, noise=0.0, seed=0, law=CHINCHILLA):
    """One row per model: `per_budget` sizes per budget, log-spaced over a `spread`x range centred on
    the law's compute-optimal N, with multiplicative log-normal noise of relative size `noise`."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt, _ = F.compute_optimal(law, c)
        for n in n_opt * np.geomspace(spread**-0.5, spread**0.5, per_budget):
            d = c / (6 * n)
            loss = F.predict_loss(law, n, d) * math.exp(noise * rng.standard_normal())
            rows.append(dict(trial=f"c{c:.3g}-n{n:.4g}", budget=float(c), C=float(c), N=float(n), D=float(d),
                             eval_loss=float(loss), status="ok"))
    return rows


def test_approach3_recovers_chinchilla_and_its_intervals_cover_the_truth():
    budgets = np.geomspace(1e18, 1e21, 7)
    rows = isoflop_rows(budgets, per_budget=9, spread=30, noise=0.002, seed=0)
    fit = F.fit_approach3(rows, target_flops=1e23, n_bootstrap=200, seed=0, n_starts=30)
    p = fit["params"]
    for name, tol in (("E", 0.02), ("alpha", 0.02), ("beta", 0.02)):
        assert abs(p[name].value - CHINCHILLA[name]) < tol, (name, p[name])
        assert p[name].low <= CHINCHILLA[name] <= p[name].high, (name, p[name])
        # An interval that covers because it is vacuous would not test the bootstrap.
        assert p[name].high - p[name].low < 4 * tol, (name, p[name])
    assert fit["n_bootstrap"] >= 180
    # The allocation at the target follows from the fitted parameters.
    n_t, d_t = F.compute_optimal(fit, 1e23)
    assert fit["at_target"]["N"].value == pytest.approx(n_t)
    assert fit["at_target"]["tokens_per_param"].value == pytest.approx(d_t / n_t)
    # ... and its interval, 100x beyond the largest budget, holds the true optimum and its loss.
    n_true, d_true = F.compute_optimal(CHINCHILLA, 1e23)
    at = fit["at_target"]
    assert at["N"].low <= n_true <= at["N"].high and at["N"].high / at["N"].low < 1.3, at["N"]
    assert at["loss"].low <= F.predict_loss(CHINCHILLA, n_true, d_true) <= at["loss"].high, at["loss"]


def test_loss_surface_exact_on_noiseless_points_and_optimum_minimises_the_isoflop_curve():
    rows = isoflop_rows([1e18, 1e19, 1e20, 1e21], per_budget=7, spread=30)
    n, d, loss = (np.array([r[k] for r in rows]) for k in ("N", "D", "eval_loss"))
    fit = F.fit_loss_surface(n, d, loss, n_starts=30)
    for name, true in CHINCHILLA.items():
        assert fit[name] == pytest.approx(true, rel=2e-3), name
    # N_opt from the closed form is the minimum of L(N, C/(6N)) found by brute force.
    c = 3e22
    n_opt, d_opt = F.compute_optimal(CHINCHILLA, c)
    grid = n_opt * np.geomspace(0.5, 2, 2001)
    assert grid[np.argmin(F.predict_loss(CHINCHILLA, grid, c / (6 * grid)))] == pytest.approx(n_opt, rel=2e-3)
    assert 6 * n_opt * d_opt == pytest.approx(c)


def parabola_rows(budgets, exponent=0.5, coef=0.1, ratios=(1 / 8, 1 / 3, 1, 3, 8), shift=None, noise=0.0, seed=0):
    """IsoFLOP profiles that are exact parabolas in log N with the vertex at N* = coef C^exponent;
    `shift` = {budget: factor} moves a profile's sampled sizes off its optimum; `noise` is the relative
    size of multiplicative log-normal noise on each loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_star = coef * c**exponent
        for r in ratios:
            n = n_star * r * (shift or {}).get(c, 1.0)
            loss = (2.0 + 5.0 * c**-0.1 + 0.05 * math.log(n / n_star) ** 2) * math.exp(noise * rng.standard_normal())
            rows.append(dict(trial=f"{c:.3g}-{r:.3g}", budget=c, C=c, N=n, D=c / (6 * n), eval_loss=loss, status="ok"))
    return rows


def test_approach2_recovers_the_optimum_exponent_and_flags_off_centre_profiles():
    budgets = [1e16, 1e17, 1e18, 1e19]
    fit = F.fit_approach2(parabola_rows(budgets), target_flops=1e21, n_bootstrap=20)
    assert fit["N_law"]["exponent"].value == pytest.approx(0.5, abs=1e-9)
    assert fit["N_law"]["coef"].value == pytest.approx(0.1, rel=1e-6)
    assert fit["D_law"]["exponent"].value == pytest.approx(0.5, abs=1e-9)  # D* = C / (6 N*)
    assert fit["at_target"]["N"].value == pytest.approx(0.1 * 1e21**0.5, rel=1e-6)
    assert fit["at_target"]["D"].value == pytest.approx(1e21 / (6 * 0.1 * 1e21**0.5), rel=1e-6)
    assert [b["status"] for b in fit["budgets"]] == ["ok"] * 4
    # Resampling models, a resample that keeps only sizes on one side of a vertex cannot place it: it fails
    # and is counted, never dropped.
    assert fit["bootstrap"] == "cases" and fit["n_bootstrap"] == 20 and fit["n_failed"] > 0
    # Exact profiles whose measured noise is zero: every parametric resample is the data, so refits the same law.
    exact = F.fit_approach2([dict(r, eval_loss_se=0.0) for r in parabola_rows(budgets)], 1e21, n_bootstrap=20)
    exponent = exact["N_law"]["exponent"]
    assert exact["bootstrap"] == "parametric" and exact["n_failed"] == 0, exact["reason"]
    assert exponent.high - exponent.low < 1e-9 and exact["identified"], exponent

    # A profile sampled entirely above its optimum has its vertex outside: flagged, clipped, left out.
    shifted = parabola_rows(budgets + [1e20], shift={1e20: 20.0})
    fit = F.fit_approach2(shifted, n_bootstrap=0)
    flagged = [b for b in fit["budgets"] if b["status"] != "ok"]
    assert [(b["budget"], b["status"]) for b in flagged] == [(1e20, "clipped")]
    assert flagged[0]["N_opt"] == pytest.approx(flagged[0]["N_range"][0])
    assert fit["N_law"]["exponent"].value == pytest.approx(0.5, abs=1e-9)


def test_approach2_intervals_reflect_the_noise_and_cover_the_truth():
    # Sampling spread of the exponent here (100 noisy draws): sd 0.0026, central 95% width 0.0093.
    budgets = list(np.geomspace(1e16, 1e20, 5))
    rows = parabola_rows(budgets, ratios=tuple(np.geomspace(1 / 8, 8, 7)), noise=0.003, seed=1)
    # Each run's measured eval-loss SE is the noise's size: a parametric bootstrap from it.
    fit = F.fit_approach2([dict(r, eval_loss_se=0.003 * r["eval_loss"]) for r in rows], target_flops=1e22,
                          n_bootstrap=200, seed=0)
    exponent = fit["N_law"]["exponent"]
    assert fit["bootstrap"] == "parametric" and fit["identified"], fit["reason"]
    assert exponent.low <= 0.5 <= exponent.high, exponent
    assert 0.003 < exponent.high - exponent.low < 0.03, exponent  # not collapsed, within ~3x the true spread
    for v in fit["budgets"]:
        n_star, interval = 0.1 * v["C"] ** 0.5, v["N_opt_interval"]
        assert interval.low <= n_star <= interval.high and interval.high / interval.low < 1.3, (v["budget"], interval)
    assert fit["n_bootstrap"] == 200 and fit["n_failed"] == 0
    # Without a measured noise the models are resampled; the resamples whose profile kept sizes on one side
    # of its vertex only (15% here) fail, are counted, and leave the laws unbounded and not identified.
    cases = F.fit_approach2(rows, target_flops=1e22, n_bootstrap=200, seed=0)
    assert cases["bootstrap"] == "cases" and cases["n_failed"] > 10 and not cases["identified"]
    assert cases["N_law"]["exponent"].low is None and cases["N_law"]["exponent"].high is None


def test_approach2_needs_three_budgets_with_three_models():
    rows = parabola_rows([1e16, 1e17, 1e18], ratios=(0.5, 1, 2))[:-1]  # the last budget keeps 2 models
    with pytest.raises(F.FitError, match="need >= 3 budgets with >= 3 models"):
        F.fit_approach2(rows, n_bootstrap=0)


def frontier_rows(budgets, E=1.8, C0=3e12, gamma=0.15, noise=0.0, seed=0):
    """Per budget three models: the best exactly on L(C) = E + (C0/C)^gamma, two worse."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        best = (E + (C0 / c) ** gamma) * math.exp(noise * rng.standard_normal())
        for k, excess in enumerate((0.0, 0.05, 0.2)):
            rows.append(dict(trial=f"{c:.3g}-{k}", budget=c, C=c, N=1e6 * (k + 1), D=c / (6e6 * (k + 1)),
                             eval_loss=best + excess, status="ok"))
    return rows


def test_a_frontier_with_no_offset_is_fitted_as_a_pure_power_law_and_identified():
    """E = 0 truly: the free fit puts E at its lower bound, so the frontier is refitted with E fixed at 0,
    says so, and is identified (gamma recovered, bounded intervals); with an offset it stays free."""
    budgets = list(np.geomspace(1e14, 1e19, 6))
    fit = F.fit_frontier(frontier_rows(budgets, E=0.0, C0=3e20, gamma=0.1, noise=0.003, seed=1), 1e21,
                         n_bootstrap=100)
    assert fit["form"] == F.frontier.ZERO_E and fit["identified"], fit["reason"]
    assert "E is fixed at 0" in fit["reason"] and fit["params"]["E"].value == 0.0
    assert fit["params"]["gamma"].low < 0.1 < fit["params"]["gamma"].high
    assert fit["at_target"]["loss"].low < (3e20 / 1e21) ** 0.1 < fit["at_target"]["loss"].high
    free = F.fit_frontier(frontier_rows(budgets, noise=0.003, seed=1), 1e21, n_bootstrap=20)
    assert free["form"] == F.frontier.FREE_E and free["params"]["E"].value > 1.0
    # Three points leave no residuals for the F-test: the pure power law still when the free E lands on 0.
    three = F.fit_frontier(frontier_rows([1e14, 1e16, 1e18], E=0.0, C0=3e20, gamma=0.1), 1e21, n_bootstrap=20)
    assert three["form"] == F.frontier.ZERO_E and three["params"]["gamma"].value == pytest.approx(0.1, rel=1e-6)


def test_frontier_recovers_E_and_gamma():
    budgets = list(np.geomspace(1e14, 1e19, 6))
    fit = F.fit_frontier(frontier_rows(budgets), target_flops=1e21, n_bootstrap=20)
    assert fit["params"]["E"].value == pytest.approx(1.8, abs=1e-4)
    assert fit["params"]["gamma"].value == pytest.approx(0.15, rel=1e-3)
    assert fit["params"]["C0"].value == pytest.approx(3e12, rel=1e-2)
    assert fit["at_target"]["loss"].value == pytest.approx(1.8 + (3e12 / 1e21) ** 0.15, rel=1e-5)
    assert [p["trial"] for p in fit["points"]] == [f"{c:.3g}-0" for c in budgets]

    # A budget whose best loss is worse than a cheaper one's is dropped: the fit, its intervals included,
    # is the fit without it.
    rows = frontier_rows(budgets, noise=0.003, seed=1)
    without = F.fit_frontier(rows, n_bootstrap=100)
    rows.append(dict(trial="bad", budget=3e19, C=3e19, N=1e6, D=1e12, eval_loss=5.0, status="ok"))
    fit = F.fit_frontier(rows, n_bootstrap=100)
    assert fit["dropped"] == 1 and without["dropped"] == 0
    assert fit["points"] == without["points"] and fit["params"] == without["params"]


def test_backtest_small_on_noiseless_data_and_large_when_the_held_out_budget_is_off():
    rows = isoflop_rows([1e18, 1e19, 1e20, 1e21], per_budget=7, spread=30)
    result = F.backtest(rows, n_starts=30)
    assert result["held_out_budget"] == 1e21
    assert result["observed"] == min(r["eval_loss"] for r in rows if r["budget"] == 1e21)
    for method in ("frontier", "approach3"):
        assert abs(result[method]["rel_error"]) < 2e-3, (method, result[method])

    for r in rows:
        if r["budget"] == 1e21:
            r["eval_loss"] *= 1.05
    result = F.backtest(rows, n_starts=30)
    for method in ("frontier", "approach3"):
        assert result[method]["rel_error"] == pytest.approx(-0.05 / 1.05, abs=3e-3), (method, result[method])


def lr_sweep_rows(budgets, lr_law=(0.3, -0.125), batch_law=None, lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                  batch_sizes=(64,), sizes=(0.5, 1.0, 2.0), lr_noise=0.0, seed=0):
    """Rows of an lr (and batch) sweep at three sizes per budget: loss = Chinchilla + quadratic
    penalties in log lr and log batch around their laws' optima; the middle size is the best. `lr_noise`
    scatters each budget's best lr about its law (log-normal, that relative size)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt, _ = F.compute_optimal(CHINCHILLA, c)
        lr_star = lr_law[0] * c ** lr_law[1] * math.exp(lr_noise * rng.standard_normal())
        b_star = batch_law[0] * c ** batch_law[1] if batch_law else batch_sizes[0]
        for ratio in sizes:
            n = n_opt * ratio
            for lr in lrs:
                for bs in batch_sizes:
                    loss = (F.predict_loss(CHINCHILLA, n, c / (6 * n)) + 0.03 * math.log(lr / lr_star) ** 2
                            + 0.02 * math.log(bs / b_star) ** 2)
                    rows.append(dict(trial=f"{c:.3g}-{ratio}-{lr:.0e}-{bs}", budget=c, C=c, N=float(n),
                                     D=float(c / (6 * n)), eval_loss=float(loss), lr=lr, batch_size=bs, status="ok"))
    return rows


def test_hyperparameter_laws_recover_known_exponents():
    budgets = [1e17, 1e18, 1e19, 1e20]
    rows = lr_sweep_rows(budgets, batch_law=(2e-3, 0.3), batch_sizes=(64, 128, 256, 512, 1024, 2048))
    lr = F.fit_hyperparameter_law(rows, "lr", target_flops=1e22, n_bootstrap=50)
    assert lr["law"]["exponent"].value == pytest.approx(-0.125, abs=1e-6)
    assert lr["law"]["coef"].value == pytest.approx(0.3, rel=1e-4)
    assert lr["at_target"].value == pytest.approx(0.3 * 1e22**-0.125, rel=1e-4)
    assert {b["method"] for b in lr["budgets"]} == {"parabola"}
    n_best = [F.compute_optimal(CHINCHILLA, c)[0] for c in budgets]
    assert [b["N"] for b in lr["budgets"]] == pytest.approx(n_best)  # the sweep at the best model
    batch = F.fit_hyperparameter_law(rows, "batch_size", n_bootstrap=50)
    assert batch["law"]["exponent"].value == pytest.approx(0.3, abs=1e-6)

    # Two learning rates give the argmin, which a law through argmins still orders correctly.
    two = F.fit_hyperparameter_law(lr_sweep_rows(budgets, lrs=(3e-4, 3e-3)), "lr", n_bootstrap=0)
    assert {b["method"] for b in two["budgets"]} == {"argmin"}
    assert two["law"]["exponent"].value < 0


def test_hyperparameter_law_interval_reflects_the_scatter_of_the_optima():
    budgets = list(np.geomspace(1e17, 1e21, 8))
    # Optima exactly on the law: every resample of the budgets refits it.
    exact = F.fit_hyperparameter_law(lr_sweep_rows(budgets), "lr", target_flops=1e23, n_bootstrap=100)
    assert exact["law"]["exponent"].high - exact["law"]["exponent"].low < 1e-9
    # Optima scattered by 10%: sampling spread of the exponent (200 draws) sd 0.012, central 95% width 0.043.
    law = F.fit_hyperparameter_law(lr_sweep_rows(budgets, lr_noise=0.1, seed=1), "lr", target_flops=1e23,
                                   n_bootstrap=200)
    exponent = law["law"]["exponent"]
    assert exponent.low <= -0.125 <= exponent.high, exponent
    assert 0.01 < exponent.high - exponent.low < 0.09, exponent
    at = law["at_target"]
    assert at.low <= 0.3 * 1e23**-0.125 <= at.high and at.high / at.low < 2, at
    assert law["n_bootstrap"] == 200


def test_fit_all_on_a_sweep_is_json_and_recommends_from_the_fits():
    budgets = list(np.geomspace(1e17, 1e20, 4))
    rows = lr_sweep_rows(budgets, sizes=(0.2, 0.5, 1.0, 2.0, 5.0))
    rows.append(dict(trial="diverged", budget=1e17, C=1e17, N=1e6, D=1e10, eval_loss=float("nan"), status="diverged"))
    fits = F.fit_all(rows, target_flops=1e22, n_bootstrap=20, n_starts=20)
    json.dumps(fits, allow_nan=False)  # plain JSON: no numpy types, no NaN
    assert set(fits) >= {"frontier", "approach2", "approach3", "backtest", "hyperparameters", "recommendation",
                         "n_rows", "notes"}
    assert fits["n_rows"] == {"total": len(rows), "fitted": len(rows) - 1, "excluded": 1, "models": 20, "budgets": 4}
    # Each section is its fit's dict with every Estimate in fits.json's form.
    frontier = F.fit_frontier(F.usable_rows(rows), 1e22, n_bootstrap=20)
    gamma = frontier["params"]["gamma"]
    assert isinstance(gamma, Estimate) and fits["frontier"] == to_json(frontier)
    assert fits["frontier"]["params"]["gamma"] == {"value": gamma.value, "low": gamma.low, "high": gamma.high}
    rec = fits["recommendation"]
    for key in ("N", "D", "tokens_per_param", "loss"):
        assert rec[key] == {**fits["approach3"]["at_target"][key], "source": "approach3"}, key
    lr = F.fit_hyperparameter_law(F.usable_rows(rows), "lr", 1e22, n_bootstrap=20)["at_target"]
    assert rec["lr"] == {"value": lr.value, "low": lr.low, "high": lr.high, "source": "hyperparameters[lr]"}
    assert rec["lr"]["value"] == pytest.approx(0.3 * 1e22**-0.125, rel=1e-3)
    assert rec["batch_size"] is None and any("batch_size" in note for note in fits["notes"])


def test_failed_and_diverged_rows_are_excluded():
    rows = frontier_rows(list(np.geomspace(1e14, 1e19, 4)))
    # Lower losses than any ok row: if they counted, they would be every budget's best.
    rows += [dict(trial="diverged", budget=1e14, C=1e14, N=1e6, D=1e7, eval_loss=0.1, status="diverged"),
             dict(trial="failed", budget=1e19, C=1e19, N=1e6, D=1e12, eval_loss=0.1, status="failed", reason="oom"),
             dict(trial="nan", budget=1e19, C=1e19, N=2e6, D=1e12, eval_loss=float("nan"), status="ok")]
    assert {r["trial"] for r in F.best_per_model(rows)}.isdisjoint({"diverged", "failed", "nan"})
    fits = F.fit_all(rows, target_flops=1e21, n_bootstrap=10, n_starts=10)
    assert fits["n_rows"]["excluded"] == 3
    assert "diverged" not in [p["trial"] for p in fits["frontier"]["points"]]


def test_too_little_data_gives_notes_not_errors():
    rows = isoflop_rows([1e18, 1e19], per_budget=2, spread=4)
    for given in (rows, []):
        fits = F.fit_all(given, target_flops=1e21, n_bootstrap=10, n_starts=10)
        json.dumps(fits, allow_nan=False)
        for key in ("frontier", "approach2", "approach3"):
            assert fits[key] is None
            assert any(note.startswith(key) and "need >=" in note for note in fits["notes"]), key
        assert fits["recommendation"]["N"] is None and fits["recommendation"]["loss"] is None
    with pytest.raises(F.FitError, match="target_flops"):
        F.fit_all(rows, target_flops=0)


def test_rows_that_cannot_be_fitted_raise_a_clear_error():
    with pytest.raises(F.FitError, match=r"row 0 \(t0\) lacks N"):
        F.usable_rows([dict(trial="t0", budget=1e18, C=1e18, D=1e9, eval_loss=3.0, status="ok")])


def test_load_csv_round_trip(tmp_path):
    rows = lr_sweep_rows([1e17, 1e18], lrs=(1e-3, 3e-3))
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["params", "tokens", "loss", "budget", "lr", "batch_size"])
        for r in rows:
            writer.writerow([repr(r[k]) for k in ("N", "D", "eval_loss", "budget", "lr", "batch_size")])
    loaded = F.load_csv(str(path))
    assert len(loaded) == len(rows)
    for got, want in zip(loaded, rows):
        for key in ("N", "D", "eval_loss", "budget", "lr", "batch_size"):
            assert got[key] == want[key], key
        assert got["C"] == pytest.approx(6 * want["N"] * want["D"]) and got["status"] == "ok"

    bad = tmp_path / "bad.csv"
    bad.write_text("params,loss\n1e6,3.0\n")
    with pytest.raises(F.FitError, match="lacks column"):
        F.load_csv(str(bad))


def test_load_results_reads_jsonl_and_names_a_bad_line(tmp_path):
    rows = frontier_rows([1e14, 1e15])
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert F.load_results(str(path)) == rows
    path.write_text(json.dumps(rows[0]) + "\n{truncated\n")
    with pytest.raises(F.FitError, match="results.jsonl:2"):
        F.load_results(str(path))


def test_csv_with_one_row_per_budget_has_intervals_that_cover_the_truth(tmp_path):
    # No budget column: every row is its own budget, so a bootstrap within budgets has nothing to draw.
    rng = np.random.default_rng(0)
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["params", "tokens", "loss"])
        for c, ratio in zip(np.geomspace(1e18, 1e21, 40), itertools.cycle(np.geomspace(1 / 8, 8, 5))):
            n = F.compute_optimal(CHINCHILLA, c)[0] * ratio
            d = c / (6 * n)
            writer.writerow([n, d, F.predict_loss(CHINCHILLA, n, d) * math.exp(0.002 * rng.standard_normal())])
    rows = F.load_csv(str(path))
    assert len({r["budget"] for r in rows}) == len(rows)

    fit = F.fit_approach3(rows, n_bootstrap=100, seed=0, n_starts=30)
    for name, tol in (("E", 0.02), ("alpha", 0.01), ("beta", 0.01)):
        p = fit["params"][name]
        assert p.low <= CHINCHILLA[name] <= p.high, (name, p)
        # Unpooled, every resample would be the data: a zero-width interval that misses the truth.
        assert tol / 4 < p.high - p.low < 4 * tol, (name, p)


def test_seeds_are_averaged_before_the_best_learning_rate_is_chosen():
    base = dict(budget=1e18, C=1e18, N=1e7, D=1e18 / 6e7, status="ok")
    losses = {(1e-3, 0): 3.0, (1e-3, 1): 3.2, (3e-3, 0): 2.9, (3e-3, 1): 3.5}  # lr 3e-3: lucky seed, worse mean
    rows = [dict(base, trial=f"lr{lr}-s{seed}", lr=lr, seed=seed, eval_loss=loss)
            for (lr, seed), loss in losses.items()]
    (best,) = F.best_per_model(rows)
    assert best["lr"] == 1e-3
    assert best["eval_loss"] == pytest.approx(3.1)
    # At a higher lr one seed diverged and the other was lucky: that setting is unstable, not the best.
    rows += [dict(base, trial="lr1e-2-s0", lr=1e-2, seed=0, eval_loss=2.5),
             dict(base, trial="lr1e-2-s1", lr=1e-2, seed=1, eval_loss=math.nan, status="diverged")]
    (best,) = F.best_per_model(rows)
    assert best["lr"] == 1e-3


def test_frontier_interval_reflects_the_noise_and_covers_the_truth():
    # Sampling spread of gamma-hat here (100 noisy draws): sd 0.0087, central 95% width 0.034.
    rows = frontier_rows(list(np.geomspace(1e14, 1e19, 6)), noise=0.003, seed=1)
    fit = F.fit_frontier(rows, n_bootstrap=200, seed=0)
    gamma = fit["params"]["gamma"]
    assert gamma.low <= 0.15 <= gamma.high, gamma
    assert gamma.low < gamma.value < gamma.high, gamma  # two-sided
    assert gamma.high - gamma.low < 0.07, gamma  # within ~2x the true spread
    assert fit["n_bootstrap"] >= 190


def test_a_three_budget_frontier_has_no_interval_and_the_notes_say_why():
    rows = frontier_rows([1e14, 1e16, 1e18], noise=0.003, seed=1)  # 3 points fit 3 parameters exactly
    fits = F.fit_all(rows, target_flops=1e20, n_bootstrap=20, n_starts=10)
    gamma = fits["frontier"]["params"]["gamma"]
    assert gamma["low"] is None and gamma["high"] is None and math.isfinite(gamma["value"])
    assert any(note.startswith("frontier: its 3 points fix E, C0 and gamma exactly") for note in fits["notes"])


def test_stratified_resamples_keep_every_profile_and_pool_one_model_budgets():
    budget = np.array([1.0] * 4 + [2.0] * 5 + [3.0, 4.0, 5.0])  # two profiles, three one-model budgets
    sizes = np.array([1, 2, 3, 4, 1, 2, 3, 4, 5, 9, 9, 9], float)
    picks = stratified_resamples(budget, 300, seed=0, sizes=sizes)
    assert picks.shape == (300, 12)
    # Within a profile every draw is one of its own models, and each keeps 3 distinct sizes.
    for b in (1.0, 2.0):
        members = np.flatnonzero(budget == b)
        assert np.isin(picks[:, members], members).all()
        assert min(np.unique(sizes[p]).size for p in picks[:, members]) == 3
    # The one-model budgets are drawn from each other: their resamples differ from the data.
    pooled = picks[:, 9:]
    assert np.isin(pooled, [9, 10, 11]).all()
    assert (pooled != np.arange(9, 12)).any(axis=1).mean() > 0.7  # 1 - 1/27 of draws are not the data
    # Seeded: the same seed gives the same resamples, another seed others.
    assert (stratified_resamples(budget, 300, seed=0, sizes=sizes) == picks).all()
    assert (stratified_resamples(budget, 300, seed=1, sizes=sizes) != picks).any()


def test_residual_resamples_scatter_the_centred_scaled_residuals_about_the_curve():
    fitted = np.array([3.0, 2.8, 2.6, 2.5, 2.45, 2.4])
    log_residuals = np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.02])
    draws = residual_resamples(fitted, fitted * np.exp(log_residuals), 500, seed=0)
    assert draws.shape == (500, 6)
    drawn = np.log(draws / fitted)
    centred = (log_residuals - log_residuals.mean()) * math.sqrt(6 / 3)  # n / (n - 3 parameters)
    assert np.isclose(drawn[..., None], centred).any(axis=-1).all()  # every draw is a rescaled residual
    assert np.unique(drawn.round(12)).size == 6 and drawn.std() == pytest.approx(centred.std(), rel=0.1)
    # A curve that fits its 3 points exactly leaves nothing to resample.
    assert residual_resamples(fitted[:3], fitted[:3], 500, seed=0).shape == (0, 3)


def test_estimate_counts_failed_and_non_finite_resamples_half_at_each_end():
    samples = np.arange(1001.0)
    assert Estimate.from_samples(500.0, samples) == Estimate(500.0, 25.0, 975.0)
    # A non-finite sample is a failure, as is each of n_failed: one of three at -inf, two at +inf.
    with_nonfinite = Estimate.from_samples(500.0, np.concatenate([samples, [np.nan, np.inf, -np.inf]]))
    assert with_nonfinite == Estimate.from_samples(500.0, samples, n_failed=3)
    assert with_nonfinite.low == pytest.approx(24.075) and with_nonfinite.high == pytest.approx(976.925)
    assert Estimate.from_samples(np.float64(2.0), [np.nan]) == Estimate(2.0, None, None)
    assert Estimate.from_samples(np.float64(2.0), [], n_failed=0) == Estimate(2.0, None, None)
    assert Estimate.from_samples(np.inf, [1.0, 2.0]).value is None
    assert to_json({"a": [Estimate(1.0, 0.5, None)], "b": 3}) == {"a": [{"value": 1.0, "low": 0.5, "high": None}],
                                                                   "b": 3}


def test_known_truth_compares_each_free_e_with_the_entropy_rate():
    """Each fit with a free E is compared with H on its own; a frontier with E fixed at 0 has no E to compare."""
    from gptjax.scaling.fit.frontier import FREE_E, ZERO_E

    def section(value, low, high, identified, form=None):
        return {"params": {"E": {"value": value, "low": low, "high": high}}, "identified": identified,
                **({"form": form} if form else {})}

    fits = {"approach3": section(2.31, 2.25, 2.36, True), "frontier": section(0.0, 0.0, 0.0, True, ZERO_E)}
    truth = F.known_truth(fits, 2.29)
    assert truth["entropy_rate"] == 2.29 and list(truth["fits"]) == ["approach3"]
    assert truth["fits"]["approach3"]["error"] == pytest.approx(0.02) and truth["fits"]["approach3"]["truth_in_interval"]
    fits = {"approach3": section(1.5, None, 2.0, False), "frontier": section(2.4, 2.35, 2.5, True, FREE_E)}
    truth = F.known_truth(fits, 2.29)["fits"]
    assert truth["frontier"]["error"] == pytest.approx(0.11) and truth["frontier"]["identified"]
    assert not truth["frontier"]["truth_in_interval"] and not truth["approach3"]["truth_in_interval"]
    assert not truth["approach3"]["identified"]
    assert F.known_truth({"approach3": None, "frontier": None}, 2.29)["fits"] == {}
