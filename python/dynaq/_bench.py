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
``dynaq.dynamic_quantize_linear`` and ONNX Runtime's ``DynamicQuantizeLinear``).

The public entry points are :func:`run_bench` (returns a JSON-ready dict), :func:`format_report`,
:func:`write_json`, :func:`write_plot`, and :func:`add_arguments` / :func:`run_cli` used by
``python -m dynaq bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional, TextIO, Union

import numpy as np

import dynaq

__all__ = [
    "BenchConfig",
    "LibraryUnavailable",
    "add_arguments",
    "format_report",
    "quick_config",
    "reexec_without_blas_env",
    "run_bench",
    "run_cli",
    "write_json",
    "write_plot",
]

SCHEMA = "dynaq-bench/1"
LIBS = ("dynaq", "numpy", "torch", "onnxruntime")
_LIB_ALIASES = {"ort": "onnxruntime", "np": "numpy"}
_SHORT = {"dynaq": "dynaq", "numpy": "numpy", "torch": "torch", "onnxruntime": "ort"}
DEFAULT_MS = (1, 8, 32, 128, 512)
DEFAULT_SHAPES = ((768, 768), (768, 3072), (3072, 768), (4096, 4096), (4096, 11008))
DEFAULT_THREADS: tuple[Union[int, str], ...] = (1, "all")
DEFAULT_MIN_REPS = 3
DEFAULT_MIN_TIME = 0.25
DEFAULT_MAX_REPS = 10_000
QUANT_SHAPES = ((512, 4096), (1, 4096))
# Idle time before timing a library next to a multi-threaded measurement: OpenBLAS', OpenMP's and
# ONNX Runtime's worker threads keep spinning for tens of milliseconds after their last call and
# would slow whichever library runs next.
SETTLE_S = 0.2
# Per-row int8 activations and per-channel (dynaq) or per-tensor (torch, ORT) int8 weights stay
# within a few percent of the float result on this data; 5% separates "quantized" from "wrong".
MAX_REL_ERROR = 5e-2
# OpenBLAS reads these when it loads; set on some machines, they make numpy much slower.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARKER = "DYNAQ_BENCH_REEXEC"

Shape = tuple[int, int]
Threads = Union[int, str]


class LibraryUnavailable(RuntimeError):
    """A library named for the run is not installed (or cannot run here)."""


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
    gemm, quant : bool
        Run the linear-layer sweep / the activation quantization section.
    quant_shapes : tuple of (int, int)
        ``(rows, cols)`` of the activations quantized in the quantization section.
    seed : int
        Seed of the random data (the same for every library).
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
    quant_shapes: tuple[Shape, ...] = QUANT_SHAPES
    seed: int = 0


def quick_config(**overrides: Any) -> BenchConfig:
    """A tiny sweep for smoke tests (a few seconds): M in {1, 8}, K x N = 64 x 96, 1 thread.

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
        shapes=((64, 96),),
        threads=(1,),
        min_reps=3,
        min_time=0.002,
        max_reps=200,
        quant_shapes=((64, 1024), (1, 1024)),
    )
    fields.update(overrides)
    return BenchConfig(**fields)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _measure(fn: Callable[[], Any], min_reps: int, min_time: float, max_reps: int) -> dict:
    """Times single calls of ``fn`` (already warmed up) and summarizes them.

    Each call is timed on its own so that the median discards the calls a noisy machine
    interrupts; the loop runs ``min_reps`` calls and until ``min_time`` has passed.
    """
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would only add noise
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            samples.append(t1 - t0)
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
        "total_s": float(a.sum()),
    }


# --------------------------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------------------------


class _Lib:
    """One library's linear layer: set up per (K, N) outside the timings, then timed calls."""

    name = ""

    def info(self) -> dict[str, Any]:
        """Versions and settings to report."""
        return {}

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        """Builds the layer for weight ``w`` (N, K) and bias ``b`` (N,)."""

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        """Thread count (and modes) in force while a cell is timed."""
        yield

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        """The timed call on input ``x`` (M, K)."""
        raise NotImplementedError

    def to_numpy(self, out: Any) -> np.ndarray:
        """The call's result as a float array, for validation."""
        return np.asarray(out)

    def release(self) -> None:
        """Drops the per-(K, N) state."""


class _Dynaq(_Lib):
    name = "dynaq"

    def __init__(self) -> None:
        self.pw: Optional[dynaq.PackedWeight] = None
        self.b: Optional[np.ndarray] = None

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        self.pw = dynaq.pack_weight(w)
        self.b = b

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        previous = dynaq.get_num_threads()
        dynaq.set_num_threads(threads)
        try:
            yield
        finally:
            dynaq.set_num_threads(previous)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        pw, b = self.pw, self.b
        return lambda: dynaq.linear(x, pw, b)

    def release(self) -> None:
        self.pw = self.b = None


class _Numpy(_Lib):
    name = "numpy"

    def __init__(self) -> None:
        self.w_t: Optional[np.ndarray] = None
        self.b: Optional[np.ndarray] = None

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        self.w_t = w.T  # a view: BLAS multiplies by the transpose directly, as `x @ w.T` does
        self.b = b

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        from threadpoolctl import threadpool_limits  # type: ignore[import]

        with threadpool_limits(limits=threads, user_api="blas"):
            yield

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        w_t, b = self.w_t, self.b
        return lambda: x @ w_t + b

    def release(self) -> None:
        self.w_t = self.b = None


