"""Rollouts for RL: completions from the project's jitted KV-cache `generate`, laid out for training.

`generate` left-pads prompts; training's forward pass has no padding mask, so each rollout is laid out
again as prompt + completion from column 0, right-padded to a fixed length L (causal attention means
the trailing pads change nothing before them). Per-token quantities live on a response axis of E =
max_new_tokens: token t of row b is tokens_BxL[b, p_b + t], predicted from position p_b - 1 + t.
`response_forward` computes the policy's (or reference's) logprobs, entropies and optional values of
those tokens in one forward pass, the LM head and value head evaluated at the E response positions only.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.align.losses import entropy, token_logprobs
from gptjax.data.tokenizer import PAD_ID, pad_rows
from gptjax.sample.generate import Completion, generate
from gptjax.sample.strategies import Strategy


@dataclasses.dataclass
class Rollouts:
    """R sampled completions as host arrays in the training layout."""

    tokens_RxL: np.ndarray  # prompt + completion, right-padded with <|pad|>
    positions_RxE: np.ndarray  # where each response token is predicted from: p_b - 1 + t (clipped to L - 2)
    response_RxE: np.ndarray  # the completion tokens, <|pad|> after the last
    mask_RxE: np.ndarray  # True on real completion tokens
    prompt_len_R: np.ndarray
    length_R: np.ndarray  # completion tokens generated (the <|eos|> included when stopped)
    stopped_R: np.ndarray  # True when the completion ended with <|eos|>
    texts: list[str]  # decoded completions without the stop token

    @property
    def last_index_R(self) -> np.ndarray:
        """Column of each row's last real token (a reward model's score position)."""
        return self.prompt_len_R + self.length_R - 1


def layout(prompts: list[list[int]], completions: list[Completion], length: int, max_new_tokens: int) -> Rollouts:
    """Puts prompts + completions in the training layout of `length` columns."""
    rows = [list(p) + c.tokens for p, c in zip(prompts, completions)]
    prompt_len_R = np.array([len(p) for p in prompts], np.int32)
    length_R = np.array([len(c.tokens) for c in completions], np.int32)
    t_1xE = np.arange(max_new_tokens)[None, :]
    return Rollouts(
        tokens_RxL=pad_rows(rows, length, PAD_ID),
        positions_RxE=np.minimum(prompt_len_R[:, None] - 1 + t_1xE, length - 2).astype(np.int32),
        response_RxE=pad_rows([c.tokens for c in completions], max_new_tokens, PAD_ID),
        mask_RxE=t_1xE < length_R[:, None],
        prompt_len_R=prompt_len_R,
        length_R=length_R,
        stopped_R=np.array([c.finish_reason == "stop_token" for c in completions]),
        texts=[c.text for c in completions],
    )


def sample_rollouts(model_cfg, params, prompts: list[list[int]], key, *, max_new_tokens: int, strategy: Strategy,
                    length: int, tokenizer, rules: tuple = ()) -> Rollouts:
    """One completion per prompt (repeat a prompt for a group), keys split from `key`, in training layout."""
    completions = generate(model_cfg, params, prompts, max_new_tokens=max_new_tokens, strategy=strategy,
                           seed=jax.random.split(key, len(prompts)), tokenizer=tokenizer, rules=rules)
    return layout(prompts, completions, length, max_new_tokens)


def response_forward(params, graphdef, tokens_RxL, positions_RxE, response_RxE, with_values: bool = False,
                     temperature: float = 1.0) -> dict:
    """One forward pass: float32 logp_RxE and entropy_RxE of the response tokens under softmax(logits /
    temperature), the sampler's distribution (and values_RxE, the scalar head at the state before each
    token, when `with_values`)."""
    model = nnx.merge(graphdef, params)
    hidden_RxTxD = model.hidden(tokens_RxL[:, :-1])
    at_RxExD = jnp.take_along_axis(hidden_RxTxD, positions_RxE[..., None], axis=1)
    logits_RxExV = model.logits(at_RxExD) / temperature
    out = dict(logp=token_logprobs(logits_RxExV, response_RxE), entropy=entropy(logits_RxExV))
    if with_values:
        out["values"] = model.scalar_head(at_RxExD * model.output_mult)[..., 0].astype(jnp.float32)
    return out
