"""Fuzz target: the safetensors reader and the quantized-model loader on arbitrary file bytes.

The input is written to a file and read with ``dynaq.safetensors.read_metadata``, ``read``,
``read_raw`` and ``load_quantized``. The first byte selects a mode: odd means "fix the header
length" (the 8-byte prefix is set to end the header at the first ``}}``, so that mutations of
the JSON are not all stopped by a wrong length). Documented outcome for a bad file: ``ValueError``
naming the file. Anything else, a crash, or ``read`` disagreeing with ``read_raw``, is a finding.
Loaded weights must compute the same ``linear`` on every path.

    python fuzz/fuzz_safetensors.py WORKDIR fuzz/corpus/safetensors -max_total_time=60
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from typing import Callable

from _harness import instrumented_imports, main, same_on_every_path

with instrumented_imports():
    import dynaq
    from dynaq import safetensors as st

import numpy as np

_DIR = tempfile.mkdtemp(prefix="dynaq-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
PATH = os.path.join(_DIR, "input.safetensors")


def _check_linear(w: dynaq.PackedWeight) -> None:
    n, k = w.shape
    if n * k > 1 << 16:
        return
    x = np.linspace(-1.0, 1.0, 2 * k, dtype=np.float32).reshape(2, k)
    same_on_every_path(lambda: dynaq.linear(x, w), "linear")


def _accepts(fn: Callable[[str], object]) -> bool:
    try:
        fn(PATH)
    except ValueError:
        return False
    return True


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1 and len(body) > 8:
        end = body.find(b"}}", 8)
        if end >= 0:
            body = struct.pack("<Q", end + 2 - 8) + body[8:]
    with open(PATH, "wb") as f:
        f.write(body)
    try:
        meta = st.read_metadata(PATH)
    except ValueError:
        meta = None
    if meta is None:
        # Every reader must refuse the file then.
        for fn in (st.read, st.read_raw, st.load_quantized):
            if _accepts(fn):
                raise AssertionError(f"read_metadata refused the file but {fn.__name__} read it")
        return
    assert isinstance(meta, dict)
    raw = st.read_raw(PATH)
    try:
        arrays = st.read(PATH)
    except ValueError as e:
        # Only dtypes numpy cannot represent are refused by read() once the header is valid.
        assert "numpy cannot represent" in str(e), e
        arrays = None
    if arrays is not None:
        assert list(arrays) == list(raw)
        for name, a in arrays.items():
            r = raw[name]
            assert a.shape == r.shape, name
            b = r.numpy()
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    try:
        loaded = st.load_quantized(PATH)
    except ValueError:
        return
    for v in loaded.values():
        if isinstance(v, dynaq.PackedWeight):
            _check_linear(v)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
