"""BERT-base-sized encoder on the CPU: float32 against dynaq and PyTorch dynamic int8.

A Hugging Face ``BertModel`` built from a config (12 layers, hidden 768, 12 heads,
intermediate 3072; random weights, nothing downloaded) runs a batch of 8 sequences of 128
tokens, as float32, after ``dynaq.torch.quantize_dynamic`` and after
``torch.ao.quantization.quantize_dynamic``, on 1 and 2 threads (``torch.set_num_threads`` and
``dynaq.set_num_threads`` both set to the count). Prints the median forward time of each, the
speedups, and the output error against float32.

This is a benchmark, not a test::

    python benches/bench_bert.py                 # about 2-4 minutes on 2 cores
    python benches/bench_bert.py --repeats 3 --layers 4 --threads 1

Needs torch and transformers (``pip install "dynaq[torch]" transformers``).

Thread pools: torch's OpenMP workers busy-wait for a while after each parallel op (libgomp's
default). By default the script calls ``dynaq.torch.share_torch_threads()``, so that dynaq's
GEMMs run on those same OpenMP threads and the dynaq model has one set of threads, like the
other two; ``--dynaq-threads own`` measures dynaq on its own pool instead. By default the script
measures in two fresh processes: the environment as it is for every thread count, and
``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP workers sleep; set before torch loads) again for counts
above 1 (it changes nothing on 1 thread); the policy applies to all three models alike and the
table names it (``--omp-wait-policy default|passive`` for one of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

_argv = " ".join(sys.argv[1:]).replace("=", " ").split()
if __name__ == "__main__" and "--omp-wait-policy passive" in " ".join(_argv):
    # libgomp reads its environment once, when torch loads it: set it before the import.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

try:
    import torch
    import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"bench_bert.py needs torch and transformers ({e})")

import dynaq  # noqa: E402
import dynaq.torch  # noqa: E402


def build_model(layers: int, seed: int = 0) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


def torch_quantize(model: torch.nn.Module) -> torch.nn.Module:
    # torch.ao.quantization is deprecated in recent PyTorch releases; silence its warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**inputs).last_hidden_state


def median_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median time of each function, timed in interleaved rounds (one call of each per round), so
    that a slow phase of a shared machine hits every model alike rather than the one that
    happened to run during it."""
    for fn in fns.values():
        fn()  # warm up (first-call allocations, kernel selection)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(args: argparse.Namespace, threads: list[int]) -> dict[str, Any]:
    """Times the three models in this process; returns the header and one row per entry."""
    dynaq.torch.share_torch_threads(args.dynaq_threads == "shared")
    model = build_model(args.layers)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(0, 30522, (args.batch, args.seq), generator=g),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.int64),
    }
    variants = {
        "float32": model,
        "dynaq int8": dynaq.torch.quantize_dynamic(model),
        "torch int8": torch_quantize(model),
    }
    ref = forward(model, inputs)
    errors = {
        name: float((forward(m, inputs) - ref).norm() / ref.norm()) for name, m in variants.items()
    }
    info = dynaq.cpu_info()
    header = (
        f"BERT encoder: {args.layers} layers, hidden 768, 12 heads, batch {args.batch} x seq "
        f"{args.seq}; random weights; median of {args.repeats} interleaved rounds\n"
        f"{platform.processor() or platform.machine()}, {info['physical_cores']} physical cores; "
        f"dynaq {dynaq.__version__} ({info['kernels']['gemm']}), torch {torch.__version__} "
        f"(quantized engine {torch.backends.quantized.engine}), "
        f"transformers {transformers.__version__}; dynaq threads: "
        f"{'shared with torch (OpenMP)' if dynaq._dynaq.sharing_openmp_team() else 'own pool'}"
    )
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        dynaq.set_num_threads(t)
        fns = {name: (lambda m=m: forward(m, inputs)) for name, m in variants.items()}
        ms = {name: 1e3 * s for name, s in median_seconds(fns, args.repeats).items()}
        for name in variants:
            row = {"threads": t, "omp": policy, "model": name, "ms": ms[name]}
            row["vs_float"] = ms["float32"] / ms[name]
            row["vs_torch"] = ms["torch int8"] / ms[name]
            row["error"] = errors[name]
            rows.append(row)
    return {"header": header, "rows": rows}


def run_child(policy: str, args: argparse.Namespace, threads: list[int]) -> dict[str, Any]:
    """Measures in a fresh process (OpenMP reads OMP_WAIT_POLICY only when it loads)."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--json", "--omp-wait-policy", policy,
        "--threads", ",".join(map(str, threads)), "--repeats", str(args.repeats),
        "--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq),
        "--dynaq-threads", args.dynaq_threads,
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_table(header: str, rows: list[dict[str, Any]]) -> None:
    print(header + "\n")
    head = ("threads", "OMP_WAIT_POLICY", "model", "ms / batch", "vs float32", "vs torch int8",
            "rel. error")  # fmt: skip
    cells = []
    for r in rows:
        ms = f"{r['ms']:.0f}" if r["ms"] >= 100 else f"{r['ms']:.1f}"
        err = "0" if r["model"] == "float32" else f"{r['error']:.2e}"
        vs = (f"{r['vs_float']:.2f}x", f"{r['vs_torch']:.2f}x")
        cells.append((str(r["threads"]), r["omp"], r["model"], ms, *vs, err))
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for c in cells:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per entry")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument(
        "--omp-wait-policy",
        choices=("default", "passive", "both"),
        default="both",
        help="default: the environment as it is; passive: OMP_WAIT_POLICY=PASSIVE; both "
        "(default): the first for every thread count, the second again for counts above 1",
    )
    parser.add_argument(
        "--dynaq-threads",
        choices=("shared", "own"),
        default="shared",
        help="shared (default): dynaq on torch's OpenMP threads (share_torch_threads); own: on "
        "dynaq's own pool",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    if args.omp_wait_policy != "both":
        result = measure(args, threads)
        if args.json:
            print(json.dumps(result))
        else:
            print_table(result["header"], result["rows"])
        return
    first = run_child("default", args, threads)
    rows = first["rows"]
    multi = [t for t in threads if t > 1]
    if multi and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        rows += run_child("passive", args, multi)["rows"]
    rows.sort(key=lambda r: (r["threads"], r["omp"] != "unset", r["omp"]))
    print_table(first["header"], rows)


if __name__ == "__main__":
    main()
