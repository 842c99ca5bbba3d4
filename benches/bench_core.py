"""The core claim of dynaq, in one command: ``linear`` at K = N = 3072 on one thread against
numpy float32 (M = 1 ... 512), activation quantization included.

A thin front for ``python -m dynaq bench`` (which runs numpy without OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE and names the BLAS kernel it ran); extra arguments are passed through, e.g.
``python benches/bench_core.py --libs dynaq,numpy,torch,onnxruntime --json out.json``.
"""

import os
import sys

if __name__ == "__main__":
    args = [
        sys.executable, "-m", "dynaq", "bench",
        "--shapes", "3072x3072", "--threads", "1", "--no-quant", "--no-overhead",
        "--libs", "dynaq,numpy",
    ]  # fmt: skip
    passed = sys.argv[1:]
    if "--libs" in passed:
        i = args.index("--libs")
        del args[i : i + 2]
    os.execv(sys.executable, args + passed)
