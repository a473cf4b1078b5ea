"""`mode=reward`: a reward model trained on preferences with the Bradley–Terry loss, and its use as a scorer.

The reward model is the decoder with a scalar head (`model.scalar_head`), started from align.init_from
(an SFT or pretraining checkpoint; the head is new); its score of prompt + response is the head's
output at the last real token, the response's <|eos|>. Data: align.data (JSONL of pairs
{"prompt","chosen","rejected"} or M-way rankings {"prompt","responses","ranking"}) or the embedded
task's preference pairs. A batch element is one prompt with all its responses, each scored once; a
ranking of M contributes all M(M-1)/2 pairs, each weighted 1/C(M,2) so every prompt counts once
(InstructGPT). Eval reports held-out pairwise accuracy. With align.normalize_reward the saved
`reward_bias` is the mean score of the preferred responses of the training set (the SFT
distribution), and `RewardModel.score` subtracts it, so those score 0 on average.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.align import data as align_data
from gptjax.align.losses import pairwise_loss
from gptjax.align.stage import (AlignError, bucket, full_batches, stage_identity, start_tokenizer,
                                starting_network, supervised_stage, with_adapters, with_scalar_head)
from gptjax.align.tasks import get_task
from gptjax.data.tokenizer import BOS_ID, PAD_ID, pad_rows
from gptjax.parallel.mesh import batch_sharding, to_device, to_host
from gptjax.model.build import model_graphdef
from gptjax.train.loop import run_in_mesh
from gptjax.train.network import load_network

NORMALIZATION_ROWS = 512  # preferred responses scored for the reward bias


def last_token_scores(params, graphdef, tokens_RxL, lengths_R):
    """scores_R: the scalar head at each row's last real token (index length - 1), float32."""
    model = nnx.merge(graphdef, params)
    values_RxL = model.scalar(tokens_RxL).astype(jnp.float32)
    return jnp.take_along_axis(values_RxL, (lengths_R - 1)[:, None], axis=1)[:, 0]


@dataclasses.dataclass
class GroupBatch:
    """B preference groups as arrays: M response rows per group (unused rows are [BOS], weight 0)."""

    tokens_RxL: np.ndarray  # R = B*M
    lengths_R: np.ndarray
    prompt_len_R: np.ndarray  # the response of row r is tokens_RxL[r, prompt_len_R[r]:lengths_R[r]]
    pairs_BxPx2: np.ndarray  # (winner, loser) indices within the group's M rows
    weight_BxP: np.ndarray


def group_arrays(groups, M: int, P: int, length: int) -> GroupBatch:
    rows, prompt_len = [], []
    pairs, weights = np.zeros((len(groups), P, 2), np.int32), np.zeros((len(groups), P), np.float32)
    for b, g in enumerate(groups):
        rows += [g.prompt + r for r in g.responses] + [[BOS_ID]] * (M - len(g.responses))
        prompt_len += [len(g.prompt)] * len(g.responses) + [1] * (M - len(g.responses))
        pairs[b, :len(g.pairs)] = g.pairs
        weights[b, :len(g.pairs)] = g.weight
    return GroupBatch(pad_rows(rows, length, PAD_ID), np.array([len(r) for r in rows], np.int32),
                      np.array(prompt_len, np.int32), pairs, weights)


def preference_loss(params, graphdef, batch: dict):
    """Weighted Bradley–Terry loss over every pair of every group: (loss, accuracy)."""
    scores_BxM = last_token_scores(params, graphdef, batch["tokens_RxL"], batch["lengths_R"]).reshape(
        batch["weight_BxP"].shape[0], -1)
    winner_BxP = jnp.take_along_axis(scores_BxM, batch["pairs_BxPx2"][..., 0], axis=1)
    loser_BxP = jnp.take_along_axis(scores_BxM, batch["pairs_BxPx2"][..., 1], axis=1)
    return pairwise_loss(winner_BxP.ravel(), loser_BxP.ravel(), batch["weight_BxP"].ravel())


def reward_loss(params, batch: dict, graphdef):
    """`preference_loss` as (loss, (metrics, the batch's total pair weight))."""
    loss, accuracy = preference_loss(params, graphdef, batch)
    return loss, ({"accuracy": accuracy}, jnp.sum(batch["weight_BxP"]))


def preference_batch(groups, n: int, M: int, P: int, length: int) -> dict:
    """Host arrays of preference groups (`group_arrays`); only the first n count (the rest weigh 0)."""
    batch = group_arrays(groups, M, P, length)
    batch.weight_BxP[n:] = 0.0
    return dataclasses.asdict(batch)


def preference_shardings(mesh, rules) -> dict:
    rows, rows1 = batch_sharding(mesh, rules), batch_sharding(mesh, rules, 1)
    return dict(tokens_RxL=rows, lengths_R=rows1, prompt_len_R=rows1, pairs_BxPx2=batch_sharding(mesh, rules, 3),
                weight_BxP=rows)


def preference_file(cfg, workdir: str) -> str:
    """align.data, or the embedded task's preference pairs written to WORKDIR/task_preferences_*.jsonl."""
    if cfg.align.data:
        return cfg.align.data
    a = cfg.align  # named by what generated it, so a changed config never reads another's pairs
    path = os.path.join(workdir, f"task_preferences_{a.task}_{a.num_examples}_seed{cfg.seed}.jsonl")
    if not os.path.isfile(path):
        align_data.write_preferences(path, get_task(cfg.align.task).preference_rows(cfg.align.num_examples, cfg.seed))
    return path


