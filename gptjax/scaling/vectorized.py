"""Train K models that share every shape at once: one `jax.vmap`-ped, jitted step over stacked parameters.

This is what makes per-scale learning-rate sweeps affordable: K small models cost little more than one
on hardware that one small model cannot fill. Members differ in peak learning rate and init seed; all
read the same batches (data order from `cfg.seed`), so member k is the run `gptjax.train.loop.train`
would do with `optim.lr = lr_k` and `seed = seed_k` (when seed_k == cfg.seed), up to float rounding.

A member whose loss or norms become non-finite is marked diverged at that step; the others go on.
The group runs through the pretraining loop itself (`gptjax.train.loop.train_members`, the member axis
in gptjax/train/members.py): the same mesh, restore, NaN guard, eval, metrics and checkpoints.
Workdir: checkpoints/ (stacked state + meta, resumed on rerun), metrics.jsonl and tensorboard/ (split
"train/m<k>" per member, "eval" with one loss per member), tokenizer.json.
"""

import math
import time

from gptjax.train.loop import train_members
from gptjax.train.members import Members


def train_group(cfg, members: list[dict], workdir: str, downstream=None) -> list[dict]:
    """Trains one model per member ({"lr": float, "seed": int}) of the shapes in `cfg`, together, on
    `cfg.parallel`'s mesh (the member axis replicated, each member sharded as one model would be).

    Rerunning with the same arguments resumes from the latest checkpoint in `workdir` (a finished
    group is only re-evaluated). Returns one dict per member: lr, seed, status ("ok" | "diverged"),
    reason, eval_loss (and eval_bits_per_byte for text), train_loss, steps, tokens, tokens_per_sec
    (each member's, over the last logging interval), wall_seconds (shared by the group),
    compile_seconds, group_size, epochs; with `downstream` (train.eval_tasks) each member's task scores.
    """
    group = Members.group(members)
    start = time.perf_counter()
    finals = train_members(cfg, workdir, group, downstream)
    wall_seconds = time.perf_counter() - start
    return [member_result(cfg, lr, seed, final, group_size=group.size, wall_seconds=wall_seconds)
            for lr, seed, final in zip(group.lrs, group.seeds, finals)]


def member_result(cfg, lr: float, seed: int, final: dict, *, group_size: int, wall_seconds: float) -> dict:
    """A sweep result row of one trained model from its final metrics (`train_members`), for a group's
    member or a model trained alone: status "diverged" with the reason (and NaN losses) when `final`
    has "diverged". A run killed after its last checkpoint comes back with eval metrics only: its train
    metrics are NaN."""
    ok = "diverged" not in final
    result = dict(lr=lr, seed=seed, status="ok" if ok else "diverged", reason=final.get("diverged", ""),
                  steps=cfg.train.steps, tokens=cfg.train.steps * cfg.data.batch_size * cfg.data.seq_len,
                  train_loss=final.get("loss", math.nan) if ok else math.nan,
                  tokens_per_sec=final.get("tokens_per_sec", math.nan), wall_seconds=wall_seconds,
                  compile_seconds=final.get("compile_seconds", math.nan), group_size=group_size,
                  epochs=final.get("epochs"), eval_loss=math.nan)
    result.update({k: v if ok else math.nan for k, v in final.items() if k.startswith("eval_")})
    return result