class _Torch(_Lib):
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.model: Any = None

    def info(self) -> dict[str, Any]:
        q = self.torch.backends.quantized
        return {
            "version": str(self.torch.__version__),
            "quantized_engine": str(q.engine),
            "supported_engines": [str(e) for e in q.supported_engines],
        }

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        torch = self.torch
        nn = torch.nn
        # torch.ao.quantization is deprecated in recent torch and warns; users of the bench
        # (and the test suite, which turns warnings into errors) need not see that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # skip_init: no random initialization of a weight that is overwritten right away.
            lin = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            # inplace: no deep copy of the float model (180 MB at 4096 x 11008).
            self.model = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8, inplace=True
            )

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        torch = self.torch
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                yield
        finally:
            torch.set_num_threads(previous)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        model, from_numpy = self.model, self.torch.from_numpy
        return lambda: model(from_numpy(x))

    def to_numpy(self, out: Any) -> np.ndarray:
        return np.asarray(out.numpy())

    def release(self) -> None:
        self.model = None


@contextlib.contextmanager
def _quiet_python_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger; it is noise here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _ort_model(nodes: list, inputs: list, outputs: list, initializers: list) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # The oldest IR version that knows opset 17: an onnx newer than the onnxruntime installed
    # would otherwise write an IR version that runtime refuses.
    model.ir_version = 8
    return model


def _ort_session(ort: Any, model: Any, threads: int) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class _Onnxruntime(_Lib):
    name = "onnxruntime"

    def __init__(self) -> None:
        import onnx
        import onnxruntime  # type: ignore[import]

        with _quiet_python_logging():
            from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import]

        self.onnx = onnx
        self.ort = onnxruntime
        self.quantize_dynamic = quantize_dynamic
        self.qint8 = QuantType.QInt8
        self.sessions: dict[int, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"version": str(self.ort.__version__), "onnx_version": str(self.onnx.__version__)}

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        from onnx import TensorProto, helper

        n, k = w.shape
        # TensorProto from raw bytes: numpy_helper.from_array is several times slower for a
        # 45M-element weight, and this is setup time the user waits for.
        weight = TensorProto(
            name="W",
            data_type=TensorProto.FLOAT,
            dims=[k, n],
            raw_data=np.ascontiguousarray(w.T).tobytes(),
        )
        bias = TensorProto(name="bias", data_type=TensorProto.FLOAT, dims=[n], raw_data=b.tobytes())
        model = _ort_model(
            [
                helper.make_node("MatMul", ["x", "W"], ["xw"]),
                helper.make_node("Add", ["xw", "bias"], ["y"]),
            ],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            [weight, bias],
        )
        float_path = os.path.join(tmp, f"linear_{k}x{n}.onnx")
        quant_path = os.path.join(tmp, f"linear_{k}x{n}.qint8.onnx")
        self.onnx.save(model, float_path)
        del model, weight
        with _quiet_python_logging():
            self.quantize_dynamic(float_path, quant_path, weight_type=self.qint8)
        os.remove(float_path)
        self.sessions = {t: _ort_session(self.ort, quant_path, t) for t in threads}
        os.remove(quant_path)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        run, feed = self.sessions[threads].run, {"x": x}
        return lambda: run(None, feed)[0]

    def release(self) -> None:
        self.sessions = {}


_LIB_CLASSES: dict[str, type[_Lib]] = {
    "dynaq": _Dynaq,
    "numpy": _Numpy,
    "torch": _Torch,
    "onnxruntime": _Onnxruntime,
}


def _lib_missing(name: str) -> Optional[str]:
    """Why library ``name`` cannot be timed here (None when it can)."""
    try:
        if name == "numpy":
            import threadpoolctl  # noqa: F401  # type: ignore[import]
        elif name == "torch":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import torch
            if str(torch.backends.quantized.engine) == "none":
                return "torch has no quantized engine on this machine"
        elif name == "onnxruntime":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401  # type: ignore[import]
    except ImportError as e:
        hint = {
            "numpy": "threadpoolctl, to set numpy's BLAS thread count",
            "torch": "torch",
            "onnxruntime": "onnxruntime and onnx",
        }[name]
        return f"not installed ({e}); needs {hint}"
    return None


def available_libs() -> dict[str, Optional[str]]:
    """``{library: None if it can be timed, else the reason it cannot}``."""
    return {name: _lib_missing(name) for name in LIBS}


# --------------------------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_info() -> list[dict[str, Any]]:
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


def _machine_info(reexec: Optional[dict[str, Any]]) -> dict[str, Any]:
    info = dynaq.cpu_info()
    return {
        "machine": {
            "cpu_model": _cpu_model(),
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
        "numpy": {"version": np.__version__, "blas": _blas_info()},
        "env": {k: os.environ.get(k) for k in BLAS_ENV + ("DYNAQ_MAX_ISA", "DYNAQ_NUM_THREADS")},
        "reexec": reexec,
    }


# --------------------------------------------------------------------------------------------
# The linear-layer sweep
# --------------------------------------------------------------------------------------------


def _rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(y.astype(np.float64) - ref)) / (denom if denom else 1.0)


