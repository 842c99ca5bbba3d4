"""The numpy ``Linear`` layer: int8 weights, activations quantized per row (or per call) at run
time, or statically after ``calibrate``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Union

import numpy as np

from .._dynaq import PackedWeight, layer_linear, quantize
from .._dynaq import as_float32 as _as_float32
from .._dynaq import check_granularity as _check_granularity
from ._common import (
    F32,
    Serialized,
    Tensors,
    Weights,
    bias_array,
    config_value,
    expect_config,
    expect_names,
    pack,
    weight_options,
)

__all__ = ["Linear"]


class Linear(Serialized):
    """``y = x @ weight.T + bias`` with int8 (or 4-bit) weights and dynamically quantized
    activations.

    Parameters
    ----------
    weight : PackedWeight
        From :func:`dynaq.pack_weight`; use :meth:`from_float` to start from float weights.
    bias : array_like of float, shape (out_features,), optional
    granularity : {"row", "tensor"}
        Activation scales per row (default) or per call.

    Calling the layer on float32 ``x`` of shape (..., in_features) returns float32
    (..., out_features). After :meth:`calibrate`, the layer quantizes activations statically
    with the calibrated scale instead (for comparing static with dynamic quantization).
    """

    def __init__(self, weight: PackedWeight, bias: Any = None, *, granularity: str = "row") -> None:
        if not isinstance(weight, PackedWeight):
            raise TypeError(
                "weight must be a PackedWeight (use Linear.from_float for float weights), got "
                f"{type(weight).__name__}"
            )
        _check_granularity(granularity)
        self.weight = weight
        self.bias = bias_array(bias, "bias", weight.out_features)
        self.granularity = granularity
        self.activation_scale: Optional[float] = None
        self.activation_zero_point: Optional[int] = None

    @classmethod
    def from_float(
        cls,
        weight: Any,
        bias: Any = None,
        *,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
        importance: Any = None,
    ) -> Linear:
        """Quantize a float weight (out_features, in_features) and build the layer;
        ``bits``, ``group_size``, ``symmetric``, ``method`` and ``importance`` as
        :func:`dynaq.pack_weight` takes them (``bits=4`` for 4-bit weights)."""
        opts = weight_options(bits, group_size, symmetric, method)
        if importance is not None:
            opts["importance"] = importance
        return cls(pack(weight, "weight", per_channel, opts), bias, granularity=granularity)

    @property
    def in_features(self) -> int:
        return int(self.weight.in_features)

    @property
    def out_features(self) -> int:
        return int(self.weight.out_features)

    @property
    def static(self) -> bool:
        """Whether a calibrated (static) activation scale is in use."""
        return self.activation_scale is not None

    def calibrate(self, samples: Union[np.ndarray, Iterable[Any]]) -> Linear:
        """Fix the activation scale and zero point from calibration data (static mode).

        ``samples`` is one array of shape (..., in_features) or an iterable of them; the range
        over all of them (widened to include 0) gives the parameters, as ``quantize`` would for
        their concatenation. Later calls quantize with these parameters, saturating values
        outside the calibrated range. Returns ``self``.
        """
        if isinstance(samples, np.ndarray):
            batches = [samples]
        elif isinstance(samples, (str, bytes)) or not isinstance(samples, Iterable):
            raise TypeError(
                "samples must be an array (..., in_features) or an iterable of them, got "
                f"{type(samples).__name__}"
            )
        else:
            batches = list(samples)
        if not batches:
            raise ValueError("calibrate needs at least one sample")
        lo, hi = np.inf, -np.inf
        for i, s in enumerate(batches):
            a = _as_float32(s, f"samples[{i}]")
            if a.ndim == 0 or a.shape[-1] != self.in_features:
                raise ValueError(
                    f"samples[{i}] has shape {a.shape}; the last axis must be "
                    f"in_features = {self.in_features}"
                )
            if a.size == 0:
                continue
            if not np.isfinite(a).all():
                raise ValueError(f"samples[{i}] contains NaN or infinity")
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        if lo > hi:
            lo = hi = 0.0
        q = quantize(np.array([lo, hi], dtype=F32))
        self.activation_scale = float(q.scale)
        self.activation_zero_point = int(q.zero_point)
        return self

    def reset_calibration(self) -> Linear:
        """Back to dynamic quantization. Returns ``self``."""
        self.activation_scale = None
        self.activation_zero_point = None
        return self

    def __call__(self, x: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        return self._forward(x, out=out)

    forward = __call__

    def _forward(self, x: Any, *, out: Optional[np.ndarray] = None, name: str = "x") -> np.ndarray:
        """The call, with the input called ``name`` in errors (the torch module's ``input``)."""
        if self.activation_scale is not None:
            return layer_linear(
                x,
                self.weight,
                self.bias,
                name=name,
                scale=self.activation_scale,
                zero_point=int(self.activation_zero_point or 0),
                out=out,
            )
        return layer_linear(
            x, self.weight, self.bias, name=name, granularity=self.granularity, out=out
        )

    _kind = "Linear"

    def _tensors(self) -> tuple[Weights, Tensors, dict[str, Any]]:
        tensors: Tensors = {}
        if self.bias is not None:
            tensors["bias"] = self.bias
        if self.activation_scale is not None:
            tensors["input_scale"] = np.array(self.activation_scale, dtype=F32)
            tensors["input_zero_point"] = np.array(self.activation_zero_point or 0, dtype=np.uint8)
        return {"weight": self.weight}, tensors, {"granularity": self.granularity}

    @classmethod
    def _from_tensors(cls, weights: Weights, tensors: Tensors, config: dict[str, Any]) -> Linear:
        expect_names("weights", weights, {"weight"}, {"weight"})
        expect_names("tensors", tensors, {"bias", "input_scale", "input_zero_point"})
        expect_config(config, {"granularity"})
        layer = cls(
            weights["weight"],
            tensors.get("bias"),
            granularity=config_value(config, "granularity", str, "row"),
        )
        static = {"input_scale", "input_zero_point"} & set(tensors)
        if static:
            expect_names("tensors", static, static, {"input_scale", "input_zero_point"})
            scale, zp = tensors["input_scale"], tensors["input_zero_point"]
            if scale.shape != () or scale.dtype != F32:
                raise ValueError(
                    f"input_scale must be a float32 scalar, got {scale.dtype} {scale.shape}"
                )
            if zp.shape != () or zp.dtype != np.uint8:
                raise ValueError(
                    f"input_zero_point must be a uint8 scalar, got {zp.dtype} {zp.shape}"
                )
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"input_scale must be finite and positive, got {float(scale)}")
            layer.activation_scale = float(scale)
            layer.activation_zero_point = int(zp)
        return layer

    def __repr__(self) -> str:
        mode = (
            f"static(scale={self.activation_scale:.4g}, zero_point={self.activation_zero_point})"
            if self.static
            else f"dynamic({self.granularity})"
        )
        w = self.weight
        scales = (
            f"bits=4, group_size={w.group_size}" if w.bits == 4 else f"per_channel={w.per_channel}"
        )
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {scales}, activations={mode})"
        )
