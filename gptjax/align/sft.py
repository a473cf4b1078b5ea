"""`mode=sft`: supervised fine-tuning on chat demonstrations, the loss on assistant tokens only.

Data: align.data, a JSONL of {"messages": [{"role", "content"}, ...]} rows, or the embedded
align.task's demonstrations. Each conversation is rendered by the chat template (chat.py) and
right-padded to one bucketed length; the loss is the mean cross-entropy over the tokens an
assistant turn generates (chat.Rendered.assistant_mask, shifted to the targets), so pads, system
and user turns teach nothing. Starts from align.init_from's checkpoint (pretraining or another
stage) or, with init_from "", a fresh config.model network and a tokenizer trained on the data.
"""

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.align import data as align_data
from gptjax.align.chat import render
from gptjax.align.stage import (bucket, stage_identity, start_tokenizer, starting_network, supervised_stage,
                                with_adapters)
from gptjax.align.tasks import get_task
from gptjax.data.tokenizer import PAD_ID, pad_rows
from gptjax.parallel.mesh import batch_sharding
from gptjax.model.build import model_graphdef
from gptjax.model.fused_cross_entropy import fused_cross_entropy
from gptjax.train.loop import run_in_mesh


def sft_rows(cfg) -> list[dict]:
    """The conversations to train on: align.data's rows, or the embedded task's demonstrations."""
    if cfg.align.data:
        return [row for _, row in align_data.read_jsonl(cfg.align.data)]
    return get_task(cfg.align.task).sft_rows(cfg.align.num_examples, cfg.seed)


def row_prompt_key(row) -> tuple:
    return align_data.prompt_key(align_data.conversation_prompt(row.get("messages") if isinstance(row, dict) else None))


def split_rows(cfg, rows: list) -> tuple[list, list]:
    """(train, val) of SFT rows by their prompt's text (align/data.py split_train_val)."""
    return align_data.split_train_val(rows, cfg.align.val_fraction, cfg.align.split_seed, row_prompt_key)


def conversation_texts(rows) -> list[str]:
    return [turn["content"] for row in rows for turn in row.get("messages", []) if isinstance(turn, dict)
            and isinstance(turn.get("content"), str)]


def training_texts(cfg) -> list[str]:
    """The texts a fresh stage tokenizer learns from: the training conversations only (never held-out ones)."""
    return conversation_texts(split_rows(cfg, sft_rows(cfg))[0])


def load_conversations(cfg, tokenizer, max_len: int):
    """Rendered conversations (chat.Rendered), checked against max_len, split into (train, val)."""
    rows = sft_rows(cfg)
    if cfg.align.data:
        rendered = align_data.load_sft(cfg.align.data, tokenizer, max_len)  # one per row, in file order
    else:
        rendered = []
        for i, row in enumerate(rows):
            r = render(row["messages"], tokenizer, where=f"task {cfg.align.task} row {i}")
            if len(r.tokens) > max_len:
                raise align_data.AlignDataError(f"task {cfg.align.task} row {i} has {len(r.tokens)} tokens, more than "
                                                f"model.max_len={max_len}; raise max_len")
            rendered.append(r)
    train, val = align_data.split_train_val(list(zip(rows, rendered)), cfg.align.val_fraction, cfg.align.split_seed,
                                            lambda pair: row_prompt_key(pair[0]))  # the split of split_rows
    return [r for _, r in train], [r for _, r in val]


def to_arrays(rendered, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BxL int32, loss_mask_BxL bool): right-padded tokens, and True at the assistant tokens."""
    tokens_BxL = pad_rows([r.tokens for r in rendered], length, PAD_ID)
    mask_BxL = pad_rows([r.assistant_mask for r in rendered], length, False, bool)
    return tokens_BxL, mask_BxL


def masked_lm_loss(params, graphdef, tokens_BxL, mask_BxL):
    """Mean cross-entropy of predicting tokens[:, 1:] where mask[:, 1:] (the assistant tokens): (loss, count).
    The LM head and the cross-entropy run fused in chunks with the mask as weights, as in pretraining
    (model/fused_cross_entropy.py): the B x T x V logits are never all held."""
    model = nnx.merge(graphdef, params)
    x_BxTxD = model.readout_input(model.hidden(tokens_BxL[:, :-1]))
    mask_BxT = mask_BxL[:, 1:].astype(jnp.float32)
    loss = fused_cross_entropy(x_BxTxD, model.readout_DxV(), tokens_BxL[:, 1:], weights_BxT=mask_BxT)
    return loss, jnp.sum(mask_BxT)


def sft_loss(params, batch, graphdef):
    """`masked_lm_loss` of a batch {tokens_BxL, mask_BxL} as (loss, (metrics, assistant tokens))."""
    loss, count = masked_lm_loss(params, graphdef, batch["tokens_BxL"], batch["mask_BxL"])
    return loss, ({}, count)


def sft_batch(rendered, n: int, length: int) -> dict:
    """Host arrays of rendered conversations; only the first n count (the rest are filler)."""
    tokens_BxL, mask_BxL = to_arrays(rendered, length)
    mask_BxL[n:] = False
    return dict(tokens_BxL=tokens_BxL, mask_BxL=mask_BxL)


def sft(cfg, workdir: str) -> dict:
    """Fine-tunes per cfg (mode=sft), resuming from `workdir`; returns the final metrics."""
    return run_in_mesh(_sft, cfg, workdir)


def _sft(cfg, workdir: str, mesh) -> dict:
    rules = tuple(cfg.parallel.rules)
    tokenizer = start_tokenizer(cfg, workdir, lambda: training_texts(cfg))
    start = starting_network(cfg, tokenizer, mesh, rules)
    model_cfg, init = with_adapters(cfg, start.model_cfg, start.params, mesh, rules)
    train_set, val_set = load_conversations(cfg, tokenizer, model_cfg.max_len)
    length = bucket(max(len(r.tokens) for r in train_set + val_set), model_cfg.max_len)
    rows = batch_sharding(mesh, rules)
    result = supervised_stage(
        cfg, workdir, mesh, "sft", model_cfg, tokenizer, init,
        loss_fn=functools.partial(sft_loss, graphdef=model_graphdef(model_cfg, rules)),
        to_batch=functools.partial(sft_batch, length=length), batch_shardings=dict(tokens_BxL=rows, mask_BxL=rows),
        train_set=train_set, val_set=val_set, identity=stage_identity(cfg, examples=len(train_set)),
        count_name="assistant_tokens")
    return dict(result, train_examples=len(train_set), val_examples=len(val_set))
