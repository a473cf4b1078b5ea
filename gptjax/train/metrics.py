"""Metrics sinks: JSONL in the workdir (always), TensorBoard events, and a progress display.

Files: WORKDIR/metrics.jsonl (one JSON object per logged step and split), WORKDIR/tensorboard/.
On a terminal a tqdm bar shows progress; otherwise one line per log interval goes to stderr (`show`).
"""

import json
import math
import os
import sys


class MetricsWriter:
    """Writes metrics; `enabled=False` (every process but the first of a multi-host job) writes nothing;
    `display=False` writes the files but shows nothing (no bar, no lines)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int, progress_bar: bool = True,
                 enabled: bool = True, display: bool = True):
        self.enabled, self.display = enabled, display
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # deferred: only jobs that write metrics pay the import

        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, float) and math.isfinite(value):
                self._tb.add_scalar(f"{split}/{key}", value, step)
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


def _plain(value):
    """JSON-friendly Python scalar from numpy/jax scalars."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value) if isinstance(value, float) else value


def read_metrics(workdir: str) -> list[dict]:
    """All rows of WORKDIR/metrics.jsonl; a resumed run appends, so later rows win per step."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
