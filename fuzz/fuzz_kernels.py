"""Fuzz target: the kernels (``linear``, ``quantize``, ``dynamic_quantize_linear``,
``matmul_integer``, ``pack_weight`` and the ``Linear`` layer) on fuzzer-chosen operations,
shapes, values, options and paths.

Each input is compared bit for bit with the scalar path, and with the numpy references of the
test suite (``tests/refimpl.py``) when its values are finite. Documented exceptions only:
``ValueError`` for NaN/infinity under ``check_finite=True`` (and always for weights); the same
exception, with the same message, on every path. Anything else, a crash, or any difference is a
finding.

    python fuzz/fuzz_kernels.py WORKDIR fuzz/corpus/kernels -max_total_time=60

Input layout (see ``Consumer``): op, path, shape and option bytes, then the values.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from _harness import Consumer, instrument, instrumented_imports, main

with instrumented_imports():
    import dynaq
    from dynaq.layers import Linear

import numpy as np
import refimpl

ISAS = dynaq.cpu_info()["isas"]
F32 = np.float32
MAX_DIM = 70


@instrument
def floats(c: Consumer, count: int, finite_only: bool) -> np.ndarray:
    """``count`` float32 values in a style the input chooses."""
    style = c.int(0, 4)
    if style == 0:  # raw bits: anything, NaN, infinities, subnormals, 1e38 included
        a = np.array(c.f32_bits(count), dtype=F32)
    elif style == 1:  # small integers times a power of two (exact ties for the quantizers)
        e = c.int(-30, 30)
        b = np.frombuffer(c.take(count), dtype=np.int8).astype(F32)
        a = (b * F32(2.0**e) / F32(2)).astype(F32)
    elif style == 2:  # one value repeated (degenerate ranges)
        a = np.full(count, c.f32_bits(1)[0], dtype=F32)
    elif style == 3:  # a scaled normal-ish ramp with a few outliers
        scale = F32(2.0 ** c.int(-20, 20))
        a = (np.sin(np.arange(count, dtype=F32) * F32(0.37)) * scale).astype(F32)
        for _ in range(c.int(0, 3)):
            if count:
                a[c.int(0, count - 1)] = c.f32_bits(1)[0]
    else:  # bytes as unit fractions
        a = (np.frombuffer(c.take(count), dtype=np.uint8).astype(F32) / F32(255)) - F32(0.5)
    if finite_only:
        a = np.where(np.isfinite(a), a, F32(1.5)).astype(F32)
    return a


def on_every_path(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on every path; results (or exceptions) must equal the scalar path's."""
    outcomes = []
    for isa in ISAS:
        with dynaq.use_isa(isa):
            try:
                outcomes.append((isa, "ok", fn()))
            except (ValueError, MemoryError) as e:
                outcomes.append((isa, "err", (type(e), str(e))))
    isa0, kind0, v0 = outcomes[0]
    for isa, kind, v in outcomes[1:]:
        if kind != kind0:
            raise AssertionError(f"{isa}: {kind} {v!r} but {isa0}: {kind0} {v0!r}")
        if kind == "err":
            if v != v0:
                raise AssertionError(f"{isa} raised {v!r}, {isa0} raised {v0!r}")
        else:
            same(v, v0, f"{isa} vs {isa0}")
    if kind0 == "err":
        raise _Refused(v0[0](v0[1]))
    return v0


class _Refused(Exception):
    def __init__(self, err: BaseException) -> None:
        self.err = err


def same(got: Any, want: Any, what: str) -> None:
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), what
        for g, w in zip(got, want):
            same(g, w, what)
        return
    if isinstance(want, dynaq.QuantizedTensor):
        same(
            (got.values, got.scale, got.zero_point),
            (want.values, want.scale, want.zero_point),
            what,
        )
        return
    g, w = np.asarray(got), np.asarray(want)
    if g.dtype != w.dtype or g.shape != w.shape or g.tobytes() != w.tobytes():
        raise AssertionError(f"{what}: results differ:\n{g!r}\n{w!r}")


@instrument
def fuzz_linear(c: Consumer) -> None:
    m, n, k = c.int(0, 9), c.int(0, MAX_DIM), c.int(0, MAX_DIM)
    per_channel, gran = c.bool(), ("row", "tensor")[c.int(0, 1)]
    check, with_bias, use_layer = c.bool(), c.bool(), c.int(0, 3) == 0
    shape_features(m, n, k)
    x = floats(c, m * k, finite_only=False).reshape(m, k)
    w = floats(c, n * k, finite_only=True).reshape(n, k)
    bias = floats(c, n, finite_only=True) if with_bias else None
    finite = bool(np.isfinite(x).all())
    try:
        pw = on_every_path(lambda: dynaq.pack_weight(w, per_channel=per_channel).to_bytes())
    except _Refused as r:
        raise AssertionError(f"pack_weight refused a finite weight: {r.err!r}") from None
    pw = dynaq.PackedWeight.from_bytes(pw)
    values, scales = pw.unpack()
    ref_v, ref_s = refimpl.pack_weight_ref(w, per_channel)
    same((values, scales.reshape(-1)), (ref_v, ref_s), "pack_weight vs reference")
    if use_layer:
        layer = Linear(pw, bias, granularity=gran)
        call = lambda: layer(x)  # noqa: E731
    else:
        call = lambda: dynaq.linear(x, pw, bias, granularity=gran, check_finite=check)  # noqa: E731
    try:
        y = on_every_path(call)
    except _Refused as r:
        if finite or not isinstance(r.err, ValueError) or not (check or use_layer):
            raise AssertionError(f"linear refused its input: {r.err!r}") from None
        return
    # An empty output (M = 0 or out_features = 0) computes nothing and does not look at x
    # (docs/CONTRACT.md); otherwise NaN/infinity must be refused under check_finite=True.
    if not finite and (check or use_layer) and m * n:
        raise AssertionError("linear accepted NaN/infinity under check_finite=True")
    if finite:
        want = refimpl.linear_ref(x, values, scales, bias, gran)
        same(y, want, "linear vs reference")


