"""The over-optimisation study's estimators against brute force, and its pass criteria on planted curves
(experiments/rm_overoptimization/shapes.py)."""

import itertools
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                "rm_overoptimization"))
from shapes import bon_expectations, shape_check, verdict  # noqa: E402

from gptjax.align.losses import best_of_n_kl  # noqa: E402


def test_best_of_n_from_a_pool_equals_every_subset_enumerated():
    rng = np.random.default_rng(0)
    pool = 7
    proxy_PxN, gold_PxN = rng.normal(size=(3, pool)), rng.normal(size=(3, pool))
    ns = list(range(1, pool + 1))
    estimated = bon_expectations(proxy_PxN, gold_PxN, ns, rng)
    for p in range(3):
        for c, n in enumerate(ns):
            subsets = list(itertools.combinations(range(pool), n))
            brute = np.mean([gold_PxN[p][max(s, key=lambda i: proxy_PxN[p][i])] for s in subsets])
            assert estimated[p, c] == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_best_of_n_kl_bounds_every_enumerated_discrete_policy_and_is_their_limit(n):
    """Best of n independent draws from M equally likely outcomes (scored 1..M), every draw enumerated: its
    KL to the base never exceeds log(n) - (n-1)/n and approaches it as M grows (distinct scores)."""
    def enumerated_kl(M):
        picks = np.zeros(M)
        for draws in itertools.product(range(M), repeat=n):
            picks[max(draws)] += 1
        p = picks / picks.sum()
        return float(sum(q * math.log(q * M) for q in p if q > 0))

    kls = [enumerated_kl(M) for M in (2, 4, 8, 16)]
    assert all(kl <= best_of_n_kl(n) + 1e-12 for kl in kls)
    assert kls == sorted(kls) and kls[-1] == pytest.approx(best_of_n_kl(n), abs=0.05 * max(best_of_n_kl(n), 1e-3))


def planted(gold_of_d, proxy_of_d, d_X, units=200, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    gold_UxX = gold_of_d(d_X) + rng.normal(0, noise, (units, len(d_X)))
    proxy_UxX = proxy_of_d(d_X) + rng.normal(0, noise, (units, len(d_X)))
    return proxy_UxX, gold_UxX


def test_shape_checks_are_read_from_the_curves():
    d_X = np.sqrt([best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)])
    rising = lambda d: 0.5 * d  # noqa: E731
    rng = np.random.default_rng(1)
    peaked = shape_check("bon", 500, d_X, *planted(lambda d: d * (0.6 - 0.4 * d), rising, d_X), n_boot=200, rng=rng)
    assert peaked["proxy_rises"] and peaked["gold_peaks_then_falls"]
    assert peaked["d_peak"] == pytest.approx(0.75, abs=0.25)  # the planted peak: 0.6 / (2 * 0.4)
    assert peaked["alpha_ci"][0] < 0.6 < peaked["alpha_ci"][1] and peaked["beta_ci"][0] < 0.4 < peaked["beta_ci"][1]
    monotone = shape_check("bon", 2000, d_X, *planted(lambda d: 0.3 * d, rising, d_X), n_boot=200, rng=rng)
    assert monotone["proxy_rises"] and not monotone["gold_peaks_then_falls"]
    assert monotone["d_peak"] == d_X[-1]
    falling_proxy = shape_check("bon", 8000, d_X, *planted(lambda d: d * (0.6 - 0.4 * d), lambda d: -0.5 * d, d_X),
                                n_boot=200, rng=rng)
    assert not falling_proxy["proxy_rises"]
    # Only the peaked proxy passes: the shape needs 2 of 3, and d_peak is compared between passing proxies only.
    assert verdict([peaked, monotone, falling_proxy]) == {"bon": dict(proxies_passing=[500], shape_holds=False,
                                                                      d_peak_grows_with_data=False)}
    later = shape_check("bon", 8000, d_X, *planted(lambda d: d * (0.6 - 0.2 * d), rising, d_X), n_boot=20, rng=rng)
    assert later["gold_peaks_then_falls"] and later["d_peak"] > peaked["d_peak"]  # planted peak at 1.5
    assert verdict([peaked, monotone, later])["bon"] == dict(proxies_passing=[500, 8000], shape_holds=True,
                                                             d_peak_grows_with_data=True)


def test_a_flat_gold_curve_rarely_passes_as_peaked():
    """The largest of noisy means is biased up; the Bonferroni level keeps a flat curve's false 'peaked' rare."""
    d_X = np.sqrt([best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)])
    flat = lambda d: 0.0 * d  # noqa: E731
    checks = [shape_check("bon", 500, d_X, *planted(flat, flat, d_X, units=100, seed=s), n_boot=2,
                          rng=np.random.default_rng(s)) for s in range(1000)]
    assert np.mean([c["gold_peaks_then_falls"] for c in checks]) <= 0.035  # at most 2.5%, one-sided
    naive = [c["d_peak"] not in (d_X[0], d_X[-1]) and c["gold_drop"] > 2 * c["gold_drop_se"] for c in checks]
    assert np.mean(naive) >= 0.08  # the plain 2 SE rule: about one flat curve in nine would pass


