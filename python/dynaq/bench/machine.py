"""What the benchmark ran on: the CPU, dynaq's kernel paths, numpy's BLAS and the environment
variables that change them."""

from __future__ import annotations

import os
import platform
from typing import Any, Optional

import numpy as np

import dynaq

__all__ = ["BLAS_ENV", "blas_info", "cpu_model", "machine_info"]

# OpenBLAS reads these when it loads; set on some machines, they make numpy much slower.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict[str, Any]]:
    """numpy's BLAS as threadpoolctl sees it (empty without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import]
    except ImportError:
        return []
    keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    # Wheels bundle numpy's BLAS under site-packages/numpy*; torch may bring a BLAS of its own.
    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    own = [p for p in blas if str(p.get("filepath", "")).startswith(os.path.join(site, "numpy"))]
    return [{k: p.get(k) for k in keys} for p in (own or blas)]


def machine_info(reexec: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The ``machine``, ``dynaq``, ``numpy``, ``env`` and ``reexec`` entries of a result.

    Call it before torch or onnxruntime load, so that the BLAS found is numpy's.
    """
    info = dynaq.cpu_info()
    return {
        "machine": {
            "cpu_model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "physical_cores": info["physical_cores"],
            "arch": info["arch"],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "dynaq": {
            "version": dynaq.__version__,
            "active_isa": info["active_isa"],
            "max_isa": info["max_isa"],
            "isas": info["isas"],
            "features": info["features"],
            "kernels": info["kernels"],
            "gemm_kernel": info["kernels"].get("gemm"),
            "default_threads": info["num_threads"],
        },
        # Read before torch or onnxruntime load their own thread pools, so that these are
        # numpy's.
        "numpy": {"version": np.__version__, "blas": blas_info()},
        "env": {k: os.environ.get(k) for k in BLAS_ENV + ("DYNAQ_MAX_ISA", "DYNAQ_NUM_THREADS")},
        "reexec": reexec,
    }
