"""One benchmark run, every section in turn: :func:`run_bench`."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional, TextIO, Union

import dynaq
from dynaq._text import Progress

from .config import BenchConfig
from .machine import machine_info
from .overhead import OVERHEAD_OPS, run_overhead
from .peers import LIB_CLASSES, LIBS, OnnxruntimeLib, available_libs
from .quant import run_quant
from .sweep import resolve_threads, run_gemm, summary

__all__ = ["SCHEMA", "LibraryUnavailable", "run_bench"]

SCHEMA = "dynaq-bench/1"


class LibraryUnavailable(RuntimeError):
    """A library named for the run is not installed (or cannot run here)."""


def _select_libs(requested: Optional[Sequence[str]]) -> tuple[list[str], dict[str, str]]:
    """The libraries to time and ``{library: why not}`` for those left out."""
    status = available_libs()
    missing = {lib: why for lib, why in status.items() if why is not None}
    if requested is None:
        return [lib for lib in LIBS if lib not in missing], missing
    bad = [lib for lib in requested if lib in missing]
    if bad:
        raise LibraryUnavailable("; ".join(f"{lib}: {missing[lib]}" for lib in bad))
    return list(dict.fromkeys(requested)), {k: v for k, v in missing.items() if k in requested}


def run_bench(
    config: Optional[BenchConfig] = None,
    *,
    progress: Union[bool, str] = False,
    stream: Optional[TextIO] = None,
    reexec: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Runs the benchmark and returns everything as a JSON-ready dict.

    Parameters
    ----------
    config : BenchConfig, optional
        The default sweep when omitted.
    progress : bool or {"bar", "lines", "off"}
        Progress report on ``stream``: True picks a bar on a terminal and section lines
        otherwise.
    stream : file, optional
        Where progress goes (default ``sys.stderr``).
    reexec : dict, optional
        How the command line re-executed itself for numpy's sake (reported as is).

    Returns
    -------
    dict
        ``schema``, ``machine``, ``dynaq``, ``numpy``, ``torch``, ``onnxruntime``, ``env``,
        ``reexec``, ``config``, ``libs``, ``unavailable``, ``threads``, ``gemm`` (one entry per
        cell with per-library ``median_s``, ``reps``, ``gops``, ``rel_error``, ``valid``, and
        the ratios), ``summary``, ``quant``, ``overhead`` (None when dynaq is not timed or the
        section is off), ``started_at`` and ``wall_time_s``.

    Raises
    ------
    LibraryUnavailable
        When a library named in ``config.libs`` is not installed.
    """
    cfg = config or BenchConfig()
    t_start = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Before anything imports torch/onnxruntime, so the BLAS found is numpy's.
    doc: dict[str, Any] = {"schema": SCHEMA, **machine_info(reexec)}
    names, unavailable = _select_libs(cfg.libs)
    stream = stream if stream is not None else sys.stderr
    if progress is True:
        mode = "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    elif progress is False:
        mode = "off"
    else:
        mode = str(progress)

    previous_cap = dynaq.get_max_isa()
    if cfg.isa is not None:
        dynaq.set_max_isa(cfg.isa)
    try:
        info = dynaq.cpu_info()
        doc["dynaq"].update(
            active_isa=info["active_isa"],
            max_isa=info["max_isa"],
            isa_cap=cfg.isa,
            kernels=info["kernels"],
            gemm_kernel=info["kernels"].get("gemm"),
        )
        threads = resolve_threads(cfg.threads)
        libs = [LIB_CLASSES[name]() for name in names]
        by_name = {lib.name: lib for lib in libs}
        doc["torch"] = by_name["torch"].info() if "torch" in by_name else None
        doc["onnxruntime"] = by_name["onnxruntime"].info() if "onnxruntime" in by_name else None
        doc["config"] = dataclasses.asdict(cfg)
        doc["libs"] = names
        doc["unavailable"] = unavailable
        doc["threads"] = threads

        n_quant = 0
        if cfg.quant:
            per_shape = 3 * ("dynaq" in names) + ("onnxruntime" in names)
            n_quant = per_shape * len(cfg.quant_shapes)
        n_gemm = len(cfg.ms) * len(cfg.shapes) * len(threads) * len(libs) if cfg.gemm else 0
        overhead = cfg.overhead and "dynaq" in names
        n_overhead = len(OVERHEAD_OPS) if overhead else 0
        bar = Progress(n_gemm + n_quant + n_overhead, mode, stream)
        try:
            cells = run_gemm(cfg, libs, threads, bar) if cfg.gemm else []
            doc["gemm"] = cells
            doc["summary"] = summary(cells, threads)
            ort_lib = by_name.get("onnxruntime")
            ort = ort_lib if isinstance(ort_lib, OnnxruntimeLib) else None
            doc["quant"] = run_quant(cfg, names, bar, ort) if cfg.quant else None
            doc["overhead"] = run_overhead(cfg, bar) if overhead else None
        finally:
            bar.close()
    finally:
        dynaq.set_max_isa(previous_cap)
    doc["started_at"] = started_at
    doc["wall_time_s"] = time.perf_counter() - t_start
    return doc
