"""The linear-layer sweep: for each cell (M, K, N, threads), every library's output checked
against a float reference, then timed; the speed ratios of each cell and their geometric means.
"""

from __future__ import annotations

import gc
import itertools
import math
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

import dynaq
from dynaq._text import Progress

from .config import MAX_REL_ERROR, SETTLE_S, BenchConfig, Threads
from .peers import W4_PAIRS, Lib
from .timing import measure

__all__ = [
    "Reference",
    "geomean",
    "ratios",
    "reference_rows",
    "rel_error",
    "resolve_threads",
    "run_gemm",
    "summary",
    "time_lib",
]


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    """``|y - ref| / |ref|`` (Frobenius norms, in float64)."""
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(y.astype(np.float64) - ref)) / (denom if denom else 1.0)


def reference_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 ``x[rows] @ w.T + b``, converting ``w`` a slab at a time (it can be 180 MB)."""
    n, k = w.shape
    xs = x[rows].astype(np.float64)
    out = np.empty((len(rows), n))
    step = max(1, (1 << 22) // max(k, 1))
    for c in range(0, n, step):
        out[:, c : c + step] = xs @ w[c : c + step].astype(np.float64).T
    out += b
    return out


class Reference:
    """The float result of one (M, K, N): float64 on sample rows, numpy float32 in full."""

    def __init__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
        m = x.shape[0]
        self.shape = (m, w.shape[0])
        self.rows = np.unique(np.linspace(0, m - 1, min(m, 8)).round().astype(np.intp))
        self.sample = reference_rows(x, w, b, self.rows)
        full = x @ w.T + b
        # float32 BLAS is accurate to ~1e-6 here; trust it for the full check only if it is.
        self.full: Optional[np.ndarray] = (
            full if rel_error(full[self.rows], self.sample) < 1e-3 else None
        )

    def check(
        self, y: np.ndarray, max_error: float = MAX_REL_ERROR
    ) -> tuple[bool, float, Optional[str]]:
        """``(valid, relative error, problem)`` of one library's output."""
        if y.shape != self.shape:
            return False, math.inf, f"output shape {y.shape}, expected {self.shape}"
        if not np.all(np.isfinite(y)):
            return False, math.inf, "output holds NaN or infinity"
        err = rel_error(y[self.rows], self.sample)
        if self.full is not None:
            err = max(err, rel_error(y, self.full))
        if not err < max_error:
            return False, err, f"relative error {err:.3g} > {max_error} vs the float result"
        return True, err, None


def resolve_threads(threads: Sequence[Threads]) -> list[int]:
    """Thread counts with ``"all"`` replaced by dynaq's current count, duplicates dropped."""
    every = dynaq.get_num_threads()
    out = [every if t == "all" else int(t) for t in threads]
    return list(dict.fromkeys(out))


def geomean(values: Sequence[float]) -> Optional[float]:
    """The geometric mean of the positive values (None when there is none)."""
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def ratios(cell: dict[str, Any]) -> None:
    """Adds dynaq/numpy and dynaq/best-peer speed ratios (of valid results only; the peers of
    int8 dynaq are the float and int8 libraries), and for each 4-bit dynaq column its speed
    against int8 dynaq and against the 4-bit peer of its block size (``cell["w4"]``)."""
    res = cell["results"]
    gops = {lib: r["gops"] for lib, r in res.items() if r.get("gops")}
    dq = gops.get("dynaq")
    cell["ratio_vs_numpy"] = dq / gops["numpy"] if dq and "numpy" in gops else None
    four_bit = set(W4_PAIRS) | {p for _, p in W4_PAIRS.values() if p}
    peers = {lib: g for lib, g in gops.items() if lib != "dynaq" and lib not in four_bit}
    best = max(peers, key=lambda lib: peers[lib]) if peers else None
    cell["best_peer"] = best
    cell["ratio_vs_best_peer"] = dq / peers[best] if dq and best else None
    w4: dict[str, Any] = {}
    for lib, (base, peer) in W4_PAIRS.items():
        if gops.get(lib):
            g = gops[lib]
            w4[lib] = {
                "vs_int8": g / gops[base] if gops.get(base) else None,
                "vs_peer": g / gops[peer] if peer and gops.get(peer) else None,
            }
    cell["w4"] = w4


