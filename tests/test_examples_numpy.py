"""The numpy example runs as a user would run it, and says what it checked."""

from __future__ import annotations

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_numpy_inference_example_runs():
    script = os.path.join(EXAMPLES, "numpy_inference.py")
    # One BLAS thread: the float reference's many small matmuls make OpenBLAS's spinning threads
    # crawl when the machine's other cores are busy (seconds instead of well under one).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    out = r.stdout
    assert "int8 vs float32 logits: relative error" in out
    assert "outputs bit-identical" in out
    assert "quantized" in out and "forward of 16 x 32 tokens" in out
