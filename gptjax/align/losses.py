"""Losses and estimators for post-training: reward-model, PPO, GRPO/RLOO, DPO/IPO and KL bookkeeping.

Pure jax.numpy functions, float32 math, jittable: string options (`mode`, `kind`, `estimator`) are Python
values resolved at trace time; nothing branches on a traced value. Response tokens are laid out as
B rows of T positions with a mask that is True on each row's real tokens (a valid prefix where noted).
Each function's docstring gives its formula and source; README "Post-training" lists the defaults.
"""

import math

import jax
import jax.numpy as jnp

from gptjax.config.align import DPO_LOSSES, GRPO_ADVANTAGES, KL_ESTIMATORS, LOSS_AGGREGATIONS
from gptjax.sample.strategies import token_logprobs as decoded_token_logprobs

ADVANTAGE_KINDS = GRPO_ADVANTAGES + ("rloo",)  # mode=rloo's leave-one-out baseline


def masked_mean(x, mask, axis=None):
    """sum(x * mask) / max(sum(mask), 1) over `axis` (all axes when None); `mask` is bool or float weights.

    The floor of 1 makes an all-padding slice average to 0 instead of nan.
    """
    mask = jnp.asarray(mask, jnp.float32)
    total = jnp.sum(jnp.asarray(x, jnp.float32) * mask, axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_whiten(x_BxT, mask_BxT, eps: float = 1e-8):
    """x_BxT shifted and scaled to mean 0, variance 1 over the masked entries of the whole batch; 0 elsewhere."""
    mean = masked_mean(x_BxT, mask_BxT)
    var = masked_mean(jnp.square(x_BxT - mean), mask_BxT)
    return jnp.where(mask_BxT, (x_BxT - mean) * jax.lax.rsqrt(var + eps), 0.0)


def aggregate(loss_BxT, mask_BxT, mode: str):
    """Scalar loss from per-token losses.

    "token_mean": mean over all real tokens of the batch (long responses weigh more).
    "seq_mean": mean within each sequence, then over the sequences that have at least one token.
    "max_len": Dr. GRPO's sum / (B * T), a constant divisor so a token's weight does not depend on length.
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss aggregation mode {mode!r} is unknown; use one of {', '.join(LOSS_AGGREGATIONS)}")
    if mode == "token_mean":
        return masked_mean(loss_BxT, mask_BxT)
    if mode == "seq_mean":
        per_sequence_B = masked_mean(loss_BxT, mask_BxT, axis=-1)
        return masked_mean(per_sequence_B, jnp.any(mask_BxT, axis=-1))
    weighted_BxT = jnp.asarray(loss_BxT, jnp.float32) * jnp.asarray(mask_BxT, jnp.float32)
    return jnp.sum(weighted_BxT) / weighted_BxT.size


def _log_softmax_2d(logits_BxTxV):
    # XLA:CPU runs the backward pass of the (B*T, V) view much faster than that of the 3-D array.
    B, T, V = logits_BxTxV.shape
    return jax.nn.log_softmax(logits_BxTxV.reshape(B * T, V).astype(jnp.float32), axis=-1)


def token_logprobs(logits_BxTxV, tokens_BxT):
    """logp_BxT: float32 log-softmax of logits_BxTxV at tokens_BxT (the decoder's own `token_logprobs`,
    on the 2-D view XLA:CPU differentiates fastest)."""
    B, T, V = logits_BxTxV.shape
    return decoded_token_logprobs(logits_BxTxV.reshape(B * T, V), tokens_BxT.reshape(B * T)).reshape(B, T)


def entropy(logits_BxTxV):
    """entropy_BxT: float32 entropy of softmax(logits_BxTxV) at each position."""
    B, T, _ = logits_BxTxV.shape
    logp_RxV = _log_softmax_2d(logits_BxTxV)
    p_RxV = jnp.exp(logp_RxV)
    # A banned token (logit -inf) has p = 0 and must add 0, not 0 * -inf = nan (also in the gradient).
    finite_logp_RxV = jnp.where(p_RxV > 0, logp_RxV, 0.0)
    return -jnp.sum(p_RxV * finite_logp_RxV, axis=-1).reshape(B, T)


def kl_estimates(logp_BxT, ref_logp_BxT):
    """Per-token estimators of KL(pi || ref) for tokens sampled from pi (Schulman, "Approximating KL").

    With log_ratio = ref - logp: k1 = -log_ratio (unbiased, can be negative), k2 = log_ratio^2 / 2
    (biased, low variance), k3 = exp(log_ratio) - 1 - log_ratio (unbiased, always >= 0).
    Returns {"k1", "k2", "k3"}, each BxT float32.
    """
    log_ratio_BxT = jnp.asarray(ref_logp_BxT, jnp.float32) - jnp.asarray(logp_BxT, jnp.float32)
    return {
        "k1": -log_ratio_BxT,
        "k2": 0.5 * jnp.square(log_ratio_BxT),
        "k3": jnp.expm1(log_ratio_BxT) - log_ratio_BxT,  # expm1 keeps precision when the policies are close
    }


K3_MAX_LOG_RATIO, K3_MAX = 20.0, 10.0  # verl's low_var_kl bounds


def kl_penalty(logp_BxT, ref_logp_BxT, estimator: str):
    """kl_BxT: the per-token KL estimate named by `estimator` ("k1", "k2" or "k3"), the one that enters
    the reward or the loss; see kl_estimates. k3 is exp(log_ratio) - 1 - log_ratio: one sampled token
    the policy has made rare but the reference still likes (log_ratio of +15, say) gives exp(15) and a
    gradient spike that wrecks a step, so k3 here uses log_ratio clipped to +-20 and is capped at 10
    (as verl does; the clip only acts far beyond any KL an RLHF run should reach). The logged KL
    metrics (kl_estimates) are not clipped."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} is unknown; use one of {', '.join(KL_ESTIMATORS)}")
    if estimator != "k3":
        return kl_estimates(logp_BxT, ref_logp_BxT)[estimator]
    log_ratio_BxT = jnp.asarray(ref_logp_BxT, jnp.float32) - jnp.asarray(logp_BxT, jnp.float32)
    log_ratio_BxT = jnp.clip(log_ratio_BxT, -K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return jnp.minimum(jnp.expm1(log_ratio_BxT) - log_ratio_BxT, K3_MAX)


def pairwise_loss(r_chosen_P, r_rejected_P, weight_P):
    """Bradley–Terry loss over P weighted pairs: (loss, accuracy), both weighted means over pairs.

    loss = sum(w * -log sigmoid(r_chosen - r_rejected)) / sum(w); accuracy = weighted share with
    r_chosen > r_rejected. Weight 1 for a plain pair, 1/C(K,2) for each pair of a K-way ranking (so a
    prompt counts once), 0 for a padding pair.
    """
    weight_P = jnp.asarray(weight_P, jnp.float32)
    margin_P = jnp.asarray(r_chosen_P, jnp.float32) - jnp.asarray(r_rejected_P, jnp.float32)
    # The floor only matters for an all-padding batch, which then gives 0 instead of nan.
    total = jnp.maximum(jnp.sum(weight_P), 1e-12)
    loss = jnp.sum(weight_P * -jax.nn.log_sigmoid(margin_P)) / total
    accuracy = jnp.sum(weight_P * (margin_P > 0)) / total
    return loss, accuracy


def gae(rewards_BxT, values_BxT, mask_BxT, gamma, lam):
    """Generalized advantage estimation over rows whose real tokens are a prefix (mask True for t < n_b).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after a row's
    last real token counts as 0 (the episode ended). Returns (advantages_BxT, returns_BxT = A + V),
    both 0 where the mask is False.
    """
    mask_BxT = jnp.asarray(mask_BxT, bool)
    rewards_BxT = jnp.asarray(rewards_BxT, jnp.float32)
    values_BxT = jnp.where(mask_BxT, jnp.asarray(values_BxT, jnp.float32), 0.0)
    next_values_BxT = jnp.pad(values_BxT[:, 1:], ((0, 0), (0, 1)))
    # Zeroing delta past the prefix keeps padding out of the recursion, so A is 0 after each row's end.
    delta_BxT = jnp.where(mask_BxT, rewards_BxT + gamma * next_values_BxT - values_BxT, 0.0)

    def step(next_advantage_B, delta_B):
        advantage_B = delta_B + gamma * lam * next_advantage_B
        return advantage_B, advantage_B

    _, advantages_TxB = jax.lax.scan(step, jnp.zeros(delta_BxT.shape[0], jnp.float32), delta_BxT.T, reverse=True)
    advantages_BxT = advantages_TxB.T
    return advantages_BxT, advantages_BxT + values_BxT  # both already 0 past each row's end


def ppo_policy_loss(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip, mode: str = "token_mean"):
    """PPO clipped surrogate: (loss, metrics).

    ratio = exp(logp - old_logp); per-token loss max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)),
    aggregated by `aggregate(mode)`. Metrics: clipfrac (share of tokens where the clipped term wins),
    approx_kl (mean of (logp - old_logp)^2 / 2) and ratio_mean, all masked means.
    """
    advantages_BxT = jnp.asarray(advantages_BxT, jnp.float32)
    log_ratio_BxT = jnp.asarray(logp_BxT, jnp.float32) - jnp.asarray(old_logp_BxT, jnp.float32)
    ratio_BxT = jnp.exp(log_ratio_BxT)
    unclipped_BxT = -advantages_BxT * ratio_BxT
    clipped_BxT = -advantages_BxT * jnp.clip(ratio_BxT, 1.0 - clip, 1.0 + clip)
    loss = aggregate(jnp.maximum(unclipped_BxT, clipped_BxT), mask_BxT, mode)
    metrics = {
        "clipfrac": masked_mean(clipped_BxT > unclipped_BxT, mask_BxT),
        "approx_kl": 0.5 * masked_mean(jnp.square(log_ratio_BxT), mask_BxT),
        "ratio_mean": masked_mean(ratio_BxT, mask_BxT),
    }
    return loss, metrics


def ppo_value_loss(values_BxT, old_values_BxT, returns_BxT, mask_BxT, clip):
    """Clipped value loss: (0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2), clipfrac).

    V_clipped = old + clip(V - old, -clip, clip) keeps the value head near the one that scored the
    rollout; clip <= 0 turns clipping off (the loss is then 0.5 * masked mean (V - R)^2, clipfrac 0).
    """
    values_BxT = jnp.asarray(values_BxT, jnp.float32)
    old_values_BxT = jnp.asarray(old_values_BxT, jnp.float32)
    returns_BxT = jnp.asarray(returns_BxT, jnp.float32)
    unclipped_BxT = jnp.square(values_BxT - returns_BxT)
    clipped_values_BxT = old_values_BxT + jnp.clip(values_BxT - old_values_BxT, -clip, clip)
    clipped_BxT = jnp.square(clipped_values_BxT - returns_BxT)
    # jnp.where rather than `if`, so `clip` may also be a traced scalar.
    use_clip = jnp.asarray(clip) > 0
    loss = 0.5 * masked_mean(jnp.where(use_clip, jnp.maximum(unclipped_BxT, clipped_BxT), unclipped_BxT), mask_BxT)
    clipfrac = masked_mean(use_clip & (clipped_BxT > unclipped_BxT), mask_BxT)
    return loss, clipfrac


def group_advantages(rewards_BxG, kind: str, eps: float = 1e-6):
    """advantages_BxG from the rewards of G samples per prompt.

    "grpo": (R - mean_G) / (std_G + eps), population std; "dr_grpo": R - mean_G (no std, which
    would up-weight near-uniform groups); "rloo": R minus the mean of the other G - 1 rewards, an
    unbiased baseline (= G/(G-1) * (R - mean_G)); needs G >= 2.
    """
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"advantage kind {kind!r} is unknown; use one of {', '.join(ADVANTAGE_KINDS)}")
    rewards_BxG = jnp.asarray(rewards_BxG, jnp.float32)
    G = rewards_BxG.shape[-1]
    if kind == "rloo" and G < 2:
        raise ValueError(f"rloo needs at least 2 samples per prompt, got a group size of {G}; raise the group size")
    mean_Bx1 = jnp.mean(rewards_BxG, axis=-1, keepdims=True)
    if kind == "grpo":
        return (rewards_BxG - mean_Bx1) / (jnp.std(rewards_BxG, axis=-1, keepdims=True) + eps)
    if kind == "dr_grpo":
        return rewards_BxG - mean_Bx1
    others_mean_BxG = (jnp.sum(rewards_BxG, axis=-1, keepdims=True) - rewards_BxG) / (G - 1)
    return rewards_BxG - others_mean_BxG


