"""The lm-evaluation-harness model class: a trained or imported gptjax network behind lm-eval's `LM` API.

`loglikelihood` and `loglikelihood_rolling` score tokens with one jitted forward pass over right-padded
batches (rows sorted by length, batch shapes bucketed so few programs compile); `generate_until` decodes with
the KV-cache `generate` (sample/generate.py), cutting at the request's stop strings. Tokenization follows
lm-eval's reference HF model: a context's trailing spaces move to the continuation, the continuation's
tokens are those of context + continuation past the context's, and every sequence starts with the
tokenizer's BOS where it has one (an empty context with its EOS where it has none). With `chat=True`,
lm-eval renders each prompt through the tokenizer's chat template (`apply_chat_template`), whose text
already begins with whatever BOS the template writes. Registered with lm-eval as "gptjax".
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptjax.align.chat import render, render_text
from gptjax.model.build import model_graphdef
from gptjax.parallel.mesh import batch_sharding, to_device, to_host
from gptjax.sample.generate import generate
from gptjax.sample.strategies import Strategy, token_logprobs
from gptjax.train.network import Network

LENGTH_BUCKET = 32  # padded lengths are multiples of this: a handful of compiled shapes per task
DEFAULT_MAX_GEN_TOKS = 256


@functools.lru_cache(maxsize=8)
def _scorer(graphdef):
    """The jitted (log p of each target, whether it is the argmax) of a model, compiled once per graphdef (so
    train.eval_tasks does not recompile at every evaluation)."""

    @jax.jit
    def score(params, inputs_BxT, targets_BxT):
        logits_BxTxV = nnx.merge(graphdef, params)(inputs_BxT)
        B, T, V = logits_BxTxV.shape
        logp_BxT = token_logprobs(logits_BxTxV.reshape(B * T, V), targets_BxT.reshape(B * T)).reshape(B, T)
        return logp_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT

    return score


@register_model("gptjax")
class GptjaxLM(LM):
    def __init__(self, network: Network, mesh, rules: tuple = (), batch_size: int = 16, chat: bool = False):
        super().__init__()
        if network.tokenizer is None:
            raise ValueError(f"{network.workdir} has no tokenizer (a synthetic-token run); evaluation reads text")
        self.network, self.tokenizer, self.rules, self.chat = network, network.tokenizer, tuple(rules), chat
        self.batch_size, self.max_len = batch_size, network.model_cfg.max_len
        self.sharding = batch_sharding(mesh, self.rules)
        self._score = _scorer(model_graphdef(network.model_cfg, self.rules))

    # ------------------------------------------------------------------ tokenization
    @property
    def prefix(self) -> list[int]:
        """What every sequence starts with: BOS where the tokenizer has one (none under a chat template,
        whose text holds it)."""
        if self.chat or self.tokenizer.bos_id is None:
            return []
        return [self.tokenizer.bos_id]

    @property
    def prefix_token(self) -> int:
        """lm-eval's prefix token (what an empty context, or a rolling window's start, conditions on): BOS, else EOS."""
        bos = self.tokenizer.bos_id
        return bos if bos is not None else self.tokenizer.eos_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=True)  # a rendered chat template's markers are specials

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return self.prefix or [self.prefix_token], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return self.prefix + ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ scoring
    def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives it) per (context, continuation)
        token pair; a pair longer than max_len + 1 keeps its last max_len + 1 tokens (left truncation)."""
        rows = []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("lm-eval asked to score an empty continuation")
            whole = (context + continuation)[-(self.max_len + 1):]
            rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
        results = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        for first in range(0, len(order), self.batch_size):
            chunk = order[first:first + self.batch_size]
            T = min(self.max_len, -(-max(len(rows[i][0]) for i in chunk) // LENGTH_BUCKET) * LENGTH_BUCKET)
            inputs_BxT = np.zeros((self.batch_size, T), np.int32)  # padded rows and columns are scored, then dropped
            targets_BxT = np.zeros((self.batch_size, T), np.int32)
            for b, i in enumerate(chunk):
                inputs_BxT[b, :len(rows[i][0])], targets_BxT[b, :len(rows[i][1])] = rows[i][0], rows[i][1]
            logp_BxT, greedy_BxT = to_host(self._score(self.network.params, to_device(inputs_BxT, self.sharding),
                                                       to_device(targets_BxT, self.sharding)))
            for b, i in enumerate(chunk):
                end, n = len(rows[i][1]), rows[i][2]
                results[i] = (float(logp_BxT[b, end - n:end].sum()), bool(greedy_BxT[b, end - n:end].all()))
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.score_pairs([self.encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Each document scored whole in disjoint windows of max_len predictions, each with as much context as
        fits (lm-eval's rolling windows), the first token predicted from the prefix token."""
        pairs, owner = [], []
        for n, request in enumerate(requests):
            tokens = self.encode(request.args[0])
            windows = get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token, max_seq_len=self.max_len,
                                                context_len=1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self.score_pairs(pairs)):
            totals[n] += logp
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests) -> list[str]:
        """Greedy (or, with do_sample, temperature) continuations cut before the first of `until`."""
        results = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = tuple([until] if isinstance(until, str) else until)
            max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            # lm-eval's HF model samples at temperature 1 when a task asks for sampling without naming one
            temperature = float(kwargs.get("temperature", 1.0)) if kwargs.get("do_sample", False) else 0.0
            groups.setdefault((until, max_new, temperature), []).append((i, context))
        for (until, max_new, temperature), items in groups.items():
            max_new = min(max_new, self.max_len - 1)
            for first in range(0, len(items), self.batch_size):
                chunk = items[first:first + self.batch_size]
                prompts = [(self.prefix + self.encode(c))[-(self.max_len - max_new):] for _, c in chunk]
                out = generate(self.network.model_cfg, self.network.params, prompts, max_new_tokens=max_new,
                               strategy=Strategy(temperature=temperature), stop_strings=until,
                               tokenizer=self.tokenizer, rules=self.rules)
                for (i, _), completion in zip(chunk, out):
                    results[i] = completion.text
        return results

    # ------------------------------------------------------------------ chat templates
    @property
    def tokenizer_name(self) -> str:
        return f"gptjax-{self.tokenizer.hash}"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return self.tokenizer.chat_template or "gptjax"

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the text the tokenizer's template renders (specials as their strings)."""
        if self.tokenizer.hf_config is not None:
            return render_text(chat_history, self.tokenizer, add_generation_prompt)
        return self.tokenizer.decode(render(chat_history, self.tokenizer, add_generation_prompt=add_generation_prompt).tokens)
