"""How the next token is chosen from logits: greedy, temperature, top-k, top-p (nucleus), min-p.

Filters combine freely and apply in a fixed order, each to what the previous one left:
temperature -> top-k -> top-p -> min-p; the token is then drawn from softmax of what remains.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


class SampleError(ValueError):
    """A sampling request that cannot work (prompt, strategy, checkpoint, constraint); the message names
    the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Sampling settings; hashable, so jitted code specialises on them.

    temperature: logits are divided by it; 0 means greedy (argmax; the filters are then moot).
    top_k: keep the k most likely tokens (0 = off). Tokens tied with the k-th are kept too.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off).
    min_p: keep tokens at least min_p times as likely as the most likely one (0 = off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise SampleError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise SampleError(f"top_k={self.top_k}: must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise SampleError(f"top_p={self.top_p}: must be in (0, 1] (1 = off)")
        if not 0 <= self.min_p <= 1:
            raise SampleError(f"min_p={self.min_p}: must be in [0, 1] (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits_BxV, strategy: Strategy):
    """float32 logits_BxV of the distribution sampled from: scaled by 1/temperature, with -inf for
    the tokens the filters remove (and for tokens that were -inf already)."""
    x_BxV = logits_BxV.astype(jnp.float32) / (strategy.temperature or 1.0)
    if strategy.top_k:
        kth_Bx1 = jax.lax.top_k(x_BxV, min(strategy.top_k, x_BxV.shape[-1]))[0][:, -1:]
        x_BxV = jnp.where(x_BxV < kth_Bx1, -jnp.inf, x_BxV)
    if strategy.top_p < 1:
        sorted_BxV = -jnp.sort(-x_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # Keep a token while the mass before it is below top_p: the first token is always kept.
        n_keep_B = jnp.sum(jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < strategy.top_p, axis=-1)
        cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, n_keep_B[:, None] - 1, axis=-1)
        x_BxV = jnp.where(x_BxV < cutoff_Bx1, -jnp.inf, x_BxV)
    if strategy.min_p > 0:  # p < min_p * p_max  <=>  logit < max logit + log(min_p)
        x_BxV = jnp.where(x_BxV < x_BxV.max(-1, keepdims=True) + math.log(strategy.min_p), -jnp.inf, x_BxV)
    return x_BxV


def sample_tokens(keys_B, logits_BxV, strategy: Strategy):
    """tokens_B drawn per row with that row's key (so a row's draw does not depend on the others)."""
    if strategy.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    filtered_BxV = filter_logits(logits_BxV, strategy)
    return jax.vmap(jax.random.categorical)(keys_B, filtered_BxV).astype(jnp.int32)


def token_logprobs(logits_BxV, tokens_B):
    """logprob_B of `tokens_B` under softmax(logits_BxV) in float32: the model's own distribution,
    before temperature, filters or constraints."""
    logprobs_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs_BxV, tokens_B[:, None], axis=-1)[:, 0]
