"""GRPO and RLOO advantages: G completions per prompt, a baseline from the group instead of a value model.

GRPO (Shao et al. 2024): A_i = (R_i - mean_G) / (std_G + eps); Dr. GRPO drops the std scaling (and rl.py
sums the loss over tokens / (B * L_max) instead of averaging per sequence). RLOO (Ahmadian et al.
2024): A_i = R_i - mean of the other G-1 rewards. The sequence reward R_i is the score minus
beta * the sequence's summed KL when the KL is in the reward; otherwise rl.py adds beta * KL as a loss
term. Every token of a completion gets its sequence's advantage.
"""

import jax.numpy as jnp

from gptjax.align.losses import group_advantages


def advantages(sequence_rewards_BxG, mask_RxE, kind: str) -> dict:
    """{"advantages": advantages_RxE}, R = B*G rows in group order, zero on padding tokens."""
    adv_R = group_advantages(sequence_rewards_BxG, kind).reshape(-1)
    return dict(advantages=adv_R[:, None] * mask_RxE.astype(jnp.float32))
