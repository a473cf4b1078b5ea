"""Preemption: SIGTERM (what Kubernetes, SLURM and TPU maintenance send before killing a job) makes the
trainer checkpoint at the next step boundary and stop with `Preempted`; a rerun resumes from there.

One process watches for SIGTERM itself. In a multi-process job every process must checkpoint the same
step, so jax's preemption sync point decides (its coordination service receives the notice on any host
and picks the next step all of them reach)."""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(BaseException):
    """The run stopped on SIGTERM after a checkpoint. A BaseException, like KeyboardInterrupt: it stops
    the program (a sweep must not record it as a failed trial); gptjax.main exits 0 with its line."""


class PreemptionWatch:
    """Watches for a preemption notice from creation until `close()`; `reached(step)`: save and stop."""

    def __init__(self):
        self._notice = threading.Event()
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._notice.set())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def reached(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; called by every process at every step."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._notice.is_set()
