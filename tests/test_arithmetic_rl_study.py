"""The arithmetic RL study's analysis (experiments/arithmetic_rl/run.py) on planted per-problem scores: a
difference is called real only when its seed-paired interval excludes 0."""

import importlib.util
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("arithmetic_rl_run", os.path.join(REPO, "experiments", "arithmetic_rl",
                                                                                 "run.py"))
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def planted(means_by_method, seed_spread=0.01, problems=200, seed=0):
    """passes as held_out_pass_at_1 returns them: per run, (pass@1 per problem, greedy per problem)."""
    rng = np.random.default_rng(seed)
    passes = {"SFT": dict(held_out=rng.uniform(0, 0.4, problems).tolist(), greedy=rng.integers(0, 2, problems).tolist(),
                          train=rng.uniform(0, 1, problems).tolist())}
    for name, mean in means_by_method.items():
        for s in study.SEEDS:
            level = mean + rng.normal(0, seed_spread)
            passes[f"{name}/{s}"] = dict(held_out=np.clip(rng.normal(level, 0.05, problems), 0, 1).tolist(),
                                         greedy=rng.integers(0, 2, problems).tolist(),
                                         train=rng.uniform(0, 1, problems).tolist())
    train = {k: [dict(step=i, reward_mean=0.3, kl_k1=0.1) for i in range(30)] for k in passes if k != "SFT"}
    return passes, train


def test_a_planted_gap_is_real_and_no_gap_is_not():
    passes, train = planted({"GRPO": 0.5, "RLOO": 0.5, "PPO": 0.3})
    a = study.analyse(passes, train, {"GRPO": 1e-4, "RLOO": 1e-4, "PPO": 3e-4})
    real = {(p["a"], p["b"]): p["real"] for p in a["pairs"]}
    assert real == {("GRPO", "RLOO"): False, ("GRPO", "PPO"): True, ("RLOO", "PPO"): True}
    grpo = a["methods"]["GRPO"]
    assert grpo["mean"] == pytest.approx(np.mean(grpo["pass_at_1"]))
    assert grpo["gain_over_sft"] == pytest.approx(grpo["mean"] - a["sft"]["pass_at_1"])
    assert grpo["interval"][0] < grpo["mean"] < grpo["interval"][1]


def test_the_seed_interval_is_students_t():
    low, high = study.t_interval([0.30, 0.36, 0.33])
    assert (low + high) / 2 == pytest.approx(0.33)
    assert (high - low) / 2 == pytest.approx(4.3027 * 0.03 / np.sqrt(3), rel=1e-3)  # t(0.975, 2 df) * SE
