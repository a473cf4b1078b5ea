"""align/losses.py against hand-computed values and independent numpy / plain-Python references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.align import losses


def _np(x):
    return np.asarray(jax.device_get(x))


def _ragged_mask(lengths, T):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


# --- masking and aggregation ---------------------------------------------------------------------------------

def test_masked_mean_and_empty_mask():
    x = np.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = np.array([[True, True, False], [True, False, False]])
    assert float(losses.masked_mean(x, mask)) == pytest.approx(2.0)
    np.testing.assert_allclose(_np(losses.masked_mean(x, mask, axis=1)), [1.5, 3.0])
    np.testing.assert_allclose(_np(losses.masked_mean(x, mask.astype(np.float32) * 0.5)), (0.5 + 1 + 1.5) / 1.5)
    assert float(losses.masked_mean(x, np.zeros_like(mask))) == 0.0


def test_masked_whiten_zero_mean_unit_variance_on_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (4, 6)).astype(np.float32)
    mask = _ragged_mask([6, 3, 1, 5], 6)
    w = _np(losses.masked_whiten(x, mask))
    assert np.all(w[~mask] == 0)
    ref = (x[mask] - x[mask].mean()) / x[mask].std()
    np.testing.assert_allclose(w[mask], ref, rtol=1e-5, atol=1e-5)


def test_aggregate_modes_hand_example():
    loss = np.array([[1.0, 3.0, 9.0], [6.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = np.array([[True, True, False], [True, False, False], [False, False, False]])
    assert float(losses.aggregate(loss, mask, "token_mean")) == pytest.approx((1 + 3 + 6) / 3)
    # per sequence: 2 and 6; the empty third row is left out
    assert float(losses.aggregate(loss, mask, "seq_mean")) == pytest.approx(4.0)
    assert float(losses.aggregate(loss, mask, "max_len")) == pytest.approx(10 / 9)
    with pytest.raises(ValueError, match="sum_mean"):
        losses.aggregate(loss, mask, "sum_mean")


# --- token statistics ----------------------------------------------------------------------------------------

def test_token_logprobs_matches_numpy_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (2, 5))
    shifted = logits - logits.max(-1, keepdims=True)
    ref = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    got = _np(losses.token_logprobs(logits, tokens))
    assert got.dtype == np.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got, np.take_along_axis(ref, tokens[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5)


def test_entropy_uniform_peaked_and_banned_tokens():
    V = 11
    np.testing.assert_allclose(_np(losses.entropy(np.full((2, 3, V), 0.7, np.float32))), math.log(V), rtol=1e-6)
    logits = np.array([[[0.0, math.log(3.0), -np.inf]]], np.float32)  # p = (1/4, 3/4, 0)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(losses.entropy(logits)[0, 0]) == pytest.approx(expected, rel=1e-6)
    grad = jax.grad(lambda x: losses.entropy(x).sum())(logits)
    assert np.all(np.isfinite(_np(grad)))


# --- KL estimators -------------------------------------------------------------------------------------------

def test_kl_estimators_match_exact_kl_on_samples():
    rng = np.random.default_rng(2)
    p = np.array([0.5, 0.25, 0.15, 0.1])
    q = np.array([0.2, 0.3, 0.3, 0.2])
    exact = float(np.sum(p * np.log(p / q)))
    samples = rng.choice(len(p), size=(200, 100), p=p)
    logp, ref_logp = np.log(p)[samples].astype(np.float32), np.log(q)[samples].astype(np.float32)
    kls = {k: _np(v) for k, v in losses.kl_estimates(logp, ref_logp).items()}
    for name in ("k1", "k3"):
        stderr = kls[name].std() / math.sqrt(kls[name].size)
        assert abs(kls[name].mean() - exact) < 4 * stderr, name
    assert np.all(kls["k3"] >= 0)
    assert np.any(kls["k1"] < 0)  # k1 is unbiased only on average, k3 per sample
    log_ratio = ref_logp - logp
    np.testing.assert_allclose(kls["k2"], 0.5 * log_ratio**2, rtol=1e-6)
    np.testing.assert_allclose(kls["k3"], np.exp(log_ratio) - 1 - log_ratio, rtol=1e-5, atol=1e-7)
    for name in ("k1", "k2", "k3"):
        np.testing.assert_array_equal(_np(losses.kl_penalty(logp, ref_logp, name)), kls[name])
    with pytest.raises(ValueError, match="k4"):
        losses.kl_penalty(logp, ref_logp, "k4")


def test_k3_penalty_of_a_token_the_policy_made_rare_stays_bounded():
    """A sampled token with log pi = -25 that the reference gives log q = -0.1 (log_ratio ~ +25): raw k3
    is exp(25) ~ 7e10, and its gradient as large; the penalty is capped at 10 with a finite gradient."""
    logp, ref_logp = jnp.array([[-25.0, -1.0]]), jnp.array([[-0.1, -1.2]])
    raw = _np(losses.kl_estimates(logp, ref_logp)["k3"])
    assert raw[0, 0] > 1e10
    penalty = _np(losses.kl_penalty(logp, ref_logp, "k3"))
    assert penalty[0, 0] == losses.K3_MAX and penalty[0, 1] == pytest.approx(raw[0, 1], rel=1e-6)
    grad = _np(jax.grad(lambda lp: losses.kl_penalty(lp, ref_logp, "k3").sum())(logp))
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() < 2.0


# --- reward model --------------------------------------------------------------------------------------------

def test_pairwise_loss_and_accuracy_vs_numpy():
    rng = np.random.default_rng(3)
    rc, rr = rng.normal(size=9).astype(np.float32), rng.normal(size=9).astype(np.float32)
    w = np.array([1, 1, 1, 1, 1, 1, 0.5, 2, 0], np.float32)
    loss, acc = losses.pairwise_loss(rc, rr, w)
    ref_loss = np.sum(w * np.log1p(np.exp(-(rc - rr)))) / w.sum()
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(acc) == pytest.approx(np.sum(w * (rc > rr)) / w.sum(), rel=1e-6)
    _, acc = losses.pairwise_loss(np.array([1.0, 2.0]), np.array([1.0, 0.0]), np.ones(2))
    assert float(acc) == 0.5  # a tie is not a win
    # large margins stay finite (log_sigmoid, not log(sigmoid))
    loss, _ = losses.pairwise_loss(np.array([-200.0]), np.array([200.0]), np.array([1.0]))
    assert float(loss) == pytest.approx(400.0)


def test_pairwise_k_way_ranking_counts_once():
    scores = np.array([2.0, 0.5, 1.0], np.float32)  # ranking a > b > c of K = 3 responses
    pairs = [(0, 1), (0, 2), (1, 2)]
    rc, rr = scores[[a for a, _ in pairs]], scores[[b for _, b in pairs]]
    ranked, _ = losses.pairwise_loss(rc, rr, np.full(3, 1 / 3, np.float32))
    pair_losses = [float(losses.pairwise_loss(rc[i:i + 1], rr[i:i + 1], np.ones(1))[0]) for i in range(3)]
    assert float(ranked) == pytest.approx(np.mean(pair_losses), rel=1e-6)
    # with a plain pair in the same batch, the ranking weighs as much as that one pair
    both, acc = losses.pairwise_loss(np.append(rc, 0.0), np.append(rr, 1.0), np.array([1 / 3] * 3 + [1.0]))
    assert float(both) == pytest.approx((np.mean(pair_losses) + math.log1p(math.e)) / 2, rel=1e-6)
    assert float(acc) == pytest.approx((2 / 3) / 2, rel=1e-6)


# --- GAE -----------------------------------------------------------------------------------------------------

def _gae_reference(rewards, values, lengths, gamma, lam):
    advantages, returns = np.zeros_like(rewards), np.zeros_like(rewards)
    for b, n in enumerate(lengths):
        next_advantage, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b, t], returns[b, t] = next_advantage, next_advantage + values[b, t]
            next_value = values[b, t]
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (0.7, 1.0)])
def test_gae_matches_backward_recursion_on_ragged_rows(gamma, lam):
    rng = np.random.default_rng(4)
    lengths, T = [7, 3, 1, 0, 5], 7
    mask = _ragged_mask(lengths, T)
    # garbage past each row's end must not leak in
    rewards = rng.normal(size=(5, T)).astype(np.float32)
    values = rng.normal(size=(5, T)).astype(np.float32)
    advantages, returns = losses.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_reference(np.where(mask, rewards, 0), values, lengths, gamma, lam)
    np.testing.assert_allclose(_np(advantages), ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(returns), ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_with_unit_gamma_and_lambda_returns_reward_to_go():
    rng = np.random.default_rng(5)
    lengths, T = [4, 2, 6], 6
    mask = _ragged_mask(lengths, T)
    rewards = np.where(mask, rng.normal(size=(3, T)), 0).astype(np.float32)
    values = rng.normal(size=(3, T)).astype(np.float32)
    advantages, returns = losses.gae(rewards, values, mask, 1.0, 1.0)
    reward_to_go = np.where(mask, np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1], 0)
    np.testing.assert_allclose(_np(returns), reward_to_go, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(advantages), np.where(mask, reward_to_go - values, 0), rtol=1e-5, atol=1e-5)


# --- PPO -----------------------------------------------------------------------------------------------------

def test_ppo_policy_loss_clips_at_chosen_ratios():
    ratio = np.array([[1.5, 1.5, 0.5, 0.5, 1.1, 7.0]], np.float32)
    adv = np.array([[2.0, -2.0, 2.0, -2.0, 1.0, 1.0]], np.float32)
    mask = np.array([[True, True, True, True, True, False]])
    old = np.full_like(ratio, -1.0)
    loss, m = losses.ppo_policy_loss(old + np.log(ratio), old, adv, mask, 0.2)
    # ratio 1.5, A>0: capped at 1.2 -> -2.4 (clipped); A<0: unclipped 3.0 wins over 2.4;
    # ratio 0.5, A>0: unclipped -1.0 wins over -1.6; A<0: clipped 1.6 wins over 1.0; ratio 1.1 inside -> -1.1
    per_token = [-2.4, 3.0, -1.0, 1.6, -1.1]
    assert float(loss) == pytest.approx(np.mean(per_token), rel=1e-5)
    assert float(m["clipfrac"]) == pytest.approx(2 / 5)
    assert float(m["ratio_mean"]) == pytest.approx(np.mean(ratio[0, :5]), rel=1e-5)
    assert float(m["approx_kl"]) == pytest.approx(0.5 * np.mean(np.log(ratio[0, :5]) ** 2), rel=1e-5)
    max_len_loss, _ = losses.ppo_policy_loss(old + np.log(ratio), old, adv, mask, 0.2, mode="max_len")
    assert float(max_len_loss) == pytest.approx(np.sum(per_token) / 6, rel=1e-5)


def test_ppo_policy_loss_at_step_zero():
    rng = np.random.default_rng(6)
    logp = rng.normal(size=(3, 5)).astype(np.float32)
    adv = rng.normal(size=(3, 5)).astype(np.float32)
    mask = _ragged_mask([5, 2, 4], 5)
    loss, m = losses.ppo_policy_loss(logp, logp, adv, mask, 0.2)
    assert float(m["clipfrac"]) == 0.0 and float(m["approx_kl"]) == 0.0
    assert float(m["ratio_mean"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(-adv[mask].mean(), rel=1e-5)


def test_ppo_value_loss_clipping():
    values = np.array([[2.0, 0.0, 1.0, 5.0]], np.float32)
    old = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
    returns = np.array([[3.0, -2.0, 1.5, 0.0]], np.float32)
    mask = np.array([[True, True, True, False]])
    # clip 0.5: token 0 clipped V 1.5 -> 2.25 > 1.0 (clip wins); token 1 clipped V 0.5 -> 6.25 > 4.0 (clip wins);
    # token 2 moves by 0 -> both 0.25
    loss, clipfrac = losses.ppo_value_loss(values, old, returns, mask, 0.5)
    assert float(loss) == pytest.approx(0.5 * (2.25 + 6.25 + 0.25) / 3)
    assert float(clipfrac) == pytest.approx(2 / 3)
    for off in (0.0, -1.0):
        loss, clipfrac = losses.ppo_value_loss(values, old, returns, mask, off)
        assert float(loss) == pytest.approx(0.5 * (1.0 + 4.0 + 0.25) / 3) and float(clipfrac) == 0.0
    # a clip wider than every step never binds
    loss, clipfrac = losses.ppo_value_loss(values, old, returns, mask, 10.0)
    assert float(loss) == pytest.approx(0.5 * (1.0 + 4.0 + 0.25) / 3) and float(clipfrac) == 0.0


# --- group advantages ----------------------------------------------------------------------------------------

def test_group_advantages_vs_numpy():
    rng = np.random.default_rng(7)
    R = rng.normal(size=(4, 5)).astype(np.float32)
    R[2] = 0.3  # a constant group: all-zero advantages, no division blow-up
    mean = R.mean(1, keepdims=True)
    np.testing.assert_allclose(_np(losses.group_advantages(R, "grpo")),
                               (R - mean) / (R.std(1, keepdims=True) + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(losses.group_advantages(R, "dr_grpo")), R - mean, atol=1e-6)
    rloo = _np(losses.group_advantages(R, "rloo"))
    leave_one_out = np.array([[R[b, i] - np.delete(R[b], i).mean() for i in range(5)] for b in range(4)])
    np.testing.assert_allclose(rloo, leave_one_out, atol=1e-5)
    np.testing.assert_allclose(rloo, 5 / 4 * (R - mean), atol=1e-5)
    assert np.all(_np(losses.group_advantages(R, "grpo"))[2] == 0)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="at least 2"):
        losses.group_advantages(np.ones((3, 1)), "rloo")
    with pytest.raises(ValueError, match="ppo"):
        losses.group_advantages(np.ones((3, 2)), "ppo")
    np.testing.assert_array_equal(_np(losses.group_advantages(np.ones((3, 1)), "dr_grpo")), 0.0)


def test_frac_zero_std():
    R = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1e-3]])
    assert float(losses.frac_zero_std(R)) == pytest.approx(0.5)


# --- DPO -----------------------------------------------------------------------------------------------------

def test_dpo_sigmoid_hand_values():
    # h = (-10 - -12) - (-15 - -14) = 2 - (-1) = 3; beta 0.5 -> -log sigmoid(1.5)
    loss, m = losses.dpo_loss(np.array([-10.0]), np.array([-15.0]), np.array([-12.0]), np.array([-14.0]), 0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-6)
    assert float(m["chosen_reward"]) == pytest.approx(1.0)
    assert float(m["rejected_reward"]) == pytest.approx(-0.5)
    assert float(m["margin"]) == pytest.approx(1.5)
    assert float(m["accuracy"]) == 1.0
    # equal policy and reference: loss log 2, accuracy 0 (h == 0 is not a win)
    z = np.zeros(3)
    loss, m = losses.dpo_loss(z - 4, z - 6, z - 4, z - 6, 0.1)
    assert float(loss) == pytest.approx(math.log(2.0), rel=1e-6) and float(m["accuracy"]) == 0.0


def test_dpo_label_smoothing_and_batch_mean():
    pc, pr = np.array([-1.0, -3.0]), np.array([-2.0, -1.0])
    rc, rr = np.zeros(2), np.zeros(2)  # h = (1, -2)
    beta, ls = 2.0, 0.1

    def softplus(x):
        return math.log1p(math.exp(x))

    # -log sigmoid(x) = softplus(-x)
    expected = np.mean([(1 - ls) * softplus(-beta * h) + ls * softplus(beta * h) for h in (1.0, -2.0)])
    loss, m = losses.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=ls)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(m["accuracy"]) == 0.5
    assert float(m["margin"]) == pytest.approx(beta * (1.0 - 2.0) / 2)


def test_ipo_hand_values_and_unknown_kind():
    # h = 3, beta 0.25 -> target 1 / (2 * 0.25) = 2 -> (3 - 2)^2 = 1; h = 2 sits at the target: loss 0
    args = np.array([-10.0, -10.0]), np.array([-15.0, -15.0]), np.array([-12.0, -12.0]), np.array([-14.0, -15.0])
    loss, _ = losses.dpo_loss(*args, 0.25, kind="ipo")
    assert float(loss) == pytest.approx((1.0 + 0.0) / 2)
    with pytest.raises(ValueError, match="hinge"):
        losses.dpo_loss(*args, 0.25, kind="hinge")


# --- KL control and best-of-n --------------------------------------------------------------------------------

def test_adaptive_kl_coef():
    assert float(losses.adaptive_kl_coef(0.1, 6.6, 6.0, 100, 1000)) == pytest.approx(0.1 * (1 + 0.1 * 0.1))
    assert float(losses.adaptive_kl_coef(0.1, 3.0, 6.0, 100, 1000)) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    # the error is capped at +20% however far the KL overshoots
    assert float(losses.adaptive_kl_coef(0.1, 600.0, 6.0, 100, 1000)) == pytest.approx(0.1 * 1.02)
    assert float(losses.adaptive_kl_coef(0.1, 6.0, 6.0, 100, 1000)) == pytest.approx(0.1)
    jitted = jax.jit(losses.adaptive_kl_coef)(np.float32(0.1), np.float32(12.0), 6.0, 10, 100)
    assert float(jitted) == pytest.approx(0.1 * 1.02)


def test_best_of_n_kl():
    assert losses.best_of_n_kl(1) == 0.0
    assert losses.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert losses.best_of_n_kl(64) < math.log(64)
