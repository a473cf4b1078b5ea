"""`mode=sft`: supervised fine-tuning on chat demonstrations, the loss on assistant tokens only.

Data: align.data, a JSONL of {"messages": [{"role", "content"}, ...]} rows, or the embedded
align.task's demonstrations. Each conversation is rendered by the chat template (chat.py) and
right-padded to one bucketed length; the loss is the mean cross-entropy over the tokens an
assistant turn generates (chat.Rendered.assistant_mask, shifted to the targets), so pads, system
and user turns teach nothing. Starts from align.init_from's checkpoint (pretraining or another
stage) or, with init_from "", a fresh config.model network and a tokenizer trained on the data.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax.align import data as align_data
from gptjax.align.chat import render
from gptjax.align.stage import (StageSpec, bucket, epoch_batch, full_batches, init_opt_state,
                                pad_rows, param_norm, params_shardings, run_stage, stage_identity, stage_optimizer, start_tokenizer,
                                starting_network)
from gptjax.align.tasks import get_task
from gptjax.data.tokenizer import PAD_ID
from gptjax.parallel.mesh import batch_sharding, replicated
from gptjax.model.build import model_graphdef
from gptjax.train.loop import run_in_mesh
from gptjax.train.state import placed
from gptjax.train.xla_options import training_compiler_options


def sft_rows(cfg) -> list[dict]:
    """The conversations to train on: align.data's rows, or the embedded task's demonstrations."""
    if cfg.align.data:
        return [row for _, row in align_data.read_jsonl(cfg.align.data)]
    return get_task(cfg.align.task).sft_rows(cfg.align.num_examples, cfg.seed)


def conversation_texts(rows) -> list[str]:
    return [turn["content"] for row in rows for turn in row.get("messages", []) if isinstance(turn, dict)
            and isinstance(turn.get("content"), str)]


def load_conversations(cfg, tokenizer, max_len: int):
    """Rendered conversations (chat.Rendered), checked against max_len, split into (train, val)."""
    if cfg.align.data:
        rendered = align_data.load_sft(cfg.align.data, tokenizer, max_len)
    else:
        rendered = []
        for i, row in enumerate(sft_rows(cfg)):
            r = render(row["messages"], tokenizer, where=f"task {cfg.align.task} row {i}")
            if len(r.tokens) > max_len:
                raise align_data.AlignDataError(f"task {cfg.align.task} row {i} has {len(r.tokens)} tokens, more than "
                                                f"model.max_len={max_len}; raise max_len")
            rendered.append(r)
    return align_data.split_train_val(rendered, cfg.align.val_fraction, cfg.align.split_seed, prompt_part)


def prompt_part(rendered) -> list[int]:
    """The tokens before the first assistant token: the prompt, as chat.prompt_tokens renders it."""
    first = rendered.assistant_mask.index(True) if True in rendered.assistant_mask else len(rendered.tokens)
    return rendered.tokens[:first]


def to_arrays(rendered, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BxL int32, loss_mask_BxL bool): right-padded tokens, and True at the assistant tokens."""
    tokens_BxL = pad_rows([r.tokens for r in rendered], length, PAD_ID)
    mask_BxL = pad_rows([r.assistant_mask for r in rendered], length, False, bool)
    return tokens_BxL, mask_BxL


def masked_lm_loss(params, graphdef, tokens_BxL, mask_BxL):
    """Mean cross-entropy of predicting tokens[:, 1:] where mask[:, 1:] (the assistant tokens): (loss, count)."""
    model = nnx.merge(graphdef, params)
    logits_BxTxV = model(tokens_BxL[:, :-1])
    B, T, V = logits_BxTxV.shape
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.reshape(B * T, V).astype(jnp.float32), tokens_BxL[:, 1:].reshape(B * T)).reshape(B, T)
    mask_BxT = mask_BxL[:, 1:].astype(jnp.float32)
    count = jnp.sum(mask_BxT)
    return jnp.sum(ce_BxT * mask_BxT) / jnp.maximum(count, 1.0), count


def make_sft_step(graphdef, tx, schedule):
    def sft_step(items, tokens_BxL, mask_BxL):
        params, train = items["params"], items["train"]
        (loss, count), grads = jax.value_and_grad(masked_lm_loss, has_aux=True)(params, graphdef, tokens_BxL, mask_BxL)
        updates, opt_state = tx.update(grads, train["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics = dict(loss=loss, assistant_tokens=count, grad_norm=optax.tree.norm(grads),
                       param_norm=param_norm(params), lr=schedule(train["opt_state_step"]))
        return dict(params=params, train=dict(opt_state=opt_state, opt_state_step=train["opt_state_step"] + 1)), metrics

    return sft_step


def sft(cfg, workdir: str) -> dict:
    """Fine-tunes per cfg (mode=sft), resuming from `workdir`; returns the final metrics."""
    return run_in_mesh(_sft, cfg, workdir)


def _sft(cfg, workdir: str, mesh) -> dict:
    rules = tuple(cfg.parallel.rules)
    tokenizer = start_tokenizer(cfg, workdir, lambda: conversation_texts(sft_rows(cfg)))
    start = starting_network(cfg, tokenizer, mesh, rules)
    model_cfg = start.model_cfg
    train_set, val_set = load_conversations(cfg, tokenizer, model_cfg.max_len)
    length = bucket(max(len(r.tokens) for r in train_set + val_set), model_cfg.max_len)
    graphdef = model_graphdef(model_cfg)
    opt = stage_optimizer(cfg, model_cfg, mesh, rules)
    rows = batch_sharding(mesh, rules)
    item_shardings = dict(params=params_shardings(model_cfg, mesh, rules),
                          train=dict(opt_state=opt.shardings, opt_state_step=replicated(mesh)))
    step_fn = jax.jit(make_sft_step(graphdef, opt.tx, opt.schedule), in_shardings=(item_shardings, rows, rows),
                      out_shardings=(item_shardings, None), donate_argnums=0,
                      compiler_options=training_compiler_options(mesh))
    eval_fn = jax.jit(functools.partial(masked_lm_loss, graphdef=graphdef))
    B = cfg.align.batch_size

    def fresh():
        return dict(params=start.params, train=dict(opt_state=init_opt_state(opt, start.params),
                                                    opt_state_step=jnp.zeros((), jnp.int32)))

    def step(items, s):
        tokens_BxL, mask_BxL = to_arrays([train_set[i] for i in epoch_batch(len(train_set), B, cfg.seed, s)], length)
        return step_fn(items, jax.device_put(tokens_BxL, rows), jax.device_put(mask_BxL, rows))

    def evaluate(items):
        total, count = 0.0, 0.0
        for chunk, n in full_batches(val_set, B):
            tokens_BxL, mask_BxL = to_arrays(chunk, length)
            keep = np.arange(B) < n
            loss, n = eval_fn(items["params"], tokens_BxL=jax.device_put(tokens_BxL, rows),
                              mask_BxL=jax.device_put(mask_BxL & keep[:, None], rows))
            total, count = total + float(loss) * float(n), count + float(n)
        return {"loss": total / max(count, 1.0)}

    abstract = placed(jax.eval_shape(fresh), item_shardings)
    spec = StageSpec("sft", model_cfg, tokenizer, fresh, abstract, step, evaluate,
                     identity=stage_identity(cfg, examples=len(train_set)))
    result = run_stage(cfg, workdir, spec)
    return dict(result, train_examples=len(train_set), val_examples=len(val_set))
