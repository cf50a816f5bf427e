"""Timing that survives a busy machine: medians of many runs, with warm-up, CUDA synchronised.

``median_seconds(fn)`` wraps ``torch.utils.benchmark.Timer.blocked_autorange``: it runs ``fn``
until ``min_run_time`` seconds are spent, in blocks, and returns the median time of one call —
and it waits for the GPU before reading the clock. ``compare({name: fn})`` measures several
functions in alternating rounds, so each sees the same machine conditions; quote their ratio.
"""
from __future__ import annotations

from typing import Callable

from torch.utils import benchmark


def median_seconds(fn: Callable[[], object], min_run_time: float = 0.2) -> float:
    """Median seconds of one call of ``fn()`` (warm-up included, CUDA synchronised)."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def compare(fns: dict[str, Callable[[], object]], rounds: int = 3, min_run_time: float = 0.1) -> dict[str, float]:
    """{name: median seconds} for several functions, measured in alternating rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, min_run_time))
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
