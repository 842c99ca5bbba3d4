"""Accuracy of 4-bit weights: relative error of ``linear``'s output against float64, for int8,
int4 round-to-nearest (min-max) and int4 searched, per group size and per channel.

    python benches/accuracy_int4.py [--n 256] [--k 4096] [--rows 256]

Weights are Gaussian and heavy-tailed (Student-t, 4 dof), activations Gaussian; the error is
``||y - x w^T|| / ||x w^T||`` over all outputs. Deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse

import dynaq
import numpy as np

F32 = np.float32


def rel_error(x: np.ndarray, w: np.ndarray, pw: dynaq.PackedWeight) -> float:
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    y = dynaq.linear(x, pw)
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="output features")
    ap.add_argument("--k", type=int, default=4096, help="input features")
    ap.add_argument("--rows", type=int, default=256, help="activation rows")
    args = ap.parse_args()
    n, k = args.n, args.k
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, k)).astype(F32)
    weights = {
        "Gaussian": rng.standard_normal((n, k)).astype(F32) * F32(0.02),
        "Student-t (4 dof)": rng.standard_t(4, (n, k)).astype(F32) * F32(0.02),
    }
    cells = [("int8, per channel", dict())]
    for g in [32, 64, 128, None]:
        label = f"group {g}" if g else "per channel"
        cells.append((f"int4 RTN, {label}", dict(bits=4, group_size=g, method="rtn")))
        cells.append((f"int4 searched, {label}", dict(bits=4, group_size=g)))
    names = list(weights)
    print(f"relative output error of linear, ({args.rows} x {k}) @ ({k} x {n})^T")
    print()
    print("| weight | bits per weight (stored) | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    for label, kw in cells:
        errs, bpw = [], 0.0
        for w in weights.values():
            pw = dynaq.pack_weight(w, **kw)
            errs.append(rel_error(x, w, pw))
            stored = sum(a.nbytes for a in dynaq._dynaq.weight_tensors(pw).values())
            bpw = stored * 8 / (n * k)
        print(f"| {label} | {bpw:.3f} | " + " | ".join(f"{e:.4f}" for e in errs) + " |")


if __name__ == "__main__":
    main()