def _reference_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 ``x[rows] @ w.T + b``, converting ``w`` a slab at a time (it can be 180 MB)."""
    n, k = w.shape
    xs = x[rows].astype(np.float64)
    out = np.empty((len(rows), n))
    step = max(1, (1 << 22) // max(k, 1))
    for c in range(0, n, step):
        out[:, c : c + step] = xs @ w[c : c + step].astype(np.float64).T
    out += b
    return out


class _Reference:
    """The float result of one (M, K, N): float64 on sample rows, numpy float32 in full."""

    def __init__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
        m = x.shape[0]
        self.shape = (m, w.shape[0])
        self.rows = np.unique(np.linspace(0, m - 1, min(m, 8)).round().astype(np.intp))
        self.sample = _reference_rows(x, w, b, self.rows)
        full = x @ w.T + b
        # float32 BLAS is accurate to ~1e-6 here; trust it for the full check only if it is.
        self.full: Optional[np.ndarray] = (
            full if _rel_error(full[self.rows], self.sample) < 1e-3 else None
        )

    def check(self, y: np.ndarray) -> tuple[bool, float, Optional[str]]:
        """``(valid, relative error, problem)`` of one library's output."""
        if y.shape != self.shape:
            return False, math.inf, f"output shape {y.shape}, expected {self.shape}"
        if not np.all(np.isfinite(y)):
            return False, math.inf, "output holds NaN or infinity"
        err = _rel_error(y[self.rows], self.sample)
        if self.full is not None:
            err = max(err, _rel_error(y, self.full))
        if not err < MAX_REL_ERROR:
            return False, err, f"relative error {err:.3g} > {MAX_REL_ERROR} vs the float result"
        return True, err, None


def _resolve_threads(threads: Sequence[Threads]) -> list[int]:
    every = dynaq.get_num_threads()
    out = [every if t == "all" else int(t) for t in threads]
    return list(dict.fromkeys(out))


