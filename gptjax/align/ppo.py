"""PPO-RLHF's advantages (Ziegler et al. 2019, InstructGPT): per-token rewards -> GAE with a value model.

The reward of token t is -beta * KL_t (the per-token penalty toward the reference, when it is in the
reward), plus the sequence's score on its last real token (the <|eos|>, or the last token of a
truncated completion). GAE(gamma, lambda) against the value model's estimates gives advantages and
returns; advantages are whitened over the batch's real tokens. The clipped losses live in losses.py
and the loop in rl.py.
"""

import jax.numpy as jnp

from gptjax.align.losses import gae, masked_whiten


def token_rewards(scores_R, kl_RxN, mask_RxN, kl_coef):
    """rewards_RxN: -kl_coef * KL per token, plus the score at each row's last real token."""
    mask = mask_RxN.astype(jnp.float32)
    last_RxN = mask * (1.0 - jnp.pad(mask[:, 1:], ((0, 0), (0, 1))))  # 1 at the last real token
    return (-kl_coef * kl_RxN + scores_R[:, None] * last_RxN) * mask


def advantages(values_RxN, scores_R, kl_RxN, mask_RxN, kl_coef, *, gamma: float, lam: float, whiten: bool) -> dict:
    """{"advantages", "returns"} of PPO: GAE over the token rewards, whitened advantages if `whiten`."""
    rewards_RxN = token_rewards(scores_R, kl_RxN, mask_RxN, kl_coef)
    adv_RxN, returns_RxN = gae(rewards_RxN, values_RxN, mask_RxN, gamma, lam)
    if whiten:
        adv_RxN = masked_whiten(adv_RxN, mask_RxN)
    return dict(advantages=adv_RxN, returns=returns_RxN, rewards=rewards_RxN)


def explained_variance(values_RxN, returns_RxN, mask_RxN):
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 = perfect values, <= 0 = useless
    (nan when the returns do not vary). A device scalar: computed inside the jitted scoring pass."""
    mask = mask_RxN.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)

    def variance(x_RxN):
        mean = jnp.sum(x_RxN * mask) / count
        return jnp.sum(jnp.square(x_RxN - mean) * mask) / count

    returns_variance = variance(returns_RxN)
    return jnp.where(returns_variance > 0, 1.0 - variance(returns_RxN - values_RxN) / returns_variance, jnp.nan)
