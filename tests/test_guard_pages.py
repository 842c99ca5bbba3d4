"""Arrays flush against an inaccessible guard page, through the Python API, on every path.

Each array lives in its own anonymous mapping between two ``PROT_NONE`` pages (``mprotect``
through ctypes), either ending exactly at the trailing guard page (any over-read or over-write in
a SIMD tail faults) or starting exactly after the leading one (any under-read faults). The
native module reads C-contiguous inputs and writes ``out=`` in place, without copies, so the
kernels touch this memory directly. Every path of this CPU must give exactly what the scalar
path gives on ordinary arrays.

A fault kills the test process (pytest's faulthandler prints the test that faulted);
``test_guard_harness_faults`` checks in a child process that the guard really faults.

``PackedWeight.from_bytes`` takes ``bytes`` only (Python copies them), so guard pages cannot
reach it from here; ``rust/dynaq-core/tests/guard_pages.rs`` covers it on guarded memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import dynaq
import numpy as np
import pytest
from dynaq.layers import GRUCell, Linear, LSTMCell

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="guard pages use Linux mmap/mprotect"
)

PAGE = mmap.PAGESIZE
_PROT_NONE = 0  # <sys/mman.h>; the mmap module does not export it
PLACES = ("head", "tail")
ISAS = dynaq.cpu_info()["isas"]
# Every length up to 67 (every tail of 8-, 16- and 64-lane loops), then a few longer ones.
LENGTHS = list(range(1, 68)) + [127, 128, 129, 255, 256, 257, 1000]


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.restype = ctypes.c_int
    return libc


_LIBC = _libc() if sys.platform.startswith("linux") else None


def guarded(values: Any, place: str, dtype: Any = None) -> np.ndarray:
    """A C-contiguous copy of ``values`` in its own mapping, touching the guard page at its
    ``place`` ("head": first byte after the leading guard; "tail": last byte before the trailing
    one). The array keeps the mapping alive."""
    src = np.ascontiguousarray(values, dtype=dtype)
    nbytes = src.nbytes
    data_pages = max(1, math.ceil(nbytes / PAGE))
    mm = mmap.mmap(-1, (data_pages + 2) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(mm)
    base = ctypes.addressof(anchor)
    del anchor  # release the export; the address stays valid while `mm` lives
    for page_addr in (base, base + (data_pages + 1) * PAGE):
        if _LIBC.mprotect(page_addr, PAGE, _PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = PAGE if place == "head" else (data_pages + 1) * PAGE - nbytes
    assert offset % src.dtype.itemsize == 0
    a = np.frombuffer(mm, dtype=src.dtype, count=src.size, offset=offset).reshape(src.shape)
    a[...] = src
    assert a.flags.c_contiguous and a.flags.writeable
    return a


def same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), what


@contextlib.contextmanager
def on(isa: str) -> Iterator[None]:
    """Runs the block on path ``isa`` (checked: it is one this CPU has)."""
    with dynaq.use_isa(isa) as active:
        assert active == isa
        yield


def scalar(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with on("scalar"):
        return fn(*args, **kwargs)


@pytest.mark.parametrize("place", PLACES)
def test_guard_harness_faults(place: str) -> None:
    """Reading one byte past (before) a tail- (head-) placed array kills the process."""
    step = "a.nbytes" if place == "tail" else "-1"
    code = textwrap.dedent(
        f"""
        import ctypes, sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np
        from test_guard_pages import guarded
        a = guarded(np.arange(5, dtype=np.uint8), {place!r})
        print(ctypes.c_uint8.from_address(a.ctypes.data + {step}).value)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode in (-signal.SIGSEGV, -signal.SIGBUS), (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("isa", ISAS)
def test_quantize(isa: str) -> None:
    rng = np.random.default_rng(1)
    for n in LENGTHS:
        for shape in [(n,), (3, n)] if n < 200 else [(n,)]:
            x = (rng.standard_normal(shape) * 3).astype(np.float32)
            for gran in ("tensor", "row"):
                for sym in (False, True):
                    want = scalar(dynaq.quantize, x, granularity=gran, symmetric=sym)
                    for place in PLACES:
                        gx = guarded(x, place)
                        with on(isa):
                            got = dynaq.quantize(gx, granularity=gran, symmetric=sym)
                        what = f"{isa} quantize {shape} {gran} sym={sym} {place}"
                        same_bits(got.values, want.values, what)
                        same_bits(np.asarray(got.scale), np.asarray(want.scale), what)
                        same_bits(np.asarray(got.zero_point), np.asarray(want.zero_point), what)


@pytest.mark.parametrize("isa", ISAS)
def test_dynamic_quantize_linear(isa: str) -> None:
    rng = np.random.default_rng(2)
    for n in LENGTHS:
        x = (rng.standard_normal(n) * 2 + (n % 3)).astype(np.float32)
        want = scalar(dynaq.dynamic_quantize_linear, x)
        for place in PLACES:
            gx = guarded(x, place)
            with on(isa):
                got = dynaq.dynamic_quantize_linear(gx)
            for g, w in zip(got, want):
                same_bits(np.asarray(g), np.asarray(w), f"{isa} DQL len {n} {place}")


def _gemm_shapes() -> list[tuple[int, int, int]]:
    shapes = []
    for n in range(1, 68):
        shapes.append((1, n, 68 - n))
        shapes.append((n % 9 + 1, 3 + n % 5, n))
        if n % 2:
            shapes.append((3, n, n))
    return shapes + [(8, 64, 64), (17, 33, 31), (2, 65, 129)]


@pytest.mark.parametrize("isa", ISAS)
def test_linear_and_weights(isa: str) -> None:
    rng = np.random.default_rng(3)
    for m, n, k in _gemm_shapes():
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        gran = "row" if (m + k) % 2 else "tensor"
        pw = scalar(dynaq.pack_weight, w)
        want = scalar(dynaq.linear, x, pw, b, granularity=gran)
        want_nb = scalar(dynaq.linear, x, pw, granularity=gran)
        for place in PLACES:
            what = f"{isa} linear {m}x{n}x{k} {gran} {place}"
            gx, gw, gb = guarded(x, place), guarded(w, place), guarded(b, place)
            out = guarded(np.full((m, n), np.nan, np.float32), place)
            with on(isa):
                gpw = dynaq.pack_weight(gw)
                assert gpw.to_bytes() == pw.to_bytes(), what
                r = dynaq.linear(gx, gpw, gb, granularity=gran, out=out)
                assert r is out or np.shares_memory(r, out), what
                same_bits(out, want, what)
                same_bits(dynaq.linear(gx, gpw, granularity=gran), want_nb, what + " no bias")
                # A float weight is packed on the fly, from guarded memory too.
                same_bits(dynaq.linear(gx, gw, gb, granularity=gran), want, what + " float w")
                values, scales = pw.unpack()
                gv, gs = guarded(values, place), guarded(scales, place)
                pq = dynaq.PackedWeight.from_quantized(gv, gs)
                assert pq.to_bytes() == pw.to_bytes(), what
                assert dynaq.PackedWeight.from_bytes(pq.to_bytes()).to_bytes() == pw.to_bytes()


@pytest.mark.parametrize("isa", ISAS)
def test_matmul_integer(isa: str) -> None:
    rng = np.random.default_rng(4)
    for i, (m, n, k) in enumerate(_gemm_shapes()):
        adt = np.int8 if i % 3 == 0 else np.uint8
        bdt = np.uint8 if i % 5 < 2 else np.int8
        a = rng.integers(np.iinfo(adt).min, np.iinfo(adt).max + 1, (m, k)).astype(adt)
        b = rng.integers(np.iinfo(bdt).min, np.iinfo(bdt).max + 1, (k, n)).astype(bdt)
        za = rng.integers(0, 100, m).astype(adt)
        zb = rng.integers(0, 100, n).astype(bdt)
        want = scalar(dynaq.matmul_integer, a, b, za, zb)
        ref = (a.astype(np.int64) - za.astype(np.int64)[:, None]) @ (
            b.astype(np.int64) - zb.astype(np.int64)[None, :]
        )
        np.testing.assert_array_equal(want, ref)
        for place in PLACES:
            ga, gb = guarded(a, place), guarded(b, place)
            gza, gzb = guarded(za, place), guarded(zb, place)
            with on(isa):
                got = dynaq.matmul_integer(ga, gb, gza, gzb)
                got1 = dynaq.matmul_integer(ga, gb)
            what = f"{isa} matmul_integer {m}x{k}x{n} {place}"
            same_bits(got, want, what)
            same_bits(got1, scalar(dynaq.matmul_integer, a, b), what + " no zero points")


@pytest.mark.parametrize("isa", ISAS)
def test_layers(isa: str) -> None:
    rng = np.random.default_rng(5)
    for batch, inp, hid in [(1, 1, 1), (3, 5, 7), (2, 17, 9), (4, 33, 16), (1, 67, 3)]:
        w = rng.standard_normal((hid, inp)).astype(np.float32)
        b = rng.standard_normal(hid).astype(np.float32)
        x = rng.standard_normal((batch, inp)).astype(np.float32)
        want = scalar(Linear.from_float(w, b), x)
        params = {
            name: rng.standard_normal(shape).astype(np.float32) * 0.3
            for name, shape in [
                ("w_ih4", (4 * hid, inp)),
                ("w_hh4", (4 * hid, hid)),
                ("b4", (4 * hid,)),
                ("w_ih3", (3 * hid, inp)),
                ("w_hh3", (3 * hid, hid)),
                ("b3", (3 * hid,)),
            ]
        }
        h = rng.standard_normal((batch, hid)).astype(np.float32)
        c = rng.standard_normal((batch, hid)).astype(np.float32)
        p = params
        want_lstm = scalar(LSTMCell(p["w_ih4"], p["w_hh4"], p["b4"], p["b4"]), x, (h, c))
        want_gru = scalar(GRUCell(p["w_ih3"], p["w_hh3"], p["b3"], p["b3"]), x, h)
        for place in PLACES:
            what = f"{isa} layers batch {batch} in {inp} hidden {hid} {place}"
            g = {name: guarded(v, place) for name, v in params.items()}
            gx, gh, gc = guarded(x, place), guarded(h, place), guarded(c, place)
            out = guarded(np.zeros((batch, hid), np.float32), place)
            with on(isa):
                layer = Linear.from_float(guarded(w, place), guarded(b, place))
                same_bits(layer(gx), want, what)
                layer(gx, out=out)
                same_bits(out, want, what + " out=")
                lstm = LSTMCell(g["w_ih4"], g["w_hh4"], g["b4"], g["b4"])
                h2, c2 = lstm(gx, (gh, gc))
                gru = GRUCell(g["w_ih3"], g["w_hh3"], g["b3"], g["b3"])
                h3 = gru(gx, gh)
            same_bits(h2, want_lstm[0], what + " LSTMCell h")
            same_bits(c2, want_lstm[1], what + " LSTMCell c")
            same_bits(h3, want_gru, what + " GRUCell")