def _geomean(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _ratios(cell: dict[str, Any]) -> None:
    """Adds dynaq/numpy and dynaq/best-peer speed ratios (of valid results only)."""
    res = cell["results"]
    gops = {lib: r["gops"] for lib, r in res.items() if r.get("gops")}
    dq = gops.get("dynaq")
    cell["ratio_vs_numpy"] = dq / gops["numpy"] if dq and "numpy" in gops else None
    peers = {lib: g for lib, g in gops.items() if lib != "dynaq"}
    best = max(peers, key=lambda lib: peers[lib]) if peers else None
    cell["best_peer"] = best
    cell["ratio_vs_best_peer"] = dq / peers[best] if dq and best else None


def _summary(cells: list[dict[str, Any]], threads: Sequence[int]) -> dict[str, Any]:
    def gm(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        vals = [c["ratio_vs_best_peer"] for c in cells if pred(c) and c["ratio_vs_best_peer"]]
        return {"geomean": _geomean(vals), "cells": len(vals)}

    def small(c: dict[str, Any]) -> bool:
        return bool(c["m"] <= 8)

    def large(c: dict[str, Any]) -> bool:
        return bool(c["m"] >= 32)

    def on(t: int, pred: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
        return lambda c: c["threads"] == t and pred(c)

    out: dict[str, Any] = {
        "ratio_vs_best_peer": {"m<=8": gm(small), "m>=32": gm(large)},
        "ratio_vs_best_peer_by_threads": {
            str(t): {"m<=8": gm(on(t, small)), "m>=32": gm(on(t, large))} for t in threads
        },
    }
    vals = [c["ratio_vs_numpy"] for c in cells if c["ratio_vs_numpy"]]
    out["ratio_vs_numpy"] = {"geomean": _geomean(vals), "cells": len(vals)}
    return out


def _time_lib(
    lib: _Lib, x: np.ndarray, threads: int, ref: _Reference, ops: float, cfg: BenchConfig
) -> dict[str, Any]:
    """Validates one library's output on one cell, then times it (only if it is right)."""
    try:
        with lib.running(threads):
            fn = lib.call(x, threads)
            y = lib.to_numpy(fn())  # the warm-up call, whose output is checked
            valid, err, problem = ref.check(y)
            del y
            timing = _measure(fn, cfg.min_reps, cfg.min_time, cfg.max_reps) if valid else None
    except Exception as e:  # a library failing must not end the whole run
        return {"valid": False, "rel_error": None, "error": f"{type(e).__name__}: {e}"}
    if timing is None:
        return {"valid": False, "rel_error": err, "error": problem}
    return {"valid": True, "rel_error": err, **timing, "gops": ops / timing["median_s"] / 1e9}


def _run_gemm(
    cfg: BenchConfig, libs: list[_Lib], threads: list[int], progress: _Progress
) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    last_threads = 1
    with tempfile.TemporaryDirectory(prefix="dynaq-bench-") as tmp:
        for k, n in cfg.shapes:
            progress.section(f"linear {k}x{n}: M in {list(cfg.ms)}, threads {threads}")
            progress.note(f"{k}x{n}: making the weight")
            rng = np.random.default_rng([cfg.seed, k, n])
            # Built once per (K, N): at 4096 x 11008 it is 45M floats.
            w = rng.standard_normal((n, k), dtype=np.float32)
            w *= np.float32(1.0 / math.sqrt(k))  # keeps y about unit-sized
            b = rng.standard_normal(n, dtype=np.float32)
            prepared: list[_Lib] = []
            failed: dict[str, str] = {}
            for lib in libs:
                progress.note(f"{k}x{n}: preparing {lib.name} (not timed)")
                try:
                    lib.prepare(w, b, threads, tmp)
                    prepared.append(lib)
                except Exception as e:
                    failed[lib.name] = f"setup failed: {type(e).__name__}: {e}"
            for m in cfg.ms:
                x = np.random.default_rng([cfg.seed, k, n, m]).standard_normal(
                    (m, k), dtype=np.float32
                )
                progress.note(f"{k}x{n}: float reference for M={m} (not timed)")
                ref = _Reference(x, w, b)
                ops = 2.0 * m * k * n
                for t in threads:
                    cell: dict[str, Any] = {"m": m, "k": k, "n": n, "threads": t, "ops": ops}
                    results: dict[str, Any] = {}
                    for lib in libs:
                        progress.step(f"M={m} {k}x{n} t={t} {lib.name}")
                        if lib.name in failed:
                            results[lib.name] = {"valid": False, "error": failed[lib.name]}
                            continue
                        if last_threads > 1 or t > 1:
                            # Every library gets the same quiet start: the previous library's
                            # workers (OpenBLAS, OpenMP, ONNX Runtime) spin for a while after
                            # their last call and would take the core a multi-threaded run needs.
                            time.sleep(SETTLE_S)
                        results[lib.name] = _time_lib(lib, x, t, ref, ops, cfg)
                        last_threads = t
                    cell["results"] = results
                    _ratios(cell)
                    cells.append(cell)
                del x, ref
            for lib in prepared:
                lib.release()
            del w, b
            gc.collect()
    return cells


# --------------------------------------------------------------------------------------------
# Activation quantization
# --------------------------------------------------------------------------------------------


def _run_quant(
    cfg: BenchConfig, libs: list[str], progress: _Progress, ort_lib: Optional[_Onnxruntime]
) -> dict[str, Any]:
    progress.section(
        "activation quantization, 1 thread: " + ", ".join(f"{r}x{c}" for r, c in cfg.quant_shapes)
    )
    time.sleep(SETTLE_S)  # after the multi-threaded sweep, let other thread pools go idle
    session = None
    if ort_lib is not None:
        from onnx import TensorProto, helper

        model = _ort_model(
            [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["R", "C"])],
            [
                helper.make_tensor_value_info("y", TensorProto.UINT8, ["R", "C"]),
                helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, []),
            ],
            [],
        )
        session = _ort_session(ort_lib.ort, model.SerializeToString(), 1)

    def dq_rel_error(values: np.ndarray, scale: Any, zp: Any, x: np.ndarray, per_row: bool):
        s = np.asarray(scale, np.float64)
        z = np.asarray(zp, np.float64)
        if per_row:
            s, z = s[..., None], z[..., None]
        return _rel_error((values.astype(np.float64) - z) * s, x.astype(np.float64))

    ops: list[tuple[str, str, Callable[[np.ndarray], Callable[[], Any]], Callable[..., Any]]] = []
    if "dynaq" in libs:

        def check_qt(q: Any, x: np.ndarray) -> float:
            return dq_rel_error(q.values, q.scale, q.zero_point, x, q.granularity == "row")

        def check_tuple(r: Any, x: np.ndarray) -> float:
            return dq_rel_error(r[0], r[1], r[2], x, False)

        ops += [
            (
                "quantize(granularity='tensor')",
                "dynaq",
                lambda x: lambda: dynaq.quantize(x, granularity="tensor"),
                check_qt,
            ),
            (
                "quantize(granularity='row')",
                "dynaq",
                lambda x: lambda: dynaq.quantize(x, granularity="row"),
                check_qt,
            ),
            (
                "dynamic_quantize_linear",
                "dynaq",
                lambda x: lambda: dynaq.dynamic_quantize_linear(x),
                check_tuple,
            ),
        ]
    if session is not None:
        run = session.run
        ops.append(
            (
                "DynamicQuantizeLinear",
                "onnxruntime",
                lambda x: lambda: run(None, {"x": x}),
                lambda r, x: dq_rel_error(r[0], r[1], r[2], x, False),
            )
        )

    results: list[dict[str, Any]] = []
    matches: dict[str, Optional[bool]] = {}
    previous = dynaq.get_num_threads()
    dynaq.set_num_threads(1)  # ONNX Runtime runs on one thread here too
    try:
        for rows, cols in cfg.quant_shapes:
            x = np.random.default_rng([cfg.seed, rows, cols, 1]).standard_normal(
                (rows, cols), dtype=np.float32
            )
            outputs: dict[str, Any] = {}
            for op, lib, make, check in ops:
                progress.step(f"{op} {lib} {rows}x{cols}")
                entry: dict[str, Any] = {"op": op, "lib": lib, "rows": rows, "cols": cols}
                try:
                    fn = make(x)
                    out = fn()
                    err = float(check(out, x))
                    outputs[f"{lib}:{op}"] = out
                    entry["rel_error"] = err
                    entry["valid"] = bool(err < MAX_REL_ERROR)
                    if entry["valid"]:
                        timing = _measure(fn, cfg.min_reps, cfg.min_time, cfg.max_reps)
                        entry.update(timing)
                        entry["gbps"] = 4.0 * x.size / timing["median_s"] / 1e9
                        entry["us_per_call"] = timing["median_s"] * 1e6
                    else:
                        entry["error"] = f"dequantized relative error {err:.3g}"
                except Exception as e:
                    entry.update(valid=False, error=f"{type(e).__name__}: {e}")
                results.append(entry)
            a = outputs.get("dynaq:dynamic_quantize_linear")
            o = outputs.get("onnxruntime:DynamicQuantizeLinear")
            if a is not None and o is not None:
                matches[f"{rows}x{cols}"] = bool(
                    np.array_equal(a[0], o[0])
                    and np.float32(a[1]) == np.float32(o[1])
                    and np.uint8(a[2]) == np.uint8(o[2])
                )
    finally:
        dynaq.set_num_threads(previous)
    return {"threads": 1, "results": results, "dql_matches_onnxruntime": matches}


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class _Progress:
    """A progress bar on a terminal (redrawn with ``\\r``), section lines otherwise, or nothing.

    Parameters
    ----------
    total : int
        Number of steps (one per measurement).
    mode : {"bar", "lines", "off"}
    stream : file
    """

    def __init__(self, total: int, mode: str, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.mode = mode
        self.stream = stream
        self.started = 0
        self.label = ""
        self.start = time.perf_counter()
        self.drawn = False

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 80
        return columns if columns >= 20 else 80  # a pseudo-terminal may report 0

    def _draw(self) -> None:
        width = self._width()
        done = max(self.started - 1, 0)  # the step in progress is not done yet
        fill = round(min(done / self.total, 1.0) * 24)
        text = (
            f"[{'#' * fill}{'.' * (24 - fill)}] {max(self.started, 1)}/{self.total} "
            f"{self._elapsed()} {self.label}"
        )
        self.stream.write("\r" + text[: width - 1].ljust(width - 1))
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * (self._width() - 1) + "\r")
            self.drawn = False

    def section(self, text: str) -> None:
        """A line that stays: printed above the bar, or alone in ``lines`` mode."""
        if self.mode == "off":
            return
        self._clear()
        self.stream.write(f"[{self._elapsed()}] {text}\n")
        self.stream.flush()
        if self.mode == "bar":
            self._draw()

    def note(self, label: str) -> None:
        """What is happening now (setup work that is not a step)."""
        self.label = label
        if self.mode == "bar":
            self._draw()

    def step(self, label: str) -> None:
        """One measurement starts."""
        self.started += 1
        self.note(label)

    def close(self) -> None:
        """Clears the bar (or ends the section lines)."""
        if self.mode == "bar":
            self._clear()
            self.stream.flush()
        elif self.mode == "lines":
            self.stream.write(f"[{self._elapsed()}] done\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _select_libs(requested: Optional[Sequence[str]]) -> tuple[list[str], dict[str, str]]:
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
        the ratios), ``summary``, ``quant``, ``started_at`` and ``wall_time_s``.

    Raises
    ------
    LibraryUnavailable
        When a library named in ``config.libs`` is not installed.
    """
    cfg = config or BenchConfig()
    t_start = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Before anything imports torch/onnxruntime, so the BLAS found is numpy's.
    doc: dict[str, Any] = {"schema": SCHEMA, **_machine_info(reexec)}
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
        threads = _resolve_threads(cfg.threads)
        libs = [_LIB_CLASSES[name]() for name in names]
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
        bar = _Progress(n_gemm + n_quant, mode, stream)
        try:
            cells = _run_gemm(cfg, libs, threads, bar) if cfg.gemm else []
            doc["gemm"] = cells
            doc["summary"] = _summary(cells, threads)
            ort_lib = by_name.get("onnxruntime")
            ort = ort_lib if isinstance(ort_lib, _Onnxruntime) else None
            doc["quant"] = _run_quant(cfg, names, bar, ort) if cfg.quant else None
        finally:
            bar.close()
    finally:
        dynaq.set_max_isa(previous_cap)
    doc["started_at"] = started_at
    doc["wall_time_s"] = time.perf_counter() - t_start
    return doc


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt_ratio(r: Optional[float]) -> str:
    return f"{r:.2f}x" if r else "-"


def _header(doc: dict[str, Any]) -> list[str]:
    mach, dq, npi = doc["machine"], doc["dynaq"], doc["numpy"]
    lines = [
        f"dynaq bench: {mach['cpu_model']}, {mach['physical_cores']} physical cores, "
        f"{mach['logical_cpus']} logical CPUs, {mach['arch']}, Python {mach['python']}",
        f"  dynaq {dq['version']}: path {dq['active_isa']}"
        + (f" (capped with --isa {dq['isa_cap']})" if dq.get("isa_cap") else "")
        + f", gemm kernel {dq['gemm_kernel']}, default threads {dq['default_threads']}",
    ]
    blas = npi["blas"]
    if blas:
        for p in blas:
            lines.append(
                f"  numpy {npi['version']}: BLAS {p['internal_api']} {p['version']}, kernel "
                f"{p['architecture']} ({p['threading_layer']})"
            )
    else:
        lines.append(f"  numpy {npi['version']}: BLAS unknown (threadpoolctl not installed)")
    if doc.get("torch"):
        lines.append(
            f"  torch {doc['torch']['version']}: quantize_dynamic qint8, quantized engine "
            f"{doc['torch']['quantized_engine']}"
        )
    if doc.get("onnxruntime"):
        o = doc["onnxruntime"]
        lines.append(
            f"  onnxruntime {o['version']} (onnx {o['onnx_version']}): quantize_dynamic QInt8, "
            "CPUExecutionProvider"
        )
    for lib, why in doc.get("unavailable", {}).items():
        lines.append(f"  {lib}: skipped, {why}")
    re = doc.get("reexec")
    if re and re.get("removed"):
        removed = ", ".join(f"{k}={v}" for k, v in re["removed"].items())
        lines.append(f"  re-executed without {removed} (OpenBLAS reads them when it loads)")
    if re and re.get("numpy_coretype"):
        coretype = re["numpy_coretype"]
        lines.append(f"  numpy run with OPENBLAS_CORETYPE={coretype} (--numpy-coretype)")
    elif not re:
        for var in BLAS_ENV:
            if doc["env"].get(var) is not None:
                lines.append(f"  WARNING: {var}={doc['env'][var]} is set: numpy may run slower")
    return lines


def format_report(doc: dict[str, Any]) -> str:
    """The header, the GOP/s table and the quantization table of a :func:`run_bench` result.

    Parameters
    ----------
    doc : dict
        A result of :func:`run_bench` (or its JSON, loaded back).

    Returns
    -------
    str
    """
    lines = _header(doc)
    cfg = doc["config"]
    libs = doc["libs"]
    cells = doc.get("gemm") or []
    problems: list[str] = []
    if cells:
        lines += [
            "",
            "Linear layer, fp32 in -> fp32 out (quantization included): GOP/s = 2*M*K*N / "
            f"median time; >= {cfg['min_reps']} calls and >= {cfg['min_time']:g} s each.",
        ]
        head = f"{'M':>5} {'K':>5} {'N':>6} {'thr':>3} |"
        head += "".join(f" {_SHORT[lib]:>7}" for lib in libs)
        head += f" | {'dq/np':>7} {'dq/best':>7} {'best peer':<9}"
        lines += [head, "-" * len(head)]
        for c in cells:
            row = f"{c['m']:>5} {c['k']:>5} {c['n']:>6} {c['threads']:>3} |"
            for lib in libs:
                r = c["results"].get(lib, {})
                if r.get("gops"):
                    row += f" {r['gops']:>7.1f}"
                else:
                    row += f" {'WRONG' if r.get('rel_error') is not None else 'FAILED':>7}"
                    problems.append(
                        f"  M={c['m']} {c['k']}x{c['n']} t={c['threads']} {lib}: {r.get('error')}"
                    )
            best = _SHORT.get(c["best_peer"] or "", "-")
            row += (
                f" | {_fmt_ratio(c['ratio_vs_numpy']):>7} "
                f"{_fmt_ratio(c['ratio_vs_best_peer']):>7} {best:<9}"
            )
            lines.append(row)
        s = doc["summary"]
        g = s["ratio_vs_best_peer"]
        lines.append(
            "geometric mean of dynaq/best-peer: "
            + ", ".join(
                f"{k}: {_fmt_ratio(v['geomean'])} ({v['cells']} cells)" for k, v in g.items()
            )
        )
        for t, by in s["ratio_vs_best_peer_by_threads"].items():
            lines.append(
                f"  threads={t}: "
                + ", ".join(f"{k}: {_fmt_ratio(v['geomean'])}" for k, v in by.items())
            )
        lines.append(f"geometric mean of dynaq/numpy: {_fmt_ratio(s['ratio_vs_numpy']['geomean'])}")
        if problems:
            lines += ["flagged (output wrong or call failed; not timed):"] + problems

    q = doc.get("quant")
    if q and q["results"]:
        shapes = list(dict.fromkeys((r["rows"], r["cols"]) for r in q["results"]))
        cols = [f"{r}x{c} {'us/call' if r == 1 else 'GB/s'}" for r, c in shapes]
        lines += [
            "",
            f"Activation quantization, {q['threads']} thread (GB/s of float32 input; "
            "us per call for a single row):",
        ]
        head = f"{'operation':<32} {'lib':<6}" + "".join(f" {c:>15}" for c in cols)
        lines += [head, "-" * len(head)]
        ops = list(dict.fromkeys((r["op"], r["lib"]) for r in q["results"]))
        for op, lib in ops:
            row = f"{op:<32} {_SHORT[lib]:<6}"
            for rows, ncols in shapes:
                r = next(
                    (
                        e
                        for e in q["results"]
                        if (e["op"], e["lib"], e["rows"], e["cols"]) == (op, lib, rows, ncols)
                    ),
                    None,
                )
                if r is None or not r.get("valid"):
                    row += f" {'WRONG' if r else '-':>15}"
                elif rows == 1:
                    row += f" {r['us_per_call']:>15.2f}"
                else:
                    row += f" {r['gbps']:>15.2f}"
            lines.append(row)
        for shape, same in q["dql_matches_onnxruntime"].items():
            verdict = "bit-identical" if same else "DIFFERENT"
            lines.append(
                f"dynaq.dynamic_quantize_linear vs ORT DynamicQuantizeLinear at {shape}: {verdict}"
            )
    lines.append("")
    lines.append(f"total wall time {doc['wall_time_s']:.1f} s")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: str) -> None:
    """Writes a :func:`run_bench` result as JSON (infinities as null).

    Parameters
    ----------
    doc : dict
    path : str
    """

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with open(path, "w") as f:
        json.dump(clean(doc), f, indent=2)
        f.write("\n")


def matplotlib_missing() -> Optional[str]:
    """Why ``--plot`` cannot work here (None when matplotlib is importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install matplotlib (or the 'dynaq[plot]' extra)"
    return None


def write_plot(doc: dict[str, Any], path: str) -> None:
    """Writes a PNG: GOP/s against M, one panel per (K, N), one line per library and threads.

    Parameters
    ----------
    doc : dict
        A result of :func:`run_bench`.
    path : str

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    """
    # The object-oriented API with the Agg canvas: no pyplot, so no global backend change in
    # the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = doc.get("gemm") or []
    shapes = list(dict.fromkeys((c["k"], c["n"]) for c in cells))
    ncols = min(3, max(len(shapes), 1))
    nrows = max(1, math.ceil(len(shapes) / ncols))
    fig = Figure(figsize=(5 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    colors = {"dynaq": "C3", "numpy": "C0", "torch": "C1", "onnxruntime": "C2"}
    styles = ["-", "--", ":", "-."]
    threads = doc.get("threads") or []
    for i, (k, n) in enumerate(shapes):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for lib in doc["libs"]:
            for j, t in enumerate(threads):
                pts = [
                    (c["m"], c["results"][lib]["gops"])
                    for c in cells
                    if (c["k"], c["n"], c["threads"]) == (k, n, t)
                    and c["results"].get(lib, {}).get("gops")
                ]
                if pts:
                    ms, gops = zip(*sorted(pts))
                    ax.plot(
                        ms,
                        gops,
                        styles[j % len(styles)],
                        marker="o",
                        markersize=3,
                        color=colors.get(lib),
                        label=f"{_SHORT[lib]} t={t}",
                    )
        ax.set_xscale("log", base=2)
        ms_here = sorted({c["m"] for c in cells if (c["k"], c["n"]) == (k, n)})
        ax.set_xticks(ms_here, [str(m) for m in ms_here])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(f"K={k}, N={n}")
        ax.set_xlabel("M")
        ax.set_ylabel("GOP/s")
        ax.grid(True, which="both", alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    dq = doc["dynaq"]
    fig.suptitle(
        f"dynaq {dq['version']} ({dq['active_isa']}, {dq['gemm_kernel']}) on "
        f"{doc['machine']['cpu_model']}",
        fontsize="medium",
    )
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _int_list(text: str) -> tuple[int, ...]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of integers")
    return tuple(dict.fromkeys(_positive_int(s) for s in items))


def _shape_list(text: str) -> tuple[Shape, ...]:
    shapes = []
    for item in (s.strip() for s in text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected KxN (e.g. 768x3072), got {item!r}")
        try:
            k, n = (_positive_int(p) for p in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected KxN with positive integers (e.g. 768x3072), got {item!r}"
            ) from None
        shapes.append((k, n))
    return tuple(dict.fromkeys(shapes))


def _threads_list(text: str) -> tuple[Threads, ...]:
    out: list[Threads] = []
    for item in (s.strip().lower() for s in text.split(",")):
        out.append("all" if item == "all" else _positive_int(item))
    return tuple(dict.fromkeys(out))


def _lib_list(text: str) -> tuple[str, ...]:
    out = []
    for item in (s.strip().lower() for s in text.split(",")):
        name = _LIB_ALIASES.get(item, item)
        if name not in LIBS:
            raise argparse.ArgumentTypeError(
                f"unknown library {item!r}; choose from {', '.join(LIBS)}"
            )
        out.append(name)
    return tuple(dict.fromkeys(out))


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    isas = dynaq.cpu_info()["arch_isas"]
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--m", type=_int_list, metavar="M,...", help="batch rows (default 1,8,32,128,512)"
    )
    sweep.add_argument(
        "--shapes",
        type=_shape_list,
        metavar="KxN,...",
        help="in x out features (default 768x768,768x3072,3072x768,4096x4096,4096x11008)",
    )
    sweep.add_argument(
        "--threads",
        type=_threads_list,
        metavar="T,...",
        help="thread counts; 'all' is dynaq's default, the physical cores (default 1,all)",
    )
    sweep.add_argument(
        "--libs",
        type=_lib_list,
        metavar="LIB,...",
        help=f"libraries to time, of {','.join(LIBS)} (default: those installed)",
    )
    sweep.add_argument("--isa", choices=isas, help="cap dynaq's kernel path (dynaq.set_max_isa)")
    sweep.add_argument(
        "--quick", action="store_true", help="a tiny sweep for smoke tests (M 1,8; 64x96; 1 thread)"
    )
    sections = sweep.add_mutually_exclusive_group()
    sections.add_argument(
        "--no-quant", action="store_true", help="skip the activation quantization section"
    )
    sections.add_argument(
        "--quant-only", action="store_true", help="only the activation quantization section"
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--repeats",
        type=_positive_int,
        metavar="N",
        help=f"minimum calls per measurement (default {DEFAULT_MIN_REPS})",
    )
    timing.add_argument(
        "--min-time",
        type=_seconds,
        metavar="SECONDS",
        help=f"keep calling until this long per measurement (default {DEFAULT_MIN_TIME})",
    )
    timing.add_argument(
        "--max-reps",
        type=_positive_int,
        metavar="N",
        help=f"most calls per measurement (default {DEFAULT_MAX_REPS})",
    )
    timing.add_argument("--seed", type=int, default=0, help="seed of the random data")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write every result as JSON")
    out.add_argument("--plot", metavar="PATH", help="write a PNG plot (needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    out.add_argument(
        "--numpy-coretype",
        metavar="NAME",
        help="run numpy with OPENBLAS_CORETYPE=NAME (e.g. Haswell) instead of with the "
        "OpenBLAS variables removed",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` that parsed ``bench`` options describe.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    BenchConfig
    """
    base = quick_config() if args.quick else BenchConfig()
    fields: dict[str, Any] = {
        "ms": args.m,
        "shapes": args.shapes,
        "threads": args.threads,
        "libs": args.libs,
        "isa": args.isa,
        "min_reps": args.repeats,
        "min_time": args.min_time,
        "max_reps": args.max_reps,
        "seed": args.seed,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["gemm"] = not args.quant_only
    fields["quant"] = not args.no_quant
    cfg = dataclasses.replace(base, **fields)
    if cfg.max_reps < cfg.min_reps:
        cfg = dataclasses.replace(cfg, max_reps=cfg.min_reps)
    return cfg


def reexec_without_blas_env(
    argv: Sequence[str], numpy_coretype: Optional[str], stream: TextIO
) -> Optional[dict[str, Any]]:
    """Re-executes ``python -m dynaq <argv>`` when OpenBLAS' variables are not as wanted.

    OpenBLAS reads ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` once, when numpy loads it,
    and ``import dynaq`` has loaded numpy already: only a new process sees a change. Wanted:
    both removed, or ``OPENBLAS_CORETYPE=numpy_coretype`` alone. Returns None when nothing
    had to change, else (in the re-executed process) what was changed; does not return when
    it re-executes.

    Parameters
    ----------
    argv : sequence of str
        The arguments after ``python -m dynaq`` (``bench`` first).
    numpy_coretype : str, optional
    stream : file
        Where the note about the re-execution goes.

    Returns
    -------
    dict or None
        ``{"removed": {var: value}, "numpy_coretype": name or None}``.
    """
    marker = os.environ.pop(REEXEC_MARKER, None)
    wanted = {"OPENBLAS_CORETYPE": numpy_coretype, "OPENBLAS_L2_SIZE": None}
    current = {var: os.environ.get(var) for var in BLAS_ENV}
    if current == wanted:
        if marker is None:
            return {"removed": {}, "numpy_coretype": numpy_coretype} if numpy_coretype else None
        return dict(json.loads(marker))
    if marker is not None:  # already re-executed once and still not right: do not loop
        stream.write("warning: could not set the OpenBLAS variables; numpy runs as is\n")
        return dict(json.loads(marker))
    removed = {var: value for var, value in current.items() if value is not None}
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    if numpy_coretype:
        env["OPENBLAS_CORETYPE"] = numpy_coretype
    env[REEXEC_MARKER] = json.dumps({"removed": removed, "numpy_coretype": numpy_coretype})
    what = ", ".join(f"{k}={v}" for k, v in removed.items()) or "nothing removed"
    extra = f", with OPENBLAS_CORETYPE={numpy_coretype}" if numpy_coretype else ""
    stream.write(
        f"dynaq bench: re-executing without {what}{extra} (OpenBLAS reads them when numpy "
        "loads it)\n"
    )
    stream.flush()
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "dynaq", *argv]
    os.execve(sys.executable, cmd, env)
    raise AssertionError("unreachable")  # pragma: no cover


def run_cli(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Runs ``python -m dynaq bench`` with parsed options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``bench`` options.
    parser : argparse.ArgumentParser
        The ``bench`` parser, for usage errors (exit status 2).
    argv : sequence of str, optional
        The full arguments after ``python -m dynaq``; given, the command re-executes itself
        when the OpenBLAS variables must change. In-process callers leave it out.

    Returns
    -------
    int
        Exit status.
    """
    if args.plot and matplotlib_missing():
        parser.error(str(matplotlib_missing()))
    reexec = None
    if argv is not None:
        reexec = reexec_without_blas_env(argv, args.numpy_coretype, sys.stderr)
    elif args.numpy_coretype:
        parser.error("--numpy-coretype needs a new process: run `python -m dynaq bench ...`")
    cfg = config_from_args(args)
    try:
        doc = run_bench(cfg, progress=not args.quiet, stream=sys.stderr, reexec=reexec)
    except LibraryUnavailable as e:
        parser.error(str(e))
    # Files first: a closed stdout (`| head`) must not lose minutes of measurements.
    written = []
    if args.json:
        write_json(doc, args.json)
        written.append(args.json)
    if args.plot:
        write_plot(doc, args.plot)
        written.append(args.plot)
    print(format_report(doc))
    for path in written:
        print(f"wrote {path}")
    return 0
