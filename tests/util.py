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