def preference_rows(path: str, cfg) -> tuple[list, list]:
    """(train, val) raw rows of a preference JSONL, split by their prompt's text (align/data.py split_train_val)."""
    rows = [row for _, row in align_data.read_jsonl(path)]
    return align_data.split_train_val(rows, cfg.align.val_fraction, cfg.align.split_seed,
                                      lambda row: align_data.prompt_key(row.get("prompt")))


def preference_groups(path: str, cfg, tokenizer, max_len: int):
    """(train, val) PreferenceGroups of a preference JSONL, split as `preference_rows` splits its rows."""
    groups = align_data.load_preferences(path, tokenizer, max_len)  # one per row, in file order
    if len(groups) < 2:
        raise align_data.AlignDataError(f"{path}: {len(groups)} preference rows; need at "
                                        "least 2 (one to train on, one to evaluate)")
    rows = [row for _, row in align_data.read_jsonl(path)]
    train, val = align_data.split_train_val(list(zip(rows, groups)), cfg.align.val_fraction, cfg.align.split_seed,
                                            lambda pair: align_data.prompt_key(pair[0].get("prompt")))
    return [g for _, g in train], [g for _, g in val]


def preference_texts(path: str, cfg) -> list[str]:
    """The texts a fresh stage tokenizer learns from: the training rows' only (never held-out ones)."""
    texts = []
    for row in preference_rows(path, cfg)[0]:
        texts += [content for _, content in align_data.prompt_key(row.get("prompt")) if isinstance(content, str)]
        for key in ("chosen", "rejected"):
            if isinstance(row.get(key), str):
                texts.append(row[key])
        texts += [r for r in row.get("responses", []) if isinstance(r, str)]
    return texts


def reward(cfg, workdir: str) -> dict:
    """Trains a reward model per cfg (mode=reward), resuming from `workdir`; returns the final metrics."""
    return run_in_mesh(_reward, cfg, workdir)


def _reward(cfg, workdir: str, mesh) -> dict:
    rules = tuple(cfg.parallel.rules)
    path = preference_file(cfg, workdir)
    tokenizer = start_tokenizer(cfg, workdir, lambda: preference_texts(path, cfg))
    start = starting_network(cfg, tokenizer, mesh, rules)
    model_cfg, init = with_scalar_head(start, jax.random.key(cfg.seed + 1), mesh, rules)
    model_cfg, init = with_adapters(cfg, model_cfg, init, mesh, rules)
    train_set, val_set = preference_groups(path, cfg, tokenizer, model_cfg.max_len)
    M = max(len(g.responses) for g in train_set + val_set)
    P = M * (M - 1) // 2
    length = bucket(max(len(g.prompt) + len(r) for g in train_set + val_set for r in g.responses), model_cfg.max_len)
    graphdef = model_graphdef(model_cfg, rules)
    score_fn = jax.jit(functools.partial(last_token_scores, graphdef=graphdef))
    rows, B = batch_sharding(mesh, rules), cfg.align.batch_size

    def reward_bias(items) -> dict:
        if not cfg.align.normalize_reward:
            return {"reward_bias": 0.0}
        preferred = [g.prompt + g.responses[g.pairs[0][0]] for g in train_set[:NORMALIZATION_ROWS]]
        scores = []
        for chunk, n in full_batches(preferred, B):
            s = score_fn(items["params"], tokens_RxL=to_device(pad_rows(chunk, length, PAD_ID), rows),
                         lengths_R=np.array([len(r) for r in chunk], np.int32))
            scores += to_host(s)[:n].tolist()
        return {"reward_bias": float(np.mean(scores))}

    result = supervised_stage(
        cfg, workdir, mesh, "reward", model_cfg, tokenizer, init,
        loss_fn=functools.partial(reward_loss, graphdef=graphdef),
        to_batch=functools.partial(preference_batch, M=M, P=P, length=length),
        batch_shardings=preference_shardings(mesh, rules), train_set=train_set, val_set=val_set,
        identity=stage_identity(cfg, examples=len(train_set)), extra_meta=reward_bias)
    return dict(result, train_groups=len(train_set), val_groups=len(val_set))


class RewardModel:
    """A trained reward model (a mode=reward workdir) as a scorer of token rows."""

    def __init__(self, workdir: str, mesh, rules, what: str = "align.reward_model"):
        network = load_network(workdir, mesh, rules, what=what)
        if network.stage != "reward":
            raise AlignError(f"{what}={workdir!r} holds a {network.stage!r} checkpoint, not a reward model; give the "
                             "workdir of a mode=reward run")
        self.network, self.params, self.model_cfg = network, network.params, network.model_cfg
        self.bias = float(network.meta.get("reward_bias", 0.0))
        self.graphdef = model_graphdef(network.model_cfg, rules)
        self._score = jax.jit(functools.partial(last_token_scores, graphdef=self.graphdef))

    def score_device(self, tokens_RxL, lengths_R):
        """Normalised scores_R on device (for jitted RL code paths)."""
        return self._score(self.params, tokens_RxL=tokens_RxL, lengths_R=lengths_R) - self.bias

    def __call__(self, tokens_RxL, lengths_R) -> np.ndarray:
        """Host scores of right-padded rows (the best-of-N scorer interface)."""
        tokens_RxL = np.asarray(tokens_RxL, np.int32)
        length = bucket(tokens_RxL.shape[1], self.model_cfg.max_len)
        if tokens_RxL.shape[1] > self.model_cfg.max_len:
            raise AlignError(f"rows of {tokens_RxL.shape[1]} tokens exceed the reward model's context "
                             f"({self.model_cfg.max_len})")
        return to_host(self.score_device(pad_rows(tokens_RxL, length), np.asarray(lengths_R, np.int32))).astype(np.float64)