def summary(cells: list[dict[str, Any]], threads: Sequence[int]) -> dict[str, Any]:
    """Geometric means of the ratios: dynaq/best-peer for M <= 8 and M >= 32 (over all
    cells and per thread count), and dynaq/numpy."""

    def gm(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        vals = [c["ratio_vs_best_peer"] for c in cells if pred(c) and c["ratio_vs_best_peer"]]
        return {"geomean": geomean(vals), "cells": len(vals)}

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
    out["ratio_vs_numpy"] = {"geomean": geomean(vals), "cells": len(vals)}

    def w4(lib: str, key: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        vals = [c["w4"][lib][key] for c in cells if pred(c) and c["w4"].get(lib, {}).get(key)]
        return {"geomean": geomean(vals), "cells": len(vals)}

    libs_seen = {lib for c in cells for lib in c.get("w4", {})}
    out["w4"] = {
        lib: {
            key: {"m<=8": w4(lib, key, small), "m>=32": w4(lib, key, large)}
            for key in ("vs_int8", "vs_peer")
        }
        for lib in W4_PAIRS
        if lib in libs_seen
    }
    return out


def time_lib(
    lib: Lib | Sequence[Lib],
    x: np.ndarray,
    threads: int,
    ref: Reference | Sequence[Reference],
    ops: float,
    cfg: BenchConfig,
) -> dict[str, Any]:
    """Validates one library's output on one cell, then times it (only if it is right).
    Given copies of the library prepared with different weights (and their references), every
    copy's output is checked and the timed calls go round the copies."""
    copies = [lib] if isinstance(lib, Lib) else list(lib)
    refs = [ref] if isinstance(ref, Reference) else list(ref)
    try:
        with copies[0].running(threads):
            fns = [c.call(x, threads) for c in copies]
            err, valid, problem = 0.0, True, None
            for c, f, r in zip(copies, fns, refs):
                y = c.to_numpy(f())  # the warm-up call, whose output is checked
                ok, e, why = r.check(y, c.max_error or MAX_REL_ERROR)
                del y
                err = max(err, e)
                if not ok:
                    valid, problem = False, why
                    break
            fn = fns[0] if len(fns) == 1 else _round_robin(fns)
            timing = measure(fn, cfg.min_reps, cfg.min_time, cfg.max_reps) if valid else None
    except Exception as e:  # a library failing must not end the whole run
        return {"valid": False, "rel_error": None, "error": f"{type(e).__name__}: {e}"}
    if timing is None:
        return {"valid": False, "rel_error": err, "error": problem}
    return {"valid": True, "rel_error": err, **timing, "gops": ops / timing["median_s"] / 1e9}


def _round_robin(fns: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One call of each of ``fns`` in turn, a call at a time."""
    turn = iter(itertools.cycle(fns))
    return lambda: next(turn)()


def _weight(cfg: BenchConfig, k: int, n: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias ``i`` of a (K, N) (the first is the same whatever ``rotate``)."""
    rng = np.random.default_rng([cfg.seed, k, n] + ([i] if i else []))
    w = rng.standard_normal((n, k), dtype=np.float32)
    w *= np.float32(1.0 / math.sqrt(k))  # keeps y about unit-sized
    return w, rng.standard_normal(n, dtype=np.float32)


def run_gemm(
    cfg: BenchConfig, libs: list[Lib], threads: list[int], progress: Progress
) -> list[dict[str, Any]]:
    """The ``gemm`` cells of a result: every (K, N), M and thread count, each library in turn
    (one :class:`Progress` step per library and cell)."""
    cells: list[dict[str, Any]] = []
    last_threads = 1
    with tempfile.TemporaryDirectory(prefix="dynaq-bench-") as tmp:
        for k, n in cfg.shapes:
            progress.section(f"linear {k}x{n}: M in {list(cfg.ms)}, threads {threads}")
            progress.note(f"{k}x{n}: making the weights")
            # Built once per (K, N): at 4096 x 11008 each is 45M floats.
            weights = [_weight(cfg, k, n, i) for i in range(cfg.rotate)]
            prepared: list[Lib] = []
            copies: dict[str, list[Lib]] = {}
            failed: dict[str, str] = {}
            for lib in libs:
                progress.note(f"{k}x{n}: preparing {lib.name} (not timed)")
                mine = [lib] + [type(lib)() for _ in weights[1:]]
                try:
                    for c, (w, b) in zip(mine, weights):
                        c.prepare(w, b, threads, tmp)
                        prepared.append(c)
                    copies[lib.name] = mine
                except Exception as e:
                    failed[lib.name] = f"setup failed: {type(e).__name__}: {e}"
            for m in cfg.ms:
                x = np.random.default_rng([cfg.seed, k, n, m]).standard_normal(
                    (m, k), dtype=np.float32
                )
                progress.note(f"{k}x{n}: float reference for M={m} (not timed)")
                refs = [Reference(x, w, b) for w, b in weights]
                ops = 2.0 * m * k * n
                for t in threads:
                    cell: dict[str, Any] = {"m": m, "k": k, "n": n, "threads": t, "ops": ops}
                    if cfg.rotate > 1:
                        cell["rotate"] = cfg.rotate
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
                        results[lib.name] = time_lib(copies[lib.name], x, t, refs, ops, cfg)
                        last_threads = t
                    cell["results"] = results
                    ratios(cell)
                    cells.append(cell)
                del x, refs
            for lib in prepared:
                lib.release()
            del weights
            gc.collect()
    return cells
