"""PPO-RLHF's advantages (Ziegler et al. 2019, InstructGPT): per-token rewards -> GAE with a value model.

The reward of token t is -beta * KL_t (the per-token penalty toward the reference, when it is in the
reward), plus the sequence's score on its last real token (the <|eos|>, or the last token of a
truncated completion). GAE(gamma, lambda) against the value model's estimates gives advantages and
returns; advantages are whitened over the batch's real tokens. The clipped losses live in losses.py
and the loop in rl.py.
"""

import jax.numpy as jnp

from gptjax.align.losses import gae, masked_whiten


def token_rewards(scores_R, kl_RxE, mask_RxE, kl_coef):
    """rewards_RxE: -kl_coef * KL per token, plus the score at each row's last real token."""
    mask = mask_RxE.astype(jnp.float32)
    last_RxE = mask * (1.0 - jnp.pad(mask[:, 1:], ((0, 0), (0, 1))))  # 1 at the last real token
    return (-kl_coef * kl_RxE + scores_R[:, None] * last_RxE) * mask


def advantages(values_RxE, scores_R, kl_RxE, mask_RxE, kl_coef, *, gamma: float, lam: float, whiten: bool) -> dict:
    """{"advantages", "returns"} of PPO: GAE over the token rewards, whitened advantages if `whiten`."""
    rewards_RxE = token_rewards(scores_R, kl_RxE, mask_RxE, kl_coef)
    adv_RxE, returns_RxE = gae(rewards_RxE, values_RxE, mask_RxE, gamma, lam)
    if whiten:
        adv_RxE = masked_whiten(adv_RxE, mask_RxE)
    return dict(advantages=adv_RxE, returns=returns_RxE, rewards=rewards_RxE)


def explained_variance(values_RxE, returns_RxE, mask_RxE):
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 = perfect values, <= 0 = useless
    (nan when the returns do not vary). A device scalar: computed inside the jitted scoring pass."""
    mask = mask_RxE.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)

    def variance(x_RxE):
        mean = jnp.sum(x_RxE * mask) / count
        return jnp.sum(jnp.square(x_RxE - mean) * mask) / count

    returns_variance = variance(returns_RxE)
    return jnp.where(returns_variance > 0, 1.0 - variance(returns_RxE - values_RxE) / returns_variance, jnp.nan)
