"""Independent numpy references for dynaq's operations (used by the tests only).

Everything here is written from the specification, not from the package: float32 arithmetic is
done with numpy float32 scalars/arrays (one rounding per operation, like the Rust code), integer
arithmetic in int64 (or float64 where every intermediate is an integer below 2**53, which is
exact).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _cpp_min(a, b):
    """C++ ``std::min(a, b)``: ``b < a ? b : a`` (NaN-propagation rules included)."""
    return b if b < a else a


def _cpp_max(a, b):
    """C++ ``std::max(a, b)``: ``a < b ? b : a``."""
    return b if a < b else a


def _round_half_even_scalar(v) -> float:
    return float(np.rint(F32(v)))


def dql_params(data_min, data_max) -> tuple[np.float32, np.uint8]:
    """ONNX DynamicQuantizeLinear scale and zero point for a data range (float32 arithmetic)."""
    with np.errstate(all="ignore"):
        lo = _cpp_min(F32(data_min), F32(0.0))
        hi = _cpp_max(F32(data_max), F32(0.0))
        scale = F32(1.0) if hi == lo else F32(hi - lo) / F32(255.0)
        izp = F32(0.0) - F32(lo / scale)
        zp = _round_half_even_scalar(_cpp_max(F32(0.0), _cpp_min(F32(255.0), izp)))
    return F32(scale), np.uint8(zp)


def asym_params(data_min, data_max) -> tuple[np.float32, np.uint8]:
    """dynaq's asymmetric uint8 parameters: DQL's, repaired at float32 overflow / underflow.

    * the range widened to include 0 is empty -> scale 1, zero point 0
    * ``(max - min) / 255`` overflows -> ``max / 255 - min / 255``
    * the scale underflows to 0 -> scale 1, zero point 0
    * a subnormal scale is rounded up so that the range still fits
    """
    with np.errstate(all="ignore"):
        lo = _cpp_min(F32(data_min), F32(0.0))
        hi = _cpp_max(F32(data_max), F32(0.0))
        if hi == lo:
            return F32(1.0), np.uint8(0)
        scale = F32(F32(hi - lo) / F32(255.0))
        if np.isinf(scale):
            scale = F32(F32(hi / F32(255.0)) - F32(lo / F32(255.0)))
        if scale == 0:
            return F32(1.0), np.uint8(0)
        scale = _cover(scale, F32(hi - lo), 255.0)
        izp = F32(0.0) - F32(lo / scale)
        zp = _round_half_even_scalar(_cpp_max(F32(0.0), _cpp_min(F32(255.0), izp)))
    return F32(scale), np.uint8(zp)


def _cover(scale, width, levels) -> np.float32:
    """A subnormal scale too small to cover ``width`` in ``levels`` steps is rounded up."""
    if 0 < scale < np.finfo(F32).tiny and float(scale) * levels < float(width):
        return F32(np.nextafter(scale, F32(np.inf), dtype=F32))
    return F32(scale)


def quantize_u8_values(x: np.ndarray, scale, zp) -> np.ndarray:
    """``clamp(round_half_even(x / scale) + zp, 0, 255)``: divide, clamp to
    ``[-zp, 255 - zp]`` (x86 maxps/minps semantics), round half to even, add zp."""
    x = np.asarray(x, dtype=F32)
    scale = np.asarray(scale, dtype=F32)
    zpf = np.asarray(zp).astype(F32)
    with np.errstate(all="ignore"):
        q = x / scale
        lo = F32(0.0) - zpf
        hi = F32(255.0) - zpf
        q = np.where(q > lo, q, lo)  # maxps(q, lo): NaN -> lo
        q = np.where(q < hi, q, hi)  # minps(q, hi)
        q = np.rint(q).astype(F32)
    return (q.astype(np.int32) + np.asarray(zp).astype(np.int32)).astype(np.uint8)


def _minmax(x: np.ndarray, axis=None):
    if x.size == 0:
        return F32(np.inf), F32(-np.inf)
    return x.min(axis=axis), x.max(axis=axis)


def dql(x) -> tuple[np.ndarray, np.float32, np.uint8]:
    """A numpy model of ONNX DynamicQuantizeLinear (used only as a cross-check)."""
    x = np.asarray(x, dtype=F32)
    if x.size == 0:
        return np.zeros(x.shape, np.uint8), F32(1.0), np.uint8(0)
    s, z = dql_params(*_minmax(x))
    return quantize_u8_values(x, s, z), s, z


def quantize_asym(x, granularity: str = "tensor"):
    """Reference of ``dynaq.quantize(x, granularity=..., symmetric=False)``:
    returns ``(values uint8, scale float32, zero_point uint8)``."""
    x = np.asarray(x, dtype=F32)
    if granularity == "tensor":
        if x.size == 0:
            s, z = F32(1.0), np.uint8(0)
        else:
            s, z = asym_params(*_minmax(x))
        return (
            quantize_u8_values(x, s, z),
            np.asarray(s, F32).reshape(()),
            np.asarray(z, np.uint8).reshape(()),
        )
    assert granularity == "row"
    lead = x.shape[:-1]
    rows = x.reshape(int(np.prod(lead)), x.shape[-1])
    values = np.zeros(rows.shape, np.uint8)
    scales = np.ones(rows.shape[0], F32)
    zps = np.zeros(rows.shape[0], np.uint8)
    for i, row in enumerate(rows):
        if row.size == 0:
            continue
        s, z = asym_params(*_minmax(row))
        scales[i], zps[i] = s, z
        values[i] = quantize_u8_values(row, s, z)
    return values.reshape(x.shape), scales.reshape(lead), zps.reshape(lead)


def sym_scale(absmax) -> np.float32:
    with np.errstate(all="ignore"):
        s = F32(F32(absmax) / F32(127.0))
    return F32(1.0) if s == 0 else _cover(s, F32(absmax), 127.0)


def quantize_i8_values(x, scale) -> np.ndarray:
    x = np.asarray(x, dtype=F32)
    scale = np.asarray(scale, dtype=F32)
    with np.errstate(all="ignore"):
        q = x / scale
        q = np.where(q > F32(-127.0), q, F32(-127.0))
        q = np.where(q < F32(127.0), q, F32(127.0))
        q = np.rint(q)
    return q.astype(np.int8)


def quantize_sym(x, granularity: str = "tensor"):
    """Reference of ``dynaq.quantize(x, granularity=..., symmetric=True)``."""
    x = np.asarray(x, dtype=F32)
    if granularity == "tensor":
        s = sym_scale(np.abs(x).max()) if x.size else F32(1.0)
        return (
            quantize_i8_values(x, s),
            np.asarray(s, F32).reshape(()),
            np.zeros((), np.int8),
        )
    lead = x.shape[:-1]
    rows = x.reshape(int(np.prod(lead)), x.shape[-1])
    values = np.zeros(rows.shape, np.int8)
    scales = np.ones(rows.shape[0], F32)
    for i, row in enumerate(rows):
        if row.size == 0:
            continue
        scales[i] = sym_scale(np.abs(row).max())
        values[i] = quantize_i8_values(row, scales[i])
    return values.reshape(x.shape), scales.reshape(lead), np.zeros(lead, np.int8)


def dequantize(values, scale, zero_point) -> np.ndarray:
    """``(values - zero_point) * scale`` in float32, scale / zero point broadcast per row."""
    values = np.asarray(values)
    scale = np.asarray(scale, F32)
    zero_point = np.asarray(zero_point)
    if scale.ndim:
        scale = scale[..., None]
        zero_point = zero_point[..., None]
    d = (values.astype(np.int32) - zero_point.astype(np.int32)).astype(F32)
    with np.errstate(over="ignore"):
        return (d * scale).astype(F32)


def pack_weight_ref(w, per_channel: bool = True):
    """``(values int8 (N, K), scales float32 (N,) or (1,))`` of symmetric weight quantization."""
    w = np.asarray(w, dtype=F32)
    if per_channel:
        v, s, _ = quantize_sym(w, "row")
        return v, s.reshape(-1)
    v, s, _ = quantize_sym(w, "tensor")
    return v, s.reshape(1)


def exact_int_matmul(a, b_t) -> np.ndarray:
    """``a @ b_t.T`` exactly in int64 (a: (M, K), b_t: (N, K), values of 8-bit magnitude).

    float64 is exact here: every partial sum is an integer below 255 * 255 * K << 2**53.
    """
    a = np.asarray(a)
    b_t = np.asarray(b_t)
    k = a.shape[-1]
    assert 65025 * k < 2**53
    r = a.astype(np.float64) @ b_t.astype(np.float64).T
    return np.rint(r).astype(np.int64)


def linear_ref(x, values_w, scales_w, bias=None, granularity: str = "row") -> np.ndarray:
    """Bit-exact expectation of ``dynaq.linear`` from the specification.

    ``y = f32(acc - zx * colsum) * f32(sx * sw) + bias`` with ``acc`` exact.
    """
    x = np.asarray(x, dtype=F32)
    lead = x.shape[:-1]
    k = x.shape[-1]
    x2 = x.reshape(int(np.prod(lead)), k)
    n = values_w.shape[0]
    sw = np.broadcast_to(np.asarray(scales_w, F32).reshape(-1), (n,))
    xq, sx, zx = quantize_asym(x2, granularity)
    m = x2.shape[0]
    sx = np.broadcast_to(np.asarray(sx, F32).reshape(-1), (m,))
    zx = np.broadcast_to(np.asarray(zx).astype(np.int64).reshape(-1), (m,))
    acc = exact_int_matmul(xq, values_w)
    colsum = values_w.astype(np.int64).sum(axis=1)
    corrected = acc - zx[:, None] * colsum[None, :]
    scale = (sx[:, None] * sw[None, :]).astype(F32)
    y = corrected.astype(F32) * scale
    b = np.zeros(n, F32) if bias is None else np.asarray(bias, F32)
    y = (y + b[None, :]).astype(F32)
    return y.reshape(*lead, n)


def matmul_integer_ref(a, b, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """ONNX MatMulInteger in int64 (numpy matmul broadcasting), zero points broadcast as given
    (scalar, per row of a as (..., M, 1) / (M,), per column of b as (..., 1, N) / (N,))."""
    a64 = np.asarray(a).astype(np.int64)
    b64 = np.asarray(b).astype(np.int64)
    if a_zero_point is not None:
        za = np.asarray(a_zero_point).astype(np.int64)
        if za.ndim == 1 and a64.ndim == 2:
            za = za[:, None]
        a64 = a64 - za
    if b_zero_point is not None:
        zb = np.asarray(b_zero_point).astype(np.int64)
        b64 = b64 - zb
    return np.matmul(a64, b64)
