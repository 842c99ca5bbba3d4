"""The measurement loop shared by every section: the median of adaptive repetitions."""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import numpy as np

__all__ = ["calls_per_sample", "measure"]


def measure(
    fn: Callable[[], Any], min_reps: int, min_time: float, max_reps: int, calls: int = 1
) -> dict[str, Any]:
    """Times ``fn`` (already warmed up) and summarizes the times of one call.

    Each sample is timed on its own so that the median discards the samples a noisy machine
    interrupts; the loop takes ``min_reps`` samples and goes on until ``min_time`` has passed,
    at most ``max_reps`` samples.

    Parameters
    ----------
    fn : callable
        The call to time, without arguments.
    min_reps, min_time, max_reps
        See :class:`~dynaq.bench.BenchConfig`.
    calls : int
        Calls per sample, whose mean is the sample: a call of a microsecond or so is timed
        many at a time, else the clock's own cost and resolution would dominate it (see
        :func:`calls_per_sample`).

    Returns
    -------
    dict
        ``median_s``, ``min_s``, ``mean_s``, ``q1_s``, ``q3_s`` (seconds per call), ``reps``
        (samples), ``calls_per_rep`` and ``total_s`` (seconds spent in ``fn``).
    """
    samples: list[float] = []
    loop = range(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would only add noise
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            for _ in loop:
                fn()
            t1 = time.perf_counter()
            samples.append((t1 - t0) / calls)
            n = len(samples)
            if n >= max_reps or (n >= min_reps and t1 - start >= min_time):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    a = np.asarray(samples)
    q1, med, q3 = (float(v) for v in np.quantile(a, [0.25, 0.5, 0.75]))
    return {
        "median_s": med,
        "min_s": float(a.min()),
        "mean_s": float(a.mean()),
        "q1_s": q1,
        "q3_s": q3,
        "reps": len(samples),
        "calls_per_rep": calls,
        "total_s": float(a.sum()) * calls,
    }


def calls_per_sample(fn: Callable[[], Any], target_s: float = 5e-4, limit: int = 1 << 16) -> int:
    """How many calls of ``fn`` take at least ``target_s`` seconds together (a power of two, at
    most ``limit``); warms ``fn`` up on the way.

    Parameters
    ----------
    fn : callable
    target_s : float
    limit : int

    Returns
    -------
    int
    """
    n = 1
    while n < limit:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= target_s:
            break
        n *= 2
    return n
