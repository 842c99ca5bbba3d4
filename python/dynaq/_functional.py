"""The numpy-facing operations: argument checking and conversion around the native kernels.

Every public function validates its arguments here, names the offending argument in its error,
converts float64/float16 to float32 and non-contiguous views to contiguous copies (free when the
input is already fine), then calls the native module, which releases the GIL while it computes.

Errors: ``TypeError`` for a wrong dtype or type, ``ValueError`` for shapes, NaN/infinity and
corrupt bytes, ``OverflowError`` when an exact int32 result does not fit, ``MemoryError`` when
an allocation is impossible.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np

from . import _dynaq
from ._dynaq import PackedWeight

__all__ = [
    "PackedWeight",
    "QuantizedTensor",
    "dynamic_quantize_linear",
    "linear",
    "matmul_integer",
    "pack_weight",
    "quantize",
]

_GRANULARITIES = ("tensor", "row")


def _as_float32(x: Any, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array; float64/float16 are converted, others refused."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} must be a float array: {e}") from e
    if a.dtype != np.float32:
        if a.dtype.kind != "f":
            raise TypeError(
                f"{name} must be a floating-point array (float32; float64 and float16 are "
                f"converted), got dtype {a.dtype}"
            )
        # Values beyond float32's range become infinities, refused later by the finiteness check.
        with np.errstate(over="ignore"):
            a = a.astype(np.float32)
    # np.ascontiguousarray would turn a 0-d array into a 1-d one.
    return a if a.flags.c_contiguous else a.copy(order="C")


def _check_granularity(granularity: str) -> bool:
    """True for per-row quantization."""
    if granularity not in _GRANULARITIES:
        raise ValueError(f"granularity must be 'tensor' or 'row', got {granularity!r}")
    return granularity == "row"


def dynamic_quantize_linear(
    x: Any, *, check_finite: bool = True
) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX ``DynamicQuantizeLinear``: asymmetric uint8 quantization of a whole tensor.

    The range ``[min(x), max(x)]`` is widened to include 0; ``scale = (max - min) / 255`` in
    float32 (1 when the range is empty); ``zero_point = round(clamp(-min / scale, 0, 255))``;
    ``y = clamp(round(x / scale) + zero_point, 0, 255)``, rounding half to even. Bit-identical to
    ONNX Runtime for every finite float32 input.

    Parameters
    ----------
    x : array_like of float, any shape
        float64 and float16 are converted to float32.
    check_finite : bool
        Raise ``ValueError`` when ``x`` holds NaN or infinity (default). When False the check is
        skipped and such values give unspecified (but memory-safe) results.

    Returns
    -------
    y : ndarray of uint8, shape of ``x``
    y_scale : numpy.float32
    y_zero_point : numpy.uint8
    """
    fast = _dynaq.dql_fast(x, bool(check_finite))
    if fast is not None:
        return fast[0], np.float32(fast[1]), np.uint8(fast[2])
    a = _as_float32(x, "x")
    y = np.empty(a.shape, dtype=np.uint8)
    scale, zp = _dynaq.dynamic_quantize_linear(a, y, bool(check_finite))
    return y, np.float32(scale), np.uint8(zp)


class QuantizedTensor:
    """Quantized values with their scale(s) and zero point(s).

    Attributes
    ----------
    values : ndarray
        uint8 (asymmetric) or int8 in [-127, 127] (symmetric), the shape of the input.
    scale : ndarray of float32
        Shape ``()`` per tensor, or the input's shape without its last axis per row.
    zero_point : ndarray
        Same shape as ``scale``; uint8 (asymmetric) or int8 zeros (symmetric).
    granularity : str
        ``"tensor"`` or ``"row"``.
    symmetric : bool
    """

    __slots__ = ("values", "scale", "zero_point", "granularity", "symmetric")

    def __init__(
        self,
        values: np.ndarray,
        scale: np.ndarray,
        zero_point: np.ndarray,
        granularity: str,
        symmetric: bool,
    ) -> None:
        self.values = values
        self.scale = scale
        self.zero_point = zero_point
        self.granularity = granularity
        self.symmetric = symmetric

    def dequantize(self) -> np.ndarray:
        """``(values - zero_point) * scale`` as float32, the shape of ``values``."""
        v = self.values.astype(np.float32)
        s = self.scale.astype(np.float32)
        z = self.zero_point.astype(np.float32)
        if self.granularity == "row":
            s = s[..., None]
            z = z[..., None]
        # Near float32's limit, (v - z) * s may round to infinity; that is the honest answer.
        with np.errstate(over="ignore"):
            return ((v - z) * s).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        kind = "int8 symmetric" if self.symmetric else "uint8 asymmetric"
        return (
            f"QuantizedTensor(shape={self.values.shape}, {kind}, "
            f"granularity={self.granularity!r}, scales={self.scale.size})"
        )


