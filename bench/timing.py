"""Timing helpers shared by the benchmark scripts (imported as `timing`: bench/ is on sys.path when a
script in it runs)."""

import time


def timed(call) -> tuple[float, object]:
    """(wall seconds, result) of `call()`."""
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def fastest_threads(peer, default_threads: int) -> int:
    """Sets torch to the faster of 1 thread and `default_threads` (one timed call each); returns it."""
    import torch

    times = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        times[threads] = timed(peer)[0]
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    return best
