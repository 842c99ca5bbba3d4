"""The benchmark behind ``python -m dynaq bench``.

For each cell (M, K, N, threads) of a sweep it times, in the same process and on the same
float32 data, a fp32-in/fp32-out linear layer ``y = x @ w.T + b`` computed by

- ``dynaq``: ``dynaq.linear(x, packed_w, b)`` (activation quantization included);
- ``numpy``: ``x @ w.T + b`` in float32 (the BLAS limited with threadpoolctl);
- ``torch``: ``torch.ao.quantization.quantize_dynamic`` of ``nn.Linear`` (qint8), if installed;
- ``onnxruntime``: ``onnxruntime.quantization.quantize_dynamic`` of MatMul + Add (QInt8 weight),
  if installed;

and reports effective GOP/s (``2*M*K*N`` per call) from medians of adaptive repetitions, the
dynaq/numpy and dynaq/best-peer ratios, and their geometric means. Each library's output is
checked once per cell against a float reference; a wrong one is flagged instead of timed.
A second section times activation quantization (``dynaq.quantize``,
``dynaq.dynamic_quantize_linear`` and ONNX Runtime's ``DynamicQuantizeLinear``), a third the
call overhead: microseconds per call of ``dynaq.linear``, ``dynaq.quantize`` and
``dynaq.dynamic_quantize_linear`` on one thread and a (1, 64) input.

The public entry points are :func:`run_bench` (returns a JSON-ready dict), :func:`format_report`,
:func:`write_json`, :func:`write_plot`, and :func:`add_arguments` / :func:`run_cli` used by
``python -m dynaq bench``.

Modules, one job each: :mod:`~dynaq.bench.config` (what to run), :mod:`~dynaq.bench.timing`
(the measurement loop), :mod:`~dynaq.bench.peers` (the library adapters),
:mod:`~dynaq.bench.machine` (what it ran on), :mod:`~dynaq.bench.sweep` (the linear-layer
sweep), :mod:`~dynaq.bench.quant` and :mod:`~dynaq.bench.overhead` (the other two sections),
:mod:`~dynaq.bench.run` (:func:`run_bench`), :mod:`~dynaq.bench.report` (text and JSON),
:mod:`~dynaq.bench.plot` (PNG) and :mod:`~dynaq.bench.cli` (the command line).
"""

from __future__ import annotations

from .cli import REEXEC_MARKER, add_arguments, config_from_args, reexec_without_blas_env, run_cli
from .config import (
    DEFAULT_MAX_REPS,
    DEFAULT_MIN_REPS,
    DEFAULT_MIN_TIME,
    DEFAULT_MS,
    DEFAULT_SHAPES,
    DEFAULT_THREADS,
    MAX_REL_ERROR,
    OVERHEAD_MKN,
    QUANT_SHAPES,
    SETTLE_S,
    BenchConfig,
    quick_config,
)
from .machine import BLAS_ENV
from .overhead import OVERHEAD_OPS
from .peers import LIBS, available_libs
from .plot import matplotlib_missing, write_plot
from .report import format_report, write_json
from .run import SCHEMA, LibraryUnavailable, run_bench

__all__ = [
    "BLAS_ENV",
    "DEFAULT_MAX_REPS",
    "DEFAULT_MIN_REPS",
    "DEFAULT_MIN_TIME",
    "DEFAULT_MS",
    "DEFAULT_SHAPES",
    "DEFAULT_THREADS",
    "LIBS",
    "MAX_REL_ERROR",
    "OVERHEAD_MKN",
    "OVERHEAD_OPS",
    "QUANT_SHAPES",
    "REEXEC_MARKER",
    "SCHEMA",
    "SETTLE_S",
    "BenchConfig",
    "LibraryUnavailable",
    "add_arguments",
    "available_libs",
    "config_from_args",
    "format_report",
    "matplotlib_missing",
    "quick_config",
    "reexec_without_blas_env",
    "run_bench",
    "run_cli",
    "write_json",
    "write_plot",
]
