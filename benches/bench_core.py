#!/usr/bin/env python3
"""Single-thread benchmark: dynaq.linear against numpy's float32 matmul.

Times ``dynaq.linear(x, packed_w, b)`` (activation quantization, int8 GEMM and the fused
dequantizing epilogue, all included) against ``x @ w.T + b`` in float32 numpy, both on ONE
thread (``dynaq.set_num_threads(1)`` and threadpoolctl's ``threadpool_limits(1)``), for
K = N = 3072 and M in 1, 8, 32, 128, 512. Prints medians, GOP/s (2*M*N*K operations per call)
and the speed ratio, plus the BLAS numpy uses and dynaq's kernels.

Run it with the OpenBLAS tuning variables unset, which can slow numpy down on some machines:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/bench_core.py [--json out.json]

Not collected by pytest (benches/ is outside testpaths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

SLOWING_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _time(fn: Callable[[], Any], repeats: int, min_time: float) -> list[float]:
    """Per-call times (s): one warm-up, then `repeats` samples of enough calls for `min_time`."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=3072, help="in_features (default 3072)")
    parser.add_argument("--n", type=int, default=3072, help="out_features (default 3072)")
    parser.add_argument(
        "--m", type=int, nargs="+", default=[1, 8, 32, 128, 512], help="batch rows to time"
    )
    parser.add_argument("--repeats", type=int, default=7, help="samples per case (median taken)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per sample")
    parser.add_argument("--isa", default=None, help="cap dynaq's kernel path (e.g. avx2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    for var in SLOWING_ENV:
        if var in os.environ:
            print(
                f"warning: {var}={os.environ[var]!r} is set: it can make OpenBLAS (numpy) much "
                f"slower on this machine; run `env -u {' -u '.join(SLOWING_ENV)} python "
                f"benches/bench_core.py` for a fair baseline",
                file=sys.stderr,
            )

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # pragma: no cover
        print("error: threadpoolctl is required (pip install threadpoolctl)", file=sys.stderr)
        return 2

    import dynaq

    if args.isa:
        dynaq.set_max_isa(args.isa)
    dynaq.set_num_threads(1)
    info = dynaq.cpu_info()
    rng = np.random.default_rng(0)
    k, n = args.k, args.n
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    pw = dynaq.pack_weight(w)
    w_t = w.T  # a view: BLAS multiplies by the transpose directly, as in `x @ w.T + b`

    rows = []
    with threadpool_limits(limits=1):
        pools = threadpool_info()
        for m in args.m:
            x = rng.standard_normal((m, k)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            t_dq = _time(
                lambda x=x, out=out: dynaq.linear(x, pw, b, out=out), args.repeats, args.min_time
            )
            t_np = _time(lambda x=x: x @ w_t + b, args.repeats, args.min_time)
            # sanity: same layer, within quantization error
            ref = x @ w_t + b
            rel = float(np.linalg.norm(dynaq.linear(x, pw, b) - ref) / np.linalg.norm(ref))
            ops = 2.0 * m * n * k
            md, mn = statistics.median(t_dq), statistics.median(t_np)
            rows.append(
                {
                    "m": m,
                    "k": k,
                    "n": n,
                    "dynaq_median_s": md,
                    "numpy_median_s": mn,
                    "dynaq_gops": ops / md / 1e9,
                    "numpy_gops": ops / mn / 1e9,
                    "speedup": mn / md,
                    "rel_error": rel,
                    "dynaq_samples_s": t_dq,
                    "numpy_samples_s": t_np,
                }
            )

    blas = [
        {
            key: p.get(key)
            for key in (
                "internal_api",
                "version",
                "threading_layer",
                "architecture",
                "num_threads",
                "filepath",
            )
        }
        for p in pools
        if p.get("user_api") == "blas"
    ]
    print(
        f"dynaq {dynaq.__version__} | numpy {np.__version__} | python "
        f"{platform.python_version()} | {platform.machine()}"
    )
    print(
        f"dynaq path: {info['active_isa']} (available: {', '.join(info['isas'])}), "
        f"kernels: " + ", ".join(f"{op}={name}" for op, name in info["kernels"].items())
    )
    print(f"dynaq threads: {dynaq.get_num_threads()}")
    if blas:
        for p in blas:
            print(
                f"numpy BLAS: {p['internal_api']} {p['version']} "
                f"(arch {p['architecture']}, threading {p['threading_layer']}, "
                f"threads {p['num_threads']} under the limit) {p['filepath']}"
            )
    else:
        print("numpy BLAS: none reported by threadpoolctl")
    for var in SLOWING_ENV:
        if var in os.environ:
            print(f"WARNING: {var}={os.environ[var]} is set (numpy may be slowed down)")
    print()
    header = (
        f"{'M':>5} {'K':>5} {'N':>5} | {'dynaq ms':>9} {'GOP/s':>7} | "
        f"{'numpy ms':>9} {'GOP/s':>7} | {'speedup':>7} | {'rel err':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['m']:>5} {r['k']:>5} {r['n']:>5} | {r['dynaq_median_s'] * 1e3:>9.3f} "
            f"{r['dynaq_gops']:>7.1f} | {r['numpy_median_s'] * 1e3:>9.3f} "
            f"{r['numpy_gops']:>7.1f} | {r['speedup']:>6.2f}x | {r['rel_error']:>8.1e}"
        )
    print(
        "\nmedians of",
        args.repeats,
        "samples; GOP/s counts 2*M*N*K per call; dynaq times "
        "include quantizing x and the float32 epilogue (+bias).",
    )

    if args.json:
        doc = {
            "dynaq_version": dynaq.__version__,
            "numpy_version": np.__version__,
            "cpu_info": info,
            "blas": blas,
            "env": {v: os.environ.get(v) for v in SLOWING_ENV},
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
