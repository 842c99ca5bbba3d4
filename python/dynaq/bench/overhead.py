"""The call-overhead section: what one call of dynaq costs when the arithmetic is next to
nothing (x of shape (1, 64), a 64 x 64 weight), on one thread, in microseconds per call.

The calls are only timed: their results are checked in the linear-layer and quantization
sections.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

import dynaq
from dynaq._text import Progress

from .config import OVERHEAD_MKN, SETTLE_S, BenchConfig
from .timing import calls_per_sample, measure

__all__ = ["OVERHEAD_OPS", "run_overhead"]

OVERHEAD_OPS = (
    "linear(x, w)",
    "linear(x, w, b)",
    "linear(x, w, b, out=y)",
    "quantize(x, granularity='row')",
    "dynamic_quantize_linear(x)",
)


def _calls(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The timed calls, by name (:data:`OVERHEAD_OPS`)."""
    pw = dynaq.pack_weight(w)
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    return {
        "linear(x, w)": lambda: dynaq.linear(x, pw),
        "linear(x, w, b)": lambda: dynaq.linear(x, pw, b),
        "linear(x, w, b, out=y)": lambda: dynaq.linear(x, pw, b, out=y),
        "quantize(x, granularity='row')": lambda: dynaq.quantize(x, granularity="row"),
        "dynamic_quantize_linear(x)": lambda: dynaq.dynamic_quantize_linear(x),
    }


def run_overhead(cfg: BenchConfig, progress: Progress) -> dict[str, Any]:
    """The ``overhead`` entry of a result: each call of :data:`OVERHEAD_OPS` timed many at a
    time (:func:`~dynaq.bench.timing.calls_per_sample`), one :class:`Progress` step each.

    Parameters
    ----------
    cfg : BenchConfig
        Its ``min_reps``, ``min_time``, ``max_reps`` and ``seed`` apply.
    progress : Progress

    Returns
    -------
    dict
        ``threads`` (1), ``x_shape``, ``weight_shape`` and ``results``: one entry per call with
        ``op``, ``valid``, ``us_per_call`` and the timing of one call (``median_s``, ``reps``,
        ``calls_per_rep``, ...), or ``error`` when the call failed.
    """
    m, k, n = OVERHEAD_MKN
    progress.section(f"call overhead, 1 thread: x {m}x{k}, weight {n}x{k}")
    time.sleep(SETTLE_S)  # let the thread pools of the sections before go idle
    rng = np.random.default_rng([cfg.seed, m, k, n])
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32) * np.float32(1.0 / math.sqrt(k))
    b = rng.standard_normal(n, dtype=np.float32)
    results: list[dict[str, Any]] = []
    previous = dynaq.get_num_threads()
    dynaq.set_num_threads(1)
    try:
        calls = _calls(x, w, b)
        for op in OVERHEAD_OPS:
            fn = calls[op]
            progress.step(f"overhead {op}")
            entry: dict[str, Any] = {"op": op}
            try:
                timing = measure(
                    fn, cfg.min_reps, cfg.min_time, cfg.max_reps, calls=calls_per_sample(fn)
                )
                entry.update(valid=True, **timing, us_per_call=timing["median_s"] * 1e6)
            except Exception as e:  # one failing call must not end the whole run
                entry.update(valid=False, error=f"{type(e).__name__}: {e}")
            results.append(entry)
    finally:
        dynaq.set_num_threads(previous)
    return {"threads": 1, "x_shape": [m, k], "weight_shape": [n, k], "results": results}
