"""Metrics sinks: JSONL in the workdir (always), TensorBoard events, Weights & Biases (when
train.wandb_project is set), and a progress display.

Files: WORKDIR/metrics.jsonl (one JSON object per logged step and split), WORKDIR/tensorboard/, and with W&B
WORKDIR/wandb/ and WORKDIR/wandb_run_id (a resumed run logs on into the same W&B run).
On a terminal a tqdm bar shows progress; otherwise one line per log interval goes to stderr (`show`).
"""

import json
import math
import os
import sys
import uuid

from absl import logging

from gptjax.atomic import atomic_path


class MetricsWriter:
    """Writes metrics; `enabled=False` (every process but the first of a multi-host job) writes nothing;
    `display=False` writes the files but shows nothing (no bar, no lines)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int, progress_bar: bool = True,
                 enabled: bool = True, display: bool = True, wandb_project: str = "", config: dict | None = None):
        self.enabled, self.display = enabled, display
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # deferred: only jobs that write metrics pay the import

        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._wandb = start_wandb(workdir, wandb_project, config) if wandb_project else None
        self._bar = None
        if display and progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, split: str, values: dict, show: bool = True) -> None:
        """Records one row (JSONL and TensorBoard) and, with `show`, displays it."""
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: _plain(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        scalars = {f"{split}/{key}": value for key, value in row.items()
                   if key not in ("step", "split") and isinstance(value, float) and math.isfinite(value)}
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(dict(scalars, step=step))
        if show:
            self.show(step, split, values)

    def show(self, step: int, split: str, values: dict) -> None:
        """The progress bar's postfix on a terminal, else one line on stderr."""
        if not (self.enabled and self.display):
            return
        summary = " ".join(f"{k}={_plain(v):.4g}" for k, v in values.items() if isinstance(_plain(v), float))
        if self._bar is not None:
            self._bar.set_postfix_str(f"{split} {summary}", refresh=False)
        else:
            print(f"step {step} {split} {summary}", file=sys.stderr, flush=True)

    def advance(self, steps: int) -> None:
        if self.enabled and self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def start_wandb(workdir: str, project: str, config: dict | None):
    """A W&B run for `workdir`: its id is kept in WORKDIR/wandb_run_id, so a resumed run logs on into the same
    run. Metrics are drawn against our `step` rather than W&B's own counter, which only rises: the steps a
    resumed run logs again (those after its checkpoint) are kept, not dropped."""
    import wandb  # optional: config validation has checked it is installed

    id_path = os.path.join(workdir, "wandb_run_id")
    if os.path.isfile(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        with atomic_path(id_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(run_id)
    try:  # finish_previous: a sweep's next trial is a new run, never the last one's
        run = wandb.init(project=project, id=run_id, resume="allow", dir=workdir, config=config,
                         name=os.path.basename(os.path.abspath(workdir)), reinit="finish_previous",
                         settings=wandb.Settings(silent=True))  # silent: quiet logs
    except Exception as e:  # noqa: BLE001 - W&B (its login, the network) must not stop a run that trains
        logging.warning("train.wandb_project=%s: W&B did not start (%s); metrics go to metrics.jsonl and TensorBoard "
                        "only", project, e)
        return None
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


def _plain(value):
    """JSON-friendly Python scalar from numpy/jax scalars."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value) if isinstance(value, float) else value


def read_metrics(workdir: str) -> list[dict]:
    """All rows of WORKDIR/metrics.jsonl; a resumed run appends, so later rows win per step."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
