"""Helpers shared by the tests that need the package (ISA lists, bitwise comparisons)."""

from __future__ import annotations

import dynaq
import numpy as np

# Every path dynaq knows per architecture, in cap order. Each is listed as a test case so that a
# machine lacking one shows it as skipped, with the reason, rather than silently dropping it.
KNOWN_ISAS = {
    "x86_64": ["scalar", "avx2", "avx512vnni"],
    "aarch64": ["scalar", "neon", "dotprod", "i8mm"],
}


CPU_INFO = dynaq.cpu_info()
AVAILABLE_ISAS: list[str] = list(CPU_INFO["isas"])
ARCH: str = str(CPU_INFO["arch"])
ALL_ISAS: list[str] = list(dict.fromkeys(KNOWN_ISAS.get(ARCH, ["scalar"]) + AVAILABLE_ISAS))


def skip_reason(isa: str) -> str:
    return (
        f"this CPU ({ARCH}, features {CPU_INFO.get('features')}) lacks the {isa} path; "
        f"available paths: {AVAILABLE_ISAS}"
    )


def run_on_each_isa(fn):
    """``{isa: fn()}`` for every available path (each run under ``dynaq.use_isa``)."""
    out = {}
    for name in AVAILABLE_ISAS:
        with dynaq.use_isa(name):
            out[name] = fn()
    return out


def bits(a) -> np.ndarray:
    """float32 data as uint32 bit patterns, for bitwise comparisons."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).view(np.uint32)


def assert_bitwise_equal(actual, expected, err_msg: str = "") -> None:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.float32, actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(bits(actual), bits(expected), err_msg=err_msg)


# --- dynaq blobs (serialized weights and layers: sealed safetensors buffers) -------------------

_SEAL = b'"dynaq.crc32":"'


def reseal(blob: bytes) -> bytes:
    """``blob`` with its checksum recomputed, after a test edited it (keeping its length): the
    CRC-32 of the whole buffer with the 8 checksum digits read as ``00000000``."""
    import zlib

    at = blob.index(_SEAL) + len(_SEAL)
    zeroed = blob[:at] + b"00000000" + blob[at + 8 :]
    return zeroed[:at] + b"%08x" % zlib.crc32(zeroed) + zeroed[at + 8 :]


def with_metadata(blob: bytes, key: str, value: str) -> bytes:
    """``blob`` with the metadata entry ``key`` set to ``value`` (of the same length as the one
    it replaces), resealed: bytes that only the field checks can refuse."""
    import json
    import struct

    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    old = json.dumps({key: meta[key]}, separators=(",", ":"))[1:-1].encode()
    new = json.dumps({key: value}, separators=(",", ":"))[1:-1].encode()
    assert len(old) == len(new) and blob.count(old) == 1, (old, new)
    return reseal(blob.replace(old, new))


def blob_header(blob: bytes) -> dict:
    """The JSON header of a dynaq blob (its ``__metadata__`` included)."""
    import json
    import struct

    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])
