"""The `evaluate` section of the config: downstream tasks through lm-evaluation-harness (mode=lm_eval, and
train.eval_tasks in pretraining)."""

import os

import ml_collections

from gptjax.config.base import fail


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            tasks="",  # comma-separated lm-eval task names: gptjax's offline ones (gptjax/evaluate/tasks/) or any
            num_fewshot=-1,  # examples before each question; -1 = the task's own default
            limit=0,  # at most this many documents per task; 0 = all
            include_path="",  # a directory of more task YAMLs (comma-separated for several)
            batch_size=16,  # rows scored or decoded together (a multiple of the data-parallel devices)
            chat=False,  # render prompts through the tokenizer's chat template (instruct / SFT'd models)
            output="",  # the results JSON; "" = WORKDIR/eval_tasks.json
        )
    )


def task_names(tasks: str) -> list[str]:
    return [t.strip() for t in tasks.split(",") if t.strip()]


def validate(cfg, required: bool) -> None:
    e = cfg.evaluate
    if required and not task_names(e.tasks):
        fail("evaluate.tasks", e.tasks, "names no task; give lm-eval task names, e.g. shakespeare_cloze,arithmetic_em")
    if e.num_fewshot < -1:
        fail("evaluate.num_fewshot", e.num_fewshot, "must be >= 0, or -1 for each task's default")
    if e.limit < 0:
        fail("evaluate.limit", e.limit, "must be >= 0 (0 = every document)")
    if e.batch_size <= 0:
        fail("evaluate.batch_size", e.batch_size, "must be a positive number of rows")
    for path in filter(None, (p.strip() for p in e.include_path.split(","))):
        if not os.path.isdir(path):
            fail("evaluate.include_path", e.include_path, f"{path} is not a directory of task YAMLs")