def quantize(
    x: Any,
    *,
    granularity: str = "tensor",
    symmetric: bool = False,
    check_finite: bool = True,
) -> QuantizedTensor:
    """Quantize a float array to 8 bits with one scale per tensor or per row.

    Asymmetric (default): uint8 with a zero point, the parameters of ONNX
    ``DynamicQuantizeLinear`` (so ``granularity="tensor"`` equals :func:`dynamic_quantize_linear`),
    except where those are degenerate: a range wider than float32 can hold gets
    ``scale = max/255 - min/255`` instead of infinity, a scale that underflows to 0 becomes 1,
    and a subnormal scale is rounded up so that the whole range stays representable.
    Symmetric: int8 in [-127, 127], ``scale = max|x| / 127`` (1 for an all-zero group),
    zero point 0.

    Parameters
    ----------
    x : array_like of float
        float64 and float16 are converted to float32. ``granularity="row"`` needs at least one
        dimension; the last axis is the one reduced.
    granularity : {"tensor", "row"}
    symmetric : bool
    check_finite : bool
        Raise ``ValueError`` on NaN or infinity (default).

    Returns
    -------
    QuantizedTensor
    """
    fast = _dynaq.quantize_fast(x, granularity, bool(symmetric), bool(check_finite))
    if fast is not None:
        return QuantizedTensor(fast[0], fast[1], fast[2], granularity, bool(symmetric))
    per_row = _check_granularity(granularity)
    a = _as_float32(x, "x")
    if per_row:
        if a.ndim == 0:
            raise ValueError("granularity='row' needs x with at least 1 dimension, got a scalar")
        cols = a.shape[-1]
        rows = math.prod(a.shape[:-1])
        group_shape: tuple[int, ...] = a.shape[:-1]
    else:
        rows, cols = 1, a.size
        group_shape = ()
    a2 = a.reshape(rows, cols)
    if symmetric:
        v, s = _dynaq.quantize_i8(a2, per_row, bool(check_finite))
        z = np.zeros(group_shape, dtype=np.int8)
    else:
        v, s, z = _dynaq.quantize_u8(a2, per_row, bool(check_finite))
        z = z.reshape(group_shape)
    return QuantizedTensor(
        v.reshape(a.shape), s.reshape(group_shape), z, granularity, bool(symmetric)
    )


