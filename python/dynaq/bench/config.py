"""What a benchmark run measures: :class:`BenchConfig`, its defaults and :func:`quick_config`."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

__all__ = ["BenchConfig", "quick_config"]

DEFAULT_MS = (1, 8, 32, 128, 512)
DEFAULT_SHAPES = ((768, 768), (768, 3072), (3072, 768), (4096, 4096), (4096, 11008))
DEFAULT_THREADS: tuple[Union[int, str], ...] = (1, "all")
DEFAULT_MIN_REPS = 3
DEFAULT_MIN_TIME = 0.25
DEFAULT_MAX_REPS = 10_000
QUANT_SHAPES = ((512, 4096), (1, 4096))
# (M, K, N) of the call-overhead section: x of shape (M, K), a PackedWeight of shape (N, K).
OVERHEAD_MKN = (1, 64, 64)
# Idle time before timing a library next to a multi-threaded measurement: OpenBLAS', OpenMP's and
# ONNX Runtime's worker threads keep spinning for tens of milliseconds after their last call and
# would slow whichever library runs next.
SETTLE_S = 0.2
# Per-row int8 activations and per-channel (dynaq) or per-tensor (torch, ORT) int8 weights stay
# within a few percent of the float result on this data; 5% separates "quantized" from "wrong".
MAX_REL_ERROR = 5e-2

Shape = tuple[int, int]
Threads = Union[int, str]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes
    ----------
    ms : tuple of int
        Batch rows M.
    shapes : tuple of (int, int)
        ``(K, N)`` = (in_features, out_features) of the layer.
    threads : tuple of int or "all"
        Thread counts; ``"all"`` is dynaq's default thread count (the physical cores).
    libs : tuple of str, optional
        Libraries to time; None times every one that is installed.
    isa : str, optional
        Cap dynaq's kernel path (:func:`dynaq.set_max_isa`) for the run.
    min_reps, min_time, max_reps
        Each measurement repeats the call at least ``min_reps`` times and until ``min_time``
        seconds have passed, at most ``max_reps`` times, after one warm-up call.
    gemm, quant, overhead : bool
        Run the linear-layer sweep / the activation quantization section / the call-overhead
        section (dynaq's per-call cost on tiny inputs, one thread).
    quant_shapes : tuple of (int, int)
        ``(rows, cols)`` of the activations quantized in the quantization section.
    seed : int
        Seed of the random data (the same for every library).
    rotate : int
        Weights per (K, N): each library prepares this many (different data) and the timed
        calls go round them, so that ``rotate`` weights larger than the last-level cache
        together measure reading weights from DRAM (1: one weight, re-read from the caches
        that hold it).
    """

    ms: tuple[int, ...] = DEFAULT_MS
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES
    threads: tuple[Threads, ...] = DEFAULT_THREADS
    libs: Optional[tuple[str, ...]] = None
    isa: Optional[str] = None
    min_reps: int = DEFAULT_MIN_REPS
    min_time: float = DEFAULT_MIN_TIME
    max_reps: int = DEFAULT_MAX_REPS
    gemm: bool = True
    quant: bool = True
    overhead: bool = True
    quant_shapes: tuple[Shape, ...] = QUANT_SHAPES
    seed: int = 0
    rotate: int = 1


def quick_config(**overrides: Any) -> BenchConfig:
    """A tiny sweep for smoke tests (a few seconds): M in {1, 8}, K x N = 128 x 96 (every 4-bit
    group size divides K), 1 thread.

    Parameters
    ----------
    **overrides
        Fields of :class:`BenchConfig` to set instead.

    Returns
    -------
    BenchConfig
    """
    fields: dict[str, Any] = dict(
        ms=(1, 8),
        shapes=((128, 96),),
        threads=(1,),
        min_reps=3,
        min_time=0.002,
        max_reps=200,
        quant_shapes=((64, 1024), (1, 1024)),
    )
    fields.update(overrides)
    return BenchConfig(**fields)
