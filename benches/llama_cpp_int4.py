"""dynaq's 4-bit weights against llama.cpp's: ``ggml_mul_mat`` on the CPU with ``q4_0`` and
``q4_K`` weights (float32 activations, which ggml quantizes to its ``q8`` blocks inside the
call), beside ``dynaq.linear`` with int8 and 4-bit weights, in one process, interleaved.

    pip install --no-deps llama-cpp-python   # builds llama.cpp from source (~8 min, 2 cores)
    DYNAQ_NUM_THREADS=1 python benches/llama_cpp_int4.py [MxKxN ...] [--threads T]

GOP/s = 2 M K N / median time; each line also gives every result's relative error against
float64. ggml runs from a plain context (``ggml_init``): its default CPU path, not the repacked
weight layouts that llama.cpp's CPU backend sets up for a whole model.
"""

from __future__ import annotations

import argparse
import ctypes as C
import importlib.util
import os
import time
from typing import Any, Callable

import dynaq
import numpy as np

#: ggml's type numbers (``enum ggml_type``) and block lengths along K (ggml aborts on a K that
#: its block does not divide).
GGML_TYPES = {"q4_0": 2, "q4_K": 12}
GGML_BLOCKS = {"q4_0": 32, "q4_K": 256}


class InitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


def load_ggml() -> tuple[Any, Any]:
    """ggml's base and CPU libraries from the installed ``llama_cpp`` package (found without
    importing it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise SystemExit("llama-cpp-python is not installed (pip install llama-cpp-python)")
    lib = os.path.join(os.path.dirname(spec.origin), "lib")
    base = C.CDLL(os.path.join(lib, "libggml-base.so"), mode=C.RTLD_GLOBAL)
    cpu = C.CDLL(os.path.join(lib, "libggml-cpu.so"), mode=C.RTLD_GLOBAL)
    sig = {
        "ggml_init": (C.c_void_p, [InitParams]),
        "ggml_new_tensor_2d": (C.c_void_p, [C.c_void_p, C.c_int, C.c_int64, C.c_int64]),
        "ggml_mul_mat": (C.c_void_p, [C.c_void_p, C.c_void_p, C.c_void_p]),
        "ggml_new_graph": (C.c_void_p, [C.c_void_p]),
        "ggml_build_forward_expand": (None, [C.c_void_p, C.c_void_p]),
        "ggml_get_data": (C.c_void_p, [C.c_void_p]),
        "ggml_free": (None, [C.c_void_p]),
        "ggml_quantize_chunk": (
            C.c_size_t,
            [C.c_int, C.c_void_p, C.c_void_p, C.c_int64, C.c_int64, C.c_int64, C.c_void_p],
        ),
    }
    for name, (res, args) in sig.items():
        f = getattr(base, name)
        f.restype, f.argtypes = res, args
    cpu.ggml_graph_compute_with_ctx.restype = C.c_int
    cpu.ggml_graph_compute_with_ctx.argtypes = [C.c_void_p, C.c_void_p, C.c_int]
    if hasattr(cpu, "ggml_cpu_init"):
        cpu.ggml_cpu_init()
    return base, cpu


def ggml_matmul(
    ggml: tuple[Any, Any], w: np.ndarray, x: np.ndarray, qtype: str, threads: int
) -> tuple[Callable[[], None], Callable[[], np.ndarray], Callable[[], None]]:
    """``x @ w.T`` by ggml with ``w`` quantized to ``qtype``: (run, result, free)."""
    base, cpu = ggml
    (n, k), m = w.shape, x.shape[0]
    # The compute call takes its work buffer from the context too (over 128 MiB for q4_K).
    size = w.nbytes + x.nbytes * 4 + m * n * 8 + (512 << 20)
    ctx = base.ggml_init(InitParams(size, None, False))
    a = base.ggml_new_tensor_2d(ctx, GGML_TYPES[qtype], k, n)
    b = base.ggml_new_tensor_2d(ctx, 0, k, m)
    base.ggml_quantize_chunk(GGML_TYPES[qtype], w.ctypes.data, base.ggml_get_data(a), 0, n, k, None)
    C.memmove(base.ggml_get_data(b), x.ctypes.data, x.nbytes)
    out = base.ggml_mul_mat(ctx, a, b)
    graph = base.ggml_new_graph(ctx)
    base.ggml_build_forward_expand(graph, out)

    def result() -> np.ndarray:
        data = (C.c_float * (m * n)).from_address(base.ggml_get_data(out))
        return np.ctypeslib.as_array(data).reshape(m, n).copy()

    return (
        lambda: cpu.ggml_graph_compute_with_ctx(ctx, graph, threads),
        result,
        lambda: base.ggml_free(ctx),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shapes", nargs="*", default=["1x4096x4096", "32x4096x4096", "1x4096x11008"])
    ap.add_argument("--threads", type=int, default=1, help="ggml's threads (dynaq: its own)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median of them)")
    args = ap.parse_args()
    ggml = load_ggml()
    rng = np.random.default_rng(0)
    for spec in args.shapes:
        m, k, n = map(int, spec.split("x"))
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        calls: dict[str, tuple[Callable[[], Any], float]] = {}
        frees = []
        for q in GGML_TYPES:
            if n < 512:
                # Seen here (ggml of llama-cpp-python 0.3.36): at N = 48 and 64 the compute
                # call asked a plain context for more than its whole pool, and aborted.
                print(f"{spec}: ggml is timed from N = 512 on; skipped")
                break
            if k % GGML_BLOCKS[q]:
                print(f"{spec}: ggml {q} needs K to be a multiple of {GGML_BLOCKS[q]}; skipped")
                continue
            run, result, free = ggml_matmul(ggml, w, x, q, args.threads)
            run()
            calls[f"ggml {q}"] = (run, float(np.linalg.norm(result() - ref) / np.linalg.norm(ref)))
            frees.append(free)
        out = np.empty((m, n), np.float32)
        packed = {"dynaq int8": dynaq.pack_weight(w)}
        for g in (32, 128):
            if k % g == 0:
                packed[f"dynaq w4 g{g}"] = dynaq.pack_weight(w, bits=4, group_size=g)
        for name, pw in packed.items():
            dynaq.linear(x, pw, out=out)
            err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
            calls[name] = (lambda pw=pw, x=x, out=out: dynaq.linear(x, pw, out=out), err)
        times: dict[str, list[float]] = {c: [] for c in calls}
        reps = max(3, int(2e8 / (m * n * k)))
        for _ in range(args.rounds):
            for name, (f, _) in calls.items():
                t = time.perf_counter()
                for _ in range(reps):
                    f()
                times[name].append((time.perf_counter() - t) / reps)
        ops = 2.0 * m * k * n
        cells = [
            f"{name} {ops / np.median(times[name]) / 1e9:.0f} GOP/s (error {calls[name][1]:.3f})"
            for name in calls
        ]
        print(f"M={m} K={k} N={n}: " + " | ".join(cells), flush=True)
        for free in frees:
            free()


if __name__ == "__main__":
    main()
