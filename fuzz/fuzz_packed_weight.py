"""Fuzz target: ``dynaq.PackedWeight.from_bytes`` on arbitrary bytes.

The first byte selects a mode: odd means "fix the checksum" (the last 4 bytes are replaced by
the CRC-32 of the rest, so that mutations reach the header and value checks instead of stopping
at the checksum); the rest is the serialized weight. Documented outcomes: a ``PackedWeight``, or
``ValueError`` (corrupt, truncated, unknown version, implausible shape), or ``MemoryError``.
Anything else, a crash, or a weight whose ``to_bytes()`` differs from its input, or whose
``linear`` differs between paths, is a finding.

    python fuzz/fuzz_packed_weight.py WORKDIR fuzz/corpus/packed_weight -max_total_time=60
"""

from __future__ import annotations

import struct
import sys
import zlib

from _harness import instrument, instrumented_imports, main, same_on_every_path

with instrumented_imports():
    import dynaq

import numpy as np

# Stages of from_bytes's checks, in order, by their messages: branching on them gives libFuzzer
# coverage feedback from the (uninstrumented) native parser.
_STAGES = (
    "shorter than",
    "bad magic",
    "format version",
    "unknown flags",
    "implausible",
    "impossible shape",
    "does not match the header",
    "checksum mismatch",
    "exceeds the supported maximum",
    "is -128",
    "scales must be finite",
    "cannot allocate",
)


@instrument
def classify(message: str) -> int:
    for i, stage in enumerate(_STAGES):
        if stage in message:
            return i
    raise AssertionError(f"undocumented from_bytes error: {message}")


@instrument
def shape_class(n: int, k: int, per_channel: bool) -> None:
    """Branches on the shape features the kernels care about (coverage feedback)."""
    if n == 0 or k == 0:
        return
    if per_channel:
        n = -n
    if n % 16 == 0:
        pass
    elif n % 16 < 8:
        pass
    if k % 4 == 0:
        pass
    elif k % 4 == 1:
        pass
    elif k % 4 == 2:
        pass
    if abs(n) > 64 or k > 64:
        pass


@instrument
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1 and len(body) >= 4:
        body = body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))
    try:
        w = dynaq.PackedWeight.from_bytes(body)
    except (ValueError, MemoryError) as e:
        stage = classify(str(e))
        if stage == 0 and len(body) >= 36:
            raise AssertionError(f"a {len(body)}-byte input called short: {e}") from None
        return
    shape_class(*w.shape, w.per_channel)
    # A weight that loads is canonical: it serializes back to the same bytes.
    if w.to_bytes() != body:
        raise AssertionError("PackedWeight.to_bytes() differs from the bytes it was read from")
    n, k = w.shape
    values, scales = w.unpack()
    assert values.shape == (n, k) and values.dtype == np.int8
    assert (values != -128).all() and np.isfinite(scales).all() and (scales > 0).all()
    if n * k > 1 << 16 or n > 1 << 12:
        return
    # Every path computes the same linear with it.
    x = np.linspace(-2.0, 3.0, 3 * k, dtype=np.float32).reshape(3, k)
    same_on_every_path(lambda: dynaq.linear(x, w), "linear")


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