def frac_zero_std(rewards_BxG):
    """Share of the B groups whose G rewards are all equal: they carry no learning signal."""
    rewards_BxG = jnp.asarray(rewards_BxG, jnp.float32)
    constant_B = jnp.max(rewards_BxG, axis=-1) == jnp.min(rewards_BxG, axis=-1)
    return jnp.mean(constant_B.astype(jnp.float32))


def dpo_loss(policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, beta, kind: str = "sigmoid",
             label_smoothing: float = 0.0, weight_B=None):
    """DPO / IPO loss from sequence log-probs: (mean loss, metrics), means weighted by weight_B (default 1).

    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected).
    "sigmoid" (DPO): -(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h), where ls is the
    label smoothing (the assumed chance a preference label is flipped). "ipo": (h - 1 / (2 beta))^2,
    which stops pushing once the margin reaches its target. Inputs are summed log-probs (the caller may
    pass per-token averages for IPO). Metrics (means over B): chosen_reward = beta * (policy_chosen -
    ref_chosen), rejected_reward likewise, margin = their difference, accuracy = share with h > 0.
    """
    if kind not in DPO_LOSSES:
        raise ValueError(f"DPO loss kind {kind!r} is unknown; use one of {', '.join(DPO_LOSSES)}")
    chosen_B = jnp.asarray(policy_chosen_B, jnp.float32) - jnp.asarray(ref_chosen_B, jnp.float32)
    rejected_B = jnp.asarray(policy_rejected_B, jnp.float32) - jnp.asarray(ref_rejected_B, jnp.float32)
    h_B = chosen_B - rejected_B
    if kind == "sigmoid":
        loss_B = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h_B)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * h_B))
    else:
        loss_B = jnp.square(h_B - 1.0 / (2.0 * beta))
    weight_B = jnp.ones_like(h_B) if weight_B is None else jnp.asarray(weight_B, jnp.float32)

    def mean(x_B):
        return jnp.sum(x_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1e-12)

    metrics = {
        "chosen_reward": mean(beta * chosen_B),
        "rejected_reward": mean(beta * rejected_B),
        "margin": mean(beta * h_B),
        "accuracy": mean((h_B > 0).astype(jnp.float32)),
    }
    return mean(loss_B), metrics


def adaptive_kl_coef(coef, kl, target, n_steps, horizon):
    """Ziegler et al.'s KL controller: coef * (1 + e * n_steps / horizon), e = clip(kl / target - 1, ±0.2).

    The clip bounds how far one noisy KL measurement can move the coefficient. Python floats or jax scalars.
    """
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * n_steps / horizon)


def best_of_n_kl(n: int) -> float:
    """log(n) - (n - 1) / n: the analytic upper bound on KL(best-of-n || base) (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n