@instrument
def fuzz_quantize(c: Consumer) -> None:
    rows, cols = c.int(0, 9), c.int(0, 3 * MAX_DIM)
    shape = (rows, cols) if c.bool() else (rows * cols,)
    gran, sym, check = ("row", "tensor")[c.int(0, 1)], c.bool(), c.bool()
    shape_features(rows, cols)
    x = floats(c, rows * cols, finite_only=False).reshape(shape)
    finite = bool(np.isfinite(x).all())
    try:
        q = on_every_path(
            lambda: dynaq.quantize(x, granularity=gran, symmetric=sym, check_finite=check)
        )
    except _Refused as r:
        if finite or not check or not isinstance(r.err, ValueError):
            raise AssertionError(f"quantize refused its input: {r.err!r}") from None
        return
    if not finite and check:
        raise AssertionError("quantize accepted NaN/infinity under check_finite=True")
    if finite:
        ref = refimpl.quantize_sym if sym else refimpl.quantize_asym
        same((q.values, q.scale, q.zero_point), ref(x, gran), "quantize vs reference")


@instrument
def fuzz_dql(c: Consumer) -> None:
    count = c.int(0, 4 * MAX_DIM)
    shape_features(count)
    x = floats(c, count, finite_only=False)
    finite = bool(np.isfinite(x).all())
    try:
        r = on_every_path(lambda: dynaq.dynamic_quantize_linear(x))
    except _Refused as e:
        if finite or not isinstance(e.err, ValueError):
            raise AssertionError(f"dynamic_quantize_linear refused its input: {e.err!r}") from None
        return
    if not finite:
        raise AssertionError("dynamic_quantize_linear accepted NaN/infinity")
    v, s, z = refimpl.dql(x)
    same(r, (v, s, z), "dynamic_quantize_linear vs reference")


@instrument
def fuzz_matmul_integer(c: Consumer) -> None:
    m, k, n = c.int(1, 9), c.int(0, MAX_DIM), c.int(1, MAX_DIM)
    a_dt = (np.uint8, np.int8)[c.int(0, 1)]
    b_dt = (np.uint8, np.int8)[c.int(0, 1)]
    a_batch = (c.int(1, 3),) if c.bool() else ()
    b_batch = (1,) if a_batch and c.bool() else a_batch if c.bool() else ()
    a = np.frombuffer(c.take(int(np.prod(a_batch + (m, k)))), dtype=a_dt).reshape(a_batch + (m, k))
    b = np.frombuffer(c.take(int(np.prod(b_batch + (k, n)))), dtype=b_dt).reshape(b_batch + (k, n))
    shape_features(m, k, n)
    zmode = c.int(0, 3)
    if zmode == 0:
        za = zb = None
    elif zmode == 1:
        za = a_dt(np.frombuffer(c.take(1), dtype=a_dt)[0])
        zb = b_dt(np.frombuffer(c.take(1), dtype=b_dt)[0])
    elif not a_batch and not b_batch:
        za = np.frombuffer(c.take(m), dtype=a_dt).copy()
        zb = np.frombuffer(c.take(n), dtype=b_dt).copy()
    else:
        za = np.frombuffer(c.take(m), dtype=a_dt).reshape(m, 1).copy()
        zb = np.frombuffer(c.take(n), dtype=b_dt).reshape(1, n).copy()
    try:
        y = on_every_path(lambda: dynaq.matmul_integer(a, b, za, zb))
    except _Refused as r:
        raise AssertionError(f"matmul_integer refused its input: {r.err!r}") from None
    want = refimpl.matmul_integer_ref(a, b, za, zb)
    same(y.astype(np.int64), want, "matmul_integer vs reference")


@instrument
def shape_features(*dims: int) -> None:
    """Branches on the tails the kernels treat specially (8/16/64 lanes, 4-deep K groups, row
    tiles), so that libFuzzer keeps inputs that reach new ones: coverage feedback from the
    uninstrumented native code."""
    for d in dims:
        if d == 0:
            continue
        if d % 64 == 0:
            pass
        elif d % 16 == 0:
            pass
        elif d % 16 > 8:
            pass
        elif d % 8 == 0:
            pass
        elif d % 4 == 0:
            pass
        elif d % 4 == 1:
            pass
        elif d % 4 == 2:
            pass
        else:
            pass
        if d > 48:
            pass
        elif d > 16:
            pass


OPS = (fuzz_linear, fuzz_quantize, fuzz_dql, fuzz_matmul_integer)


@instrument
def test_one_input(data: bytes) -> None:
    c = Consumer(data)
    op = OPS[c.int(0, len(OPS) - 1)]
    with np.errstate(all="ignore"):
        op(c)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
