"""mode=lm_eval: scores a workdir's network on lm-evaluation-harness tasks and writes WORKDIR/eval_tasks.json.

`run_tasks` is the one entry (the job, and pretraining's train.eval_tasks): it builds the task manager with
gptjax's offline tasks (gptjax/evaluate/tasks/) plus evaluate.include_path, checks the task names, and runs
lm-eval's `simple_evaluate` on GptjaxLM. lm-eval is an optional extra (`pip install -e '.[eval]'`).
"""

import logging as pylogging
import math
import os
import time

from absl import logging

from gptjax.atomic import write_json_atomic
from gptjax.config import ConfigError
from gptjax.config.evaluate import task_names
from gptjax.config.parallel import rule_axes
from gptjax.data.tokenizer import Tokenizer
from gptjax.train.loop import run_in_mesh, train
from gptjax.train.network import Network, load_network, workdir_tokenizer

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
# the metrics kept in the summary (lm-eval reports each as "<metric>,<filter>" with a "_stderr" twin)
METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity", "bits_per_byte")


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from gptjax.evaluate.lm import GptjaxLM
    except ImportError as e:
        raise ConfigError(f"downstream evaluation needs lm-eval ({e}); install the extra: pip install -e '.[eval]'") from e
    return lm_eval, TaskManager, GptjaxLM


def summary(results: dict) -> dict:
    """{task: {metric: value, metric_stderr: value}} from lm-eval's results (filters joined into the name
    where a task has several)."""
    out = {}
    for task, metrics in results["results"].items():
        row = {}
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            base = name.removesuffix("_stderr")
            if base in METRICS and isinstance(value, (int, float)):
                label = base if filt in ("none", "") else f"{base}[{filt}]"
                row[label + ("_stderr" if name.endswith("_stderr") else "")] = float(value)
        out[task] = row
    return out


def task_manager(evaluate_cfg):
    """lm-eval's TaskManager holding gptjax's offline tasks and evaluate.include_path's; ConfigError naming any
    task of evaluate.tasks it does not know."""
    _, TaskManager, _ = _lm_eval()
    pylogging.getLogger("lm_eval").setLevel(pylogging.ERROR)  # its INFO/WARNING chatter per task; errors still show
    include = [TASKS_DIR] + [p.strip() for p in evaluate_cfg.include_path.split(",") if p.strip()]
    names = task_names(evaluate_cfg.tasks)
    # lm-eval's own thousands of task YAMLs take seconds to index: only when a task is not among ours
    manager = TaskManager(include_path=include, include_defaults=False)
    if any(n not in manager.all_tasks for n in names):
        manager = TaskManager(include_path=include)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        ours = sorted(n for n in TaskManager(include_path=[TASKS_DIR], include_defaults=False).all_tasks)
        raise ConfigError(f"evaluate.tasks={evaluate_cfg.tasks!r}: unknown task(s) {unknown}; gptjax's offline tasks "
                          f"are {ours}, the hub's (hellaswag, arc_easy, mmlu, gsm8k, ...) need a machine that reaches it")
    return manager


def run_tasks(network: Network, mesh, rules, evaluate_cfg, manager=None) -> dict:
    """Scores `network` on evaluate_cfg's tasks: {"tasks": summary, "n_samples": {task: documents}, "seconds"}.
    `manager`: their `task_manager`, when the caller keeps one (built here otherwise)."""
    lm_eval, _, GptjaxLM = _lm_eval()
    names, manager = task_names(evaluate_cfg.tasks), manager or task_manager(evaluate_cfg)
    shards = math.prod(mesh.shape[a] for a in rule_axes(rules, "batch"))
    batch = -(-evaluate_cfg.batch_size // shards) * shards  # whole rows per data-parallel device
    lm = GptjaxLM(network, mesh, rules, batch_size=batch, chat=evaluate_cfg.chat)
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=names, num_fewshot=None if evaluate_cfg.num_fewshot < 0 else evaluate_cfg.num_fewshot,
        limit=evaluate_cfg.limit or None, task_manager=manager, apply_chat_template=evaluate_cfg.chat,
        log_samples=False, bootstrap_iters=1000, verbosity="WARNING")
    return dict(tasks=summary(results), n_samples={t: v.get("effective", v.get("original"))
                                                   for t, v in results.get("n-samples", {}).items()},
                seconds=time.perf_counter() - start, table=lm_eval.utils.make_table(results))


def score_names(tasks: dict) -> dict:
    """{"task_<task>_<metric>": value} of a summary's scores (stderrs left out), for metrics rows."""
    clean = str.maketrans({"[": "_", "]": None})
    return {f"task_{task}_{metric.translate(clean)}": value for task, row in tasks.items()
            for metric, value in row.items() if not metric.endswith("_stderr")}


def downstream_scorer(cfg, workdir: str):
    """The training loop's `downstream` hook for train.eval_tasks (None when off): scores a member's params on
    those tasks with the `evaluate` section's settings, reading text with the run's tokenizer."""
    if not cfg.train.eval_tasks:
        return None
    tasks_cfg = cfg.evaluate.copy_and_resolve_references()
    tasks_cfg.tasks = cfg.train.eval_tasks
    # built once: an unknown task or a missing lm-eval fails before training, not at its first evaluation
    manager = task_manager(tasks_cfg)
    tokenizers = []

    def score(params, model_cfg, mesh) -> dict:
        if not tokenizers:  # written by the data pipeline before the first step
            tokenizers.append(Tokenizer.load(cfg.data.tokenizer) if cfg.data.tokenizer else workdir_tokenizer(workdir))
        network = Network(model_cfg, params, tokenizers[0], 0, {}, workdir)
        return score_names(run_tasks(network, mesh, tuple(cfg.parallel.rules), tasks_cfg, manager)["tasks"])

    return score


def pretrain(cfg, workdir: str) -> dict:
    """mode=pretrain: the one training loop, with train.eval_tasks scored at every evaluation."""
    return train(cfg, workdir, downstream_scorer(cfg, workdir))


def lm_eval_job(cfg, workdir: str) -> dict:
    """mode=lm_eval: the newest network of `workdir` on cfg.evaluate's tasks; returns the summary."""
    return run_in_mesh(_evaluate, cfg, workdir)


def _evaluate(cfg, workdir: str, mesh) -> dict:
    rules = tuple(cfg.parallel.rules)
    network = load_network(workdir, mesh, rules)
    out = run_tasks(network, mesh, rules, cfg.evaluate)
    table = out.pop("table")
    logging.warning("downstream tasks at step %d:\n%s", network.step, table)
    result = dict(step=network.step, stage=network.stage, num_fewshot=cfg.evaluate.num_fewshot,
                  limit=cfg.evaluate.limit, chat=cfg.evaluate.chat, **out)
    path = cfg.evaluate.output or os.path.join(workdir, "eval_tasks.json")
    write_json_atomic(path, result)
    return dict(result, output=os.path.abspath(path))