def test_rl_fit_recovers_a_planted_log_curve():
    d_X = np.linspace(0.25, 6, 24)
    check = shape_check("rl", 500, d_X, *planted(lambda d: d * (1.0 - 0.5 * np.log(d)), lambda d: d, d_X),
                        n_boot=200, rng=np.random.default_rng(2))
    assert check["gold_peaks_then_falls"] and check["proxy_rises"]
    assert check["alpha"] == pytest.approx(1.0, abs=0.05) and check["beta"] == pytest.approx(0.5, abs=0.05)
    assert check["d_peak"] == pytest.approx(math.exp(1.0 / 0.5 - 1), abs=0.5)  # d* = exp(alpha / beta - 1)


def test_the_committed_report_states_every_shape_check_of_results_json():
    import json

    import run as study  # experiments/rm_overoptimization/run.py

    with open(study.RESULTS, encoding="utf-8") as f:
        res = json.load(f)
    with open(os.path.join(os.path.dirname(study.RESULTS), "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert {c["method"] for c in res["shape_checks"]} == {"bon", "rl"} and len(res["shape_checks"]) == 6
    for c in res["shape_checks"]:
        assert f"| {c['rm_pairs']} | {c['proxy_rises']} | {c['gold_peaks_then_falls']} | " in report
    for method, v in res["shape_verdict"].items():
        assert v == verdict([c for c in res["shape_checks"] if c["method"] == method])[method]
        assert f"criterion (>= 2) is **{'met' if v['shape_holds'] else 'not met'}**" in report


@pytest.mark.slow
def test_a_miniature_of_the_study_computes_its_shape_checks_from_its_samples(tmp_path):
    """Every stage of run.py for a few seconds (--miniature): results.json's curves and shape checks are what the
    stored samples give, the estimator equals brute force on a real pool, and the report rebuilds from the file."""
    import json
    import subprocess

    import run as study

    root = tmp_path / "rmo"
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(study.RESULTS), "run.py"), "--miniature",
                           f"--root={root}"], check=False, capture_output=True, text=True, cwd=study.REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((root / "results.json").read_text())
    mini = study.MINIATURE
    assert sorted((c["method"], c["rm_pairs"]) for c in res["shape_checks"]) == sorted(
        (m, n) for m in ("bon", "rl") for n in mini["RM_SIZES"])
    z = np.load(root / "bon" / "scores.npz")
    gold_PxN, ns = z["gold"], mini["BON_NS"]
    assert gold_PxN.shape == (mini["HELD_OUT_PROMPTS"], mini["BON_POOL"])
    rng = np.random.default_rng(0)
    for n_rm in mini["RM_SIZES"]:
        proxy_PxN, curve = z[f"proxy_{n_rm}"], res["bon"][str(n_rm)]
        expected = bon_expectations(proxy_PxN, gold_PxN, ns, rng) - gold_PxN.mean()
        assert curve["gold"] == pytest.approx(expected.mean(0).tolist(), abs=1e-9)
        assert curve["d"] == pytest.approx([math.sqrt(best_of_n_kl(n)) for n in ns])
        small_proxy, small_gold = proxy_PxN[:1, :6], gold_PxN[:1, :6]  # a real pool of 6, every subset enumerated
        for n in range(1, 7):
            brute = np.mean([small_gold[0][max(s, key=lambda i: small_proxy[0][i])]
                             for s in itertools.combinations(range(6), n)])
            assert bon_expectations(small_proxy, small_gold, [n], rng)[0, 0] == pytest.approx(brute)
    for key, r in list(res["bon"].items()) + list(res["rl"].items()):  # the pass criterion, read off the stored curve
        peak = int(np.argmax(r["gold"]))
        assert r["gold_peaks_then_falls"] == (0 < peak < len(r["gold"]) - 1
                                              and r["gold_drop"] > r["drop_z"] * r["gold_drop_se"]), key
        assert r["gold_drop"] == pytest.approx(r["gold"][peak] - r["gold"][-1])
    rl = np.load(root / "rl_eval_24.npz")
    assert rl["steps"].tolist() == list(range(0, mini["RL_STEPS"] + 1, mini["RL_EVAL_EVERY"]))
    assert np.abs(rl["kl_XxU"][0]).max() < 1e-3  # step 0 is the SFT policy itself: no KL
    assert res["rl"]["24"]["d"] == pytest.approx(np.sqrt(np.maximum(rl["kl_XxU"].mean(1), 0)).tolist())
    study.rebuild_report(str(tmp_path / "again.md"), str(root / "results.json"))
    assert (tmp_path / "again.md").read_text() == (root / "report.md").read_text()