def pack_weight(
    weight: Any, *, per_channel: bool = True, check_finite: bool = True
) -> PackedWeight:
    """Quantize a float weight once to symmetric int8 and pack it for this CPU's kernels.

    Parameters
    ----------
    weight : array_like of float, shape (out_features, in_features)
        The ``torch.nn.Linear`` convention. float64 and float16 are converted.
    per_channel : bool
        One scale per output channel (default, more accurate) or one for the whole tensor.

    Raises
    ------
    ValueError
        When the weight holds NaN or infinity (always checked: it would poison every call).

    Returns
    -------
    PackedWeight
    """
    w = _as_float32(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
    return PackedWeight._from_float(w, bool(per_channel))


def _prepare_quantized_weight(values: Any, scales: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Checks and converts the arguments of ``PackedWeight.from_quantized``."""
    v = np.asarray(values)
    if v.dtype != np.int8:
        raise TypeError(f"values must be an int8 array, got dtype {v.dtype}")
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D (out_features, in_features), got shape {v.shape}")
    s = _as_float32(scales, "scales")
    n = v.shape[0]
    if s.ndim == 0 or (s.shape == (1,) and n != 1):
        per_channel = False
        s = s.reshape(1)
    elif s.shape == (n,):
        per_channel = True
    else:
        raise ValueError(
            f"scales must have shape ({n},) (per channel) or be a scalar (per tensor); got "
            f"shape {s.shape} for values of shape {v.shape}"
        )
    return np.ascontiguousarray(v), np.ascontiguousarray(s), per_channel


def linear(
    x: Any,
    weight: Union[PackedWeight, Any],
    bias: Optional[Any] = None,
    *,
    granularity: str = "row",
    out: Optional[np.ndarray] = None,
    check_finite: bool = True,
) -> np.ndarray:
    """``x @ weight.T + bias`` with dynamic int8 quantization of ``x``.

    ``x`` is quantized at run time to uint8 (one scale and zero point per row by default, so a
    row's result never depends on the rest of the batch), multiplied with the int8 weight with
    exact int32 accumulation, and dequantized with the bias added:
    ``y = float32(acc - zx * colsum(wq)) * (sx * sw) + bias``.

    Parameters
    ----------
    x : array_like of float, shape (..., in_features)
        float64 and float16 are converted to float32.
    weight : PackedWeight or array_like of float, shape (out_features, in_features)
        A float weight is packed on the fly (per channel); pack it once with
        :func:`pack_weight` when it is reused.
    bias : array_like of float, shape (out_features,), optional
    granularity : {"row", "tensor"}
        Activation scales per row (default) or one for the whole ``x``.
    out : ndarray of float32, shape (..., out_features), optional
        Written in place and returned. Must be exactly float32, C-contiguous, writeable and of
        the result's shape (numpy's strict rule), else ``TypeError``/``ValueError``.
    check_finite : bool
        Raise ``ValueError`` when ``x`` holds NaN or infinity (default).

    Returns
    -------
    ndarray of float32, shape (..., out_features)
    """
    fast = _dynaq.linear_fast(x, weight, bias, granularity, out, bool(check_finite))
    if fast is not None:
        return fast
    per_row = _check_granularity(granularity)
    a, weight, b, out = _prepare_linear(x, weight, bias, out)
    if out.size:
        n, k = weight.shape
        m = math.prod(a.shape[:-1])
        _dynaq.linear(a.reshape(m, k), weight, b, per_row, bool(check_finite), out.reshape(m, n))
    return out


def _prepare_linear(
    x: Any, weight: Any, bias: Any, out: Optional[np.ndarray]
) -> tuple[np.ndarray, PackedWeight, Optional[np.ndarray], np.ndarray]:
    """Checks and converts the arguments of a linear layer; returns ``(x, weight, bias, out)``
    ready for the native call (``out`` allocated when not given)."""
    a = _as_float32(x, "x")
    if not isinstance(weight, PackedWeight):
        weight = pack_weight(weight)
    n, k = weight.shape
    if a.ndim == 0 or a.shape[-1] != k:
        raise ValueError(
            f"x has shape {a.shape}: its last axis must equal in_features = {k} of the "
            f"weight of shape {weight.shape}"
        )
    b = None
    if bias is not None:
        b = _as_float32(bias, "bias")
        if b.shape != (n,):
            raise ValueError(
                f"bias must have shape ({n},) for a weight of shape {weight.shape}, got {b.shape}"
            )
    out_shape = a.shape[:-1] + (n,)
    if out is None:
        return a, weight, b, np.empty(out_shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"out must have dtype float32, got {out.dtype}")
    if out.shape != out_shape:
        raise ValueError(f"out must have shape {out_shape}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if np.may_share_memory(out, a):
        a = a.copy()
    if b is not None and np.may_share_memory(out, b):
        b = b.copy()
    return a, weight, b, out


def _linear_static(
    x: Any,
    weight: PackedWeight,
    bias: Optional[np.ndarray],
    scale: float,
    zero_point: int,
    out: Optional[np.ndarray] = None,
    check_finite: bool = True,
) -> np.ndarray:
    """``linear`` with a fixed activation scale and zero point (static quantization)."""
    a, weight, b, out = _prepare_linear(x, weight, bias, out)
    if out.size:
        n, k = weight.shape
        m = math.prod(a.shape[:-1])
        _dynaq.linear_static(
            a.reshape(m, k), weight, b, float(scale), int(zero_point), bool(check_finite),
            out.reshape(m, n),
        )  # fmt: skip
    return out


def _int8_operand(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype not in (np.uint8, np.int8):
        raise TypeError(f"{name} must be a uint8 or int8 array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension (matmul does not take scalars)")
    return a


def _zero_point(
    zp: Any,
    name: str,
    dtype: np.dtype,
    per_shape: tuple[int, ...],
    full_shape: tuple[int, ...],
    batch: int,
    count: int,
) -> np.ndarray:
    """int32 zero points: one value, or ``batch * count`` (one per row of A / column of B).

    ``per_shape`` is the 1-D per-row/column shape accepted for 2-D operands; ``full_shape`` the
    N-D shape, e.g. ``batch_shape + (M, 1)``, that an N-D zero point must broadcast to.
    """
    if zp is None:
        return np.zeros(1, dtype=np.int32)
    if (
        isinstance(zp, (int, np.integer))
        and not isinstance(zp, (bool, np.bool_))
        and not (isinstance(zp, np.integer) and np.asarray(zp).dtype != dtype)
    ):
        info = np.iinfo(dtype)
        if not info.min <= int(zp) <= info.max:
            raise ValueError(f"{name} = {int(zp)} is outside the range of {np.dtype(dtype)}")
        return np.array([int(zp)], dtype=np.int32)
    z = np.asarray(zp)
    if z.dtype != dtype:
        raise TypeError(
            f"{name} must have the dtype of its operand ({np.dtype(dtype)}), got {z.dtype}"
        )
    if z.size == 1 and z.ndim <= 1:
        return z.reshape(1).astype(np.int32)
    if z.ndim == 1 and z.shape == per_shape:
        return np.broadcast_to(z.astype(np.int32), (batch, count)).reshape(-1).copy()
    try:
        full = np.broadcast_to(z, full_shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {z.shape} is neither a scalar, shape {per_shape}, nor "
            f"broadcastable to {full_shape}"
        ) from None
    return np.ascontiguousarray(full.astype(np.int32)).reshape(-1)


def matmul_integer(
    a: Any, b: Any, a_zero_point: Any = None, b_zero_point: Any = None
) -> np.ndarray:
    """ONNX ``MatMulInteger``: ``(a - a_zero_point) @ (b - b_zero_point)`` in exact int32.

    Parameters
    ----------
    a : array_like of uint8 or int8, shape (..., M, K) or (K,)
    b : array_like of uint8 or int8, shape (..., K, N) or (K,)
        Batch dimensions broadcast as in ``numpy.matmul``; 1-D operands are promoted and the
        added dimension removed from the result, as in ``numpy.matmul``.
    a_zero_point : scalar or array of a's dtype, optional
        One value, or one per row of ``a``: shape (M,) for a 2-D ``a``, (..., M, 1) otherwise.
    b_zero_point : scalar or array of b's dtype, optional
        One value, or one per column of ``b``: shape (N,) for a 2-D ``b``, (..., 1, N) otherwise.

    Returns
    -------
    ndarray of int32

    Raises
    ------
    OverflowError
        When an exact result does not fit in int32 (it is never wrapped).
    """
    a_arr = _int8_operand(a, "a")
    b_arr = _int8_operand(b, "b")
    a_nd, b_nd = a_arr.ndim, b_arr.ndim
    a2 = a_arr[None, :] if a_nd == 1 else a_arr
    b2 = b_arr[:, None] if b_nd == 1 else b_arr
    m, k = a2.shape[-2:]
    kb, n = b2.shape[-2:]
    if k != kb:
        raise ValueError(
            f"matmul_integer: a of shape {a_arr.shape} and b of shape {b_arr.shape} have "
            f"different inner dimensions ({k} != {kb})"
        )
    try:
        batch_shape = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul_integer: batch dimensions of a {a_arr.shape} and b {b_arr.shape} do not "
            "broadcast"
        ) from None
    batch = math.prod(batch_shape)
    za = _zero_point(
        a_zero_point,
        "a_zero_point",
        a_arr.dtype,
        (m,) if a_nd == 2 else (1,) if a_nd == 1 else (-1,),
        batch_shape + (m, 1),
        batch,
        m,
    )
    zb = _zero_point(
        b_zero_point,
        "b_zero_point",
        b_arr.dtype,
        (n,) if b_nd == 2 else (1,) if b_nd == 1 else (-1,),
        batch_shape + (1, n),
        batch,
        n,
    )
    out = np.empty(batch_shape + (m, n), dtype=np.int32)
    if out.size:
        a_count = math.prod(a2.shape[:-2])
        b_count = math.prod(b2.shape[:-2])
        a_index = np.broadcast_to(
            np.arange(a_count, dtype=np.int64).reshape(a2.shape[:-2]), batch_shape
        ).reshape(-1)
        b_index = np.broadcast_to(
            np.arange(b_count, dtype=np.int64).reshape(b2.shape[:-2]), batch_shape
        ).reshape(-1)
        _dynaq.matmul_integer(
            np.ascontiguousarray(a2.reshape(a_count, m, k)),
            np.ascontiguousarray(a_index),
            np.ascontiguousarray(b2.reshape(b_count, k, n)),
            np.ascontiguousarray(b_index),
            za,
            zb,
            out.reshape(batch, m, n),
        )
    if a_nd == 1:
        out = out[..., 0, :]
    if b_nd == 1:
        out = out[..., 0]
    return out
