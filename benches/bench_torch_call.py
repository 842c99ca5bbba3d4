"""The cost of one small call through dynaq.torch: a ``Linear`` module at M x K x N (default
1 x 64 x 64, where the call overhead is everything), eager (the module's direct path), through
the registered operator ``torch.ops.dynaq.linear`` (what ``torch.compile``/``torch.export``
record), against ``nn.Linear`` float32 and PyTorch's dynamic int8 ``Linear``, interleaved in one
process, one thread. Prints the median microseconds per call of each.

This is a benchmark, not a test::

    python benches/bench_torch_call.py
    python benches/bench_torch_call.py --shape 1 768 768 --json out.json

Run it with ``PYTHONPATH`` pointing at another dynaq to compare versions (only the eager module
is measured when that dynaq has no registered operators).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Callable

import dynaq
import dynaq.torch as dt
import torch


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", nargs=3, type=int, default=[1, 64, 64], metavar=("M", "K", "N"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    m, k, n = args.shape
    torch.set_num_threads(1)
    dynaq.set_num_threads(1)
    torch.manual_seed(0)
    fp = torch.nn.Linear(k, n).eval()
    q = dt.quantize_dynamic(fp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # (torch swaps children only: a root nn.Linear would come back unquantized)
        tq = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(fp), dtype=torch.qint8)[0]
    x = torch.randn(m, k)
    cases: dict[str, Callable[[], object]] = {
        "nn.Linear float32": lambda: fp(x),
        "torch.ao dynamic int8": lambda: tq(x),
        "dynaq eager module": lambda: q(x),
    }
    op = getattr(getattr(torch.ops, "dynaq", None), "linear", None)
    if op is not None and hasattr(q, "_op_tensors"):
        tensors = q._op_tensors()
        cases["dynaq operator (torch.ops.dynaq.linear)"] = lambda: op(x, *tensors)
    with torch.inference_mode():
        for fn in cases.values():
            per_call_us(fn, args.calls // 4)  # warm up
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():  # interleaved: the machine's noise hits all alike
                samples[name].append(per_call_us(fn, args.calls))
    medians = {name: statistics.median(s) for name, s in samples.items()}
    print(
        f"dynaq {dynaq.__version__} ({dynaq.__file__}), torch {torch.__version__}, "
        f"{m}x{k}x{n}, 1 thread, median of {args.rounds} rounds of {args.calls} calls"
    )
    for name, us in medians.items():
        print(f"  {name:40s} {us:8.2f} us/call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(medians, f, indent=1)


if __name__ == "__main__":
    main()
