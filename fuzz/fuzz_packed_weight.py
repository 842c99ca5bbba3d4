"""Fuzz target: ``dynaq.PackedWeight.from_bytes`` on arbitrary bytes.

The first byte selects a mode: odd means "fix the checksum", so that mutations reach the
header and value checks instead of stopping at the checksum: for format versions 2 and 3 (a
sealed safetensors buffer; 3 when the weight is 4-bit) the ``dynaq.crc32`` digits are
recomputed, for version 1 (``DYNAQPW``) the last 4 bytes. The rest is the serialized weight.
Documented outcomes: a ``PackedWeight``, or ``ValueError`` (``"PackedWeight bytes: ..."``:
corrupt, truncated, unknown version, implausible shape), or ``MemoryError``. Anything else, a
crash, a weight that does not survive ``to_bytes()``/``from_bytes()`` unchanged, or whose
``linear`` differs between paths, is a finding.

    python fuzz/fuzz_packed_weight.py WORKDIR fuzz/corpus/packed_weight -max_total_time=60
"""

from __future__ import annotations

import sys

from _harness import fix_checksum, instrument, instrumented_imports, main, same_on_every_path

with instrumented_imports():
    import dynaq

import numpy as np

# Stages of from_bytes's checks by their messages: branching on them gives libFuzzer coverage
# feedback from the (uninstrumented) native parser.
_STAGES = (
    # the safetensors layout
    "not a safetensors file",
    "header length",
    "__metadata__",
    "needs exactly the keys",
    "unsupported dtype",
    "bad shape",
    "bad data_offsets",
    "whole bytes",
    "run past the end",
    "overlaps",
    "leaves a gap",
    "trailing bytes",
    "needs",
    # the seal and dynaq's metadata
    "checksum",
    "format version",
    "dynaq.format",
    "dynaq.kind",
    "holds a",
    "dynaq.quantized",
    "must hold exactly",
    # the weight's tensors
    "missing",
    "must be",
    "do not fit",
    "implausible",
    "exceeds the supported maximum",
    "is -128",
    "scales must be finite",
    # 4-bit weights (format version 3)
    "rows of level pairs",
    "has shape",
    "present without",
    "unused high nibbles",
    "no group codes",
    "NaN or infinity",
    "does not divide",
    "overflow float32",
    # version 1
    "shorter than",
    "unknown flags",
    "impossible shape",
    "does not match the header",
    "cannot allocate",
)


@instrument
def classify(message: str) -> int:
    if not message.startswith("PackedWeight bytes: ") and "cannot allocate" not in message:
        raise AssertionError(f"from_bytes error without its prefix: {message}")
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
    if mode & 1:
        body = fix_checksum(body)
    try:
        w = dynaq.PackedWeight.from_bytes(body)
    except (ValueError, MemoryError) as e:
        classify(str(e))
        return
    shape_class(*w.shape, w.per_channel)
    # A weight that loads survives a round trip through its own serialized form unchanged
    # (the input may be another valid writing of it: key order, spacing, version 1).
    again = w.to_bytes()
    if dynaq.PackedWeight.from_bytes(again) != w or again != dynaq.PackedWeight.from_bytes(
        again
    ).to_bytes():
        raise AssertionError("PackedWeight changed through to_bytes()/from_bytes()")
    n, k = w.shape
    if w.bits == 8:
        values, scales = w.unpack()
        assert values.shape == (n, k) and values.dtype == np.int8
        assert (values != -128).all() and np.isfinite(scales).all() and (scales > 0).all()
    else:
        levels, scales, minima = w.unpack()
        assert levels.shape == (n, k) and levels.dtype == np.uint8 and (levels <= 15).all()
        assert np.isfinite(scales).all() and (scales >= 0).all()
        assert np.isfinite(minima).all() and (minima <= 0).all()
    if n * k > 1 << 16 or n > 1 << 12:
        return
    # Every path computes the same linear with it.
    x = np.linspace(-2.0, 3.0, 3 * k, dtype=np.float32).reshape(3, k)
    same_on_every_path(lambda: dynaq.linear(x, w), "linear")


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
