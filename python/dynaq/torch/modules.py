"""The dynaq modules: ``Linear``, ``LSTM`` and ``GRU``, whose buffers hold dynaq's packed int8 or
4-bit weights and which call dynaq's registered operators (:mod:`dynaq.torch.ops`); their state
dicts are dynaq's one on-disk form (plain tensors).

Buffers: an int8 weight ``W`` is ``W_panels`` (int8, the packed panels the kernels read; not in
the state dict, which holds the int8 values ``W`` in the ``(out, in)`` layout instead) and
``W_scale`` (float32); a 4-bit one is ``W_panels``, ``W_gscale_panels`` and ``W_gmin_panels``
(uint8, the levels and group codes as the kernels read them) and ``W_scale`` and ``W_min``
(float32 row factors), and its state dict holds the stored tensors of
``dynaq._dynaq.weight_tensors`` (``W``, ``W_scale``, ``W_min``, ``W_gscale``, ``W_gmin``). Biases
and a calibrated input scale are ordinary float32 buffers. A module
built from a dynaq layer shares that layer's memory (the panels are a view of its
``PackedWeight``): one copy of every weight. Modules can be built on the ``meta`` device (a
skeleton to load a checkpoint into), and pickle as plain tensors.

This file holds the shared base and :class:`Linear`; :class:`LSTM` and :class:`GRU` live in
``recurrent.py`` (re-exported here), the state-dict machinery in ``_state.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .. import _dynaq
from .. import layers as _layers
from .._dynaq import PackedWeight
from .._dynaq import check_granularity as _check_granularity
from ..layers import _common
from . import _state, ops
from ._bridge import checked, direct, is_conv1d, param_numpy

__all__ = ["GRU", "LSTM", "Linear", "safe_globals"]

_PANELS = "_panels"


def _weight_format(
    in_features: int, per_channel: bool, options: dict[str, Any]
) -> tuple[ops.Format, bool]:
    """The format a weight of ``in_features`` columns gets with these options (checked as
    quantizing checks them), and whether it is per channel."""
    bits, group, symmetric, pc = _dynaq.weight_format(
        in_features, per_channel=per_channel, **options
    )
    return (bits, group or 0, symmetric), pc


class _DynaqModule(nn.Module):
    """What the dynaq modules share: buffers made from a dynaq layer (and the layer back from
    them, cached), the state dict as plain tensors, and version-1 state dicts (one ``uint8``
    tensor per module) read for compatibility."""

    _version = _dynaq.FORMAT_VERSION
    #: The format of the weights (all of them): ``(bits, group_size, symmetric)``.
    _format: ops.Format = ops.INT8
    #: Buffers that stay float32 when the module is cast (``model.half()``): the scales and
    #: biases are part of the quantized weight, not activations.
    _float32: tuple[str, ...] = ()
    #: State-dict entries a module may have or not, besides its weights' biases (Linear's
    #: calibrated input scale).
    _optional: tuple[str, ...] = ()

    # --- what each module says about itself ----------------------------------------------------

    def _weight_shapes(self) -> dict[str, tuple[int, int]]:  # pragma: no cover - overridden
        """Each weight's name and ``(out, in)`` shape."""
        raise NotImplementedError

    def _layer_config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """The layer's configuration as its bytes and state dict record it."""
        raise NotImplementedError

    def _check_loaded(self, layer: Any) -> Optional[str]:  # pragma: no cover - overridden
        """None when ``layer`` fits this module, else the reason it does not."""
        raise NotImplementedError

    def _adopt(self, layer: Any) -> None:  # pragma: no cover - overridden
        """Take ``layer``'s weights and tensors as this module's buffers."""
        raise NotImplementedError

    @property
    def layer(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    # --- the layer behind the buffers ----------------------------------------------------------

    def _direct_layer(self) -> Any:
        """The layer behind the buffers, for the direct path: the module's own record (faster
        than the shared cache; not pickled) while its buffers are the same, unchanged tensors
        and its options the same, else the shared cache."""
        memo = self.__dict__.get("_direct")
        tensors, config = self._layer_tensors()
        if memo is not None and memo[1] == config and ops.unchanged(tensors, memo[0], memo[2]):
            return memo[3]
        layer = self.layer
        self.__dict__["_direct"] = (tensors, config, ops.versions(tensors), layer)
        return layer

    def _layer_tensors(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:  # pragma: no cover
        """The buffers the layer is made of, and the options it depends on."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_direct", None)
        return state

    # --- buffers ---------------------------------------------------------------------------------

    def _set_weight(self, name: str, pw: PackedWeight) -> None:
        self._set_weight_buffers(name, pw.bits, ops.weight_buffers(pw))

    def _set_weight_buffers(self, name: str, bits: int, tensors: tuple[torch.Tensor, ...]) -> None:
        """``tensors`` as the buffers of weight ``name`` (those of another format dropped); the
        panels are derived (not in the state dict as such)."""
        for sfx in _state.WEIGHT_BUFFERS:
            self._buffers.pop(name + sfx, None)
            self._non_persistent_buffers_set.discard(name + sfx)
        for sfx, t in zip(ops.BUFFER_SUFFIXES[bits], tensors):
            self.register_buffer(name + sfx, t, persistent=not sfx.endswith(_PANELS))

    def _set_meta_weight(self, name: str, n: int, k: int, fmt: ops.Format, pc: bool) -> None:
        self._set_weight_buffers(name, fmt[0], ops.meta_buffers(n, k, fmt, pc))

    @staticmethod
    def _uniform_format(weights: Mapping[str, PackedWeight]) -> ops.Format:
        """The one format of ``weights`` (a module's weights share one)."""
        formats = {ops.weight_format(pw) for pw in weights.values()}
        if len(formats) > 1:
            raise ValueError(
                "the weights of one dynaq torch module must share one format (bits, group "
                f"size, symmetric); got {sorted(formats)}"
            )
        return formats.pop() if formats else ops.INT8

    def _set_tensor(self, name: str, value: Optional[np.ndarray]) -> None:
        self.register_buffer(name, None if value is None else torch.from_numpy(np.array(value)))

    def _on_meta(self) -> bool:
        return any(b is not None and b.device.type == "meta" for b in self._buffers.values())

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # Casts (model.half(), torch_dtype=...) must not round the scales and biases: keep them
        # float32 on whatever device fn moves them to.
        before = {n: self._buffers.get(n) for n in self._float32}
        super()._apply(fn, recurse)
        for n, old in before.items():
            new = self._buffers.get(n)
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[n] = old.to(new.device)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled (torch.load, copy.deepcopy): the buffers are new tensors. Rebuild the layer
        # from them (checking them) and take its buffers, so that the panels are again the
        # layer's own memory (one copy).
        super().__setstate__(state)
        if not self._on_meta():
            self._adopt(self.layer)

    # --- state dicts (the machinery: _state.py) ---------------------------------------------------

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        _state.save_to_state_dict(self, destination, prefix, keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        _state.load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )  # fmt: skip

    @classmethod
    def _layer_type(cls) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _get_name(self) -> str:
        return "Dynaq" + type(self).__name__


class Linear(_DynaqModule):
    """``nn.Linear`` on int8 or 4-bit weights with dynamically quantized activations (dynaq).

    Parameters
    ----------
    in_features, out_features : int
        The layer's shape; the weight starts at zero (load a state dict into it, or build the
        layer with :meth:`from_float` / :meth:`from_layer`).
    bias : bool
        Whether the layer adds a bias.
    per_channel : bool
        int8: one weight scale per output channel (default) or one per tensor.
    granularity : {"row", "tensor"}
        Activation scales per row (default: a row's result never depends on the rest of the
        batch) or one per call.
    bits, group_size, symmetric, method
        The weight's format, as :func:`dynaq.pack_weight` takes them: 8 bits (default), or 4
        with a scale and minimum per group of 32 (default), 64 or 128 input features or
        per channel (``group_size=None``).
    device : torch.device or str, optional
        ``"meta"`` builds a skeleton (shapes only) to load a checkpoint into; otherwise the CPU.

    Notes
    -----
    Called on a CPU tensor of shape (..., in_features), it returns (..., out_features) in the
    input's dtype. float32 passes through numpy without a copy; float64, float16 and bfloat16
    are computed in float32 and converted back; other dtypes raise ``TypeError``, tensors on
    other devices ``ValueError``. It calls the operator ``torch.ops.dynaq.linear`` (int8
    weights) or ``torch.ops.dynaq.linear4`` (4-bit), so ``torch.compile``, ``torch.export`` and
    ``torch.jit.trace`` record it. Inference only: a backward through it raises.

    Attributes (buffers): the weight's (module docstring: ``weight_panels``, ``weight_scale``,
    and for 4-bit weights ``weight_gscale_panels``, ``weight_gmin_panels``, ``weight_min``),
    ``bias`` (float32 or None), ``input_scale`` / ``input_zero_point`` (None unless calibrated).
    ``weight`` is the quantized weight ``(out_features, in_features)`` (a new tensor: int8
    values, or the uint8 levels 0..15 of a 4-bit weight).
    """

    _optional = ("input_scale", "input_zero_point")
    _float32 = ("weight_scale", "weight_min", "bias", "input_scale")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        _check_granularity(granularity)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.granularity = granularity
        options = _common.weight_options(bits, group_size, symmetric, method)
        if device is not None and torch.device(device).type == "meta":
            fmt, pc = _weight_format(self.in_features, per_channel, options)
            self._format = fmt
            self._set_meta_weight("weight", self.out_features, self.in_features, fmt, pc)
            b = torch.empty(self.out_features, device="meta") if bias else None
            self.register_buffer("bias", b)
            self.register_buffer("input_scale", None)
            self.register_buffer("input_zero_point", None)
            return
        w = np.zeros((self.out_features, self.in_features), dtype=np.float32)
        b_ = np.zeros(self.out_features, dtype=np.float32) if bias else None
        self._adopt(
            _layers.Linear.from_float(
                w, b_, per_channel=per_channel, granularity=granularity, **options
            )
        )

    @classmethod
    def _layer_type(cls) -> Any:
        return _layers.Linear

    @classmethod
    def from_layer(cls, layer: _layers.Linear) -> Linear:
        """Wrap a numpy :class:`dynaq.layers.Linear` (its weight shared, not copied)."""
        if not isinstance(layer, _layers.Linear):
            raise TypeError(f"layer must be a dynaq.layers.Linear, got {type(layer).__name__}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._adopt(layer)
        return mod

    @classmethod
    def from_float(
        cls,
        mod: nn.Linear,
        *,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
        importance: Any = None,
    ) -> Linear:
        """Quantize the weight of a float ``nn.Linear`` (any float dtype, any device), or of
        transformers' ``Conv1D`` (GPT-2's projections, whose weight is stored ``(in, out)``: it
        is quantized per output channel all the same). A module on the ``meta`` device gives a
        skeleton of the same shape (to load a checkpoint into).

        Parameters
        ----------
        mod : torch.nn.Linear or transformers.pytorch_utils.Conv1D
        per_channel : bool
            int8: per-output-channel weight scales (default) or one scale for the tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.
        bits, group_size, symmetric, method
            The weight's format, as :func:`dynaq.pack_weight` takes them (8 bits by default).
        importance : array_like, optional
            4-bit weights: one value per input feature (typically its mean squared activation)
            weighting the search of the grids, as :func:`dynaq.pack_weight` takes it.

        Returns
        -------
        Linear
        """
        conv1d = is_conv1d(mod)
        if not (isinstance(mod, nn.Linear) or conv1d):
            raise TypeError(
                f"from_float needs a torch.nn.Linear (or transformers' Conv1D), got "
                f"{type(mod).__name__}"
            )
        if conv1d:
            # transformers' Conv1D computes x @ W + b with W stored (in, out).
            in_features, out_features = int(mod.nx), int(mod.nf)
        else:
            in_features, out_features = mod.in_features, mod.out_features
        options = _common.weight_options(bits, group_size, symmetric, method)
        if mod.weight.device.type == "meta":
            out = cls(
                in_features, out_features, mod.bias is not None,
                per_channel=per_channel, granularity=granularity, device="meta", **options,
            )  # fmt: skip
        else:
            w = param_numpy(mod.weight.t() if conv1d else mod.weight, "weight")
            b = None if mod.bias is None else param_numpy(mod.bias, "bias")
            layer = _layers.Linear.from_float(
                w,
                b,
                per_channel=per_channel,
                granularity=granularity,
                importance=importance,
                **options,
            )
            out = cls.from_layer(layer)
        out.train(mod.training)
        return out

    def _adopt(self, layer: Any) -> None:
        weights, tensors, config = layer._tensors()
        pw = weights["weight"]
        self.out_features, self.in_features = pw.shape
        self.granularity = config["granularity"]
        self._format = ops.weight_format(pw)
        self._set_weight("weight", pw)
        for name in ("bias", "input_scale", "input_zero_point"):
            self._set_tensor(name, tensors.get(name))
        self._layer_of(*self._op_tensors(), prepared=layer)

    def _weight_buffers(self) -> tuple[Any, ...]:
        return tuple(self._buffers["weight" + s] for s in ops.BUFFER_SUFFIXES[self._format[0]])

    def _op_tensors(self) -> tuple[Any, ...]:
        """The arguments of the operator after the input."""
        b = self._buffers
        n, k, granularity = self.out_features, self.in_features, self.granularity
        if self._format[0] == 8:
            return (b["weight_panels"], b["weight_scale"], b["bias"], n, k, granularity,
                    b["input_scale"], b["input_zero_point"])  # fmt: skip
        _, group, symmetric = self._format
        return (*self._weight_buffers(), b["bias"], n, k, group, symmetric, granularity,
                b["input_scale"], b["input_zero_point"])  # fmt: skip

    def _layer_of(self, *args: Any, prepared: Any = None) -> _layers.Linear:
        build = ops.linear_layer if self._format[0] == 8 else ops.linear4_layer
        return build(*args, prepared=prepared)  # type: ignore[operator]

    def _layer_tensors(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        b = self._buffers
        tensors = (*self._weight_buffers(), b["bias"], b["input_scale"], b["input_zero_point"])
        return tensors, (self.out_features, self.in_features, self.granularity, self._format)

    def _direct_layer(self) -> Any:
        # The generic check, unrolled for int8 weights: at 1 x 64 x 64 the whole call is
        # ~6 us, and the generic one cost ~1.5 us of it.
        memo = self.__dict__.get("_direct")
        if self._format[0] != 8:
            return super()._direct_layer()
        if memo is not None:
            b = self._buffers
            t, config, v, layer = memo
            if (
                b["weight_panels"] is t[0]
                and b["weight_scale"] is t[1]
                and b["bias"] is t[2]
                and b["input_scale"] is t[3]
                and b["input_zero_point"] is t[4]
                and (v[0] is None or t[0]._version == v[0])
                and (v[1] is None or t[1]._version == v[1])
                and (v[2] is None or t[2]._version == v[2])
                and (v[3] is None or t[3]._version == v[3])
                and (v[4] is None or t[4]._version == v[4])
                and config == (self.out_features, self.in_features, self.granularity, self._format)
            ):
                return layer
        return super()._direct_layer()

    @property
    def layer(self) -> _layers.Linear:
        """The numpy :class:`dynaq.layers.Linear` of the buffers (shared memory; cached)."""
        return self._layer_of(*self._op_tensors())

    def _weight_shapes(self) -> dict[str, tuple[int, int]]:
        return {"weight": (self.out_features, self.in_features)}

    def _layer_config(self) -> dict[str, Any]:
        return {"granularity": self.granularity}

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return self.weight_scale.dim() == 1

    @property
    def bits(self) -> int:
        """Bits per weight value: 8 or 4."""
        return self._format[0]

    @property
    def group_size(self) -> Optional[int]:
        """Input features per scale of a 4-bit weight; None per channel, and for int8."""
        return self._format[1] or None

    @property
    def symmetric(self) -> bool:
        """Whether the weight's levels are symmetric about zero (always so for int8)."""
        return self._format[2]

    @property
    def static(self) -> bool:
        """Whether a calibrated (static) input scale is in use."""
        return self.input_scale is not None

    @property
    def weight(self) -> torch.Tensor:
        """The quantized weight values (out_features, in_features), a new tensor: int8, or the
        uint8 levels of a 4-bit weight (writing to it changes nothing: the weight is packed
        once)."""
        if self._on_meta():
            dtype = torch.int8 if self.bits == 8 else torch.uint8
            w = torch.empty((self.out_features, self.in_features), dtype=dtype, device="meta")
        else:
            w = torch.from_numpy(self.layer.weight.unpack()[0])
        # Model code that re-initializes weights in place (transformers' _init_weights, e.g.
        # GPT-2's c_proj) must leave this copy alone: transformers' initializers skip a tensor
        # marked so.
        w._is_hf_initialized = True  # type: ignore[attr-defined]
        return w

    def weight_int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight values (out_features, in_features) and their float32 scales
        (``ValueError`` for a 4-bit weight: :attr:`weight` and ``layer.weight.unpack()``)."""
        if self.bits != 8:
            raise ValueError(
                "weight_int8: this module's weight has 4 bits; its levels are .weight, and "
                ".layer.weight.unpack() gives (levels, scales, minima)"
            )
        return self.weight, self.weight_scale.clone()

    def dequantized_weight(self) -> torch.Tensor:
        """``weight * scale`` (out_features, in_features), float32 (a new tensor)."""
        return torch.from_numpy(np.ascontiguousarray(self.layer.weight.dequantize()))

    def calibrate(self, samples: Any) -> Linear:
        """Fix the input scale and zero point from calibration data (static mode), as
        :meth:`dynaq.layers.Linear.calibrate`; ``samples``: tensors or arrays of shape
        (..., in_features). Returns ``self``."""
        if isinstance(samples, torch.Tensor):
            samples = [samples]
        arrays = [s.detach().float().cpu().numpy() if isinstance(s, torch.Tensor) else s
                  for s in samples]  # fmt: skip
        layer = _layers.Linear(self.layer.weight, self.layer.bias, granularity=self.granularity)
        self._adopt(layer.calibrate(arrays))
        return self

    def reset_calibration(self) -> Linear:
        """Back to dynamic quantization. Returns ``self``."""
        layer = self.layer
        self._adopt(_layers.Linear(layer.weight, layer.bias, granularity=self.granularity))
        return self

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if direct(input):
            return torch.from_numpy(self._direct_layer()._forward(input.numpy(), name="input"))
        x = checked(input, "input", self._get_name(), self._on_meta())
        name = "linear" if self._format[0] == 8 else "linear4"
        op = getattr(torch.ops.dynaq, name)
        y = ops.no_gradient(op(x, *self._op_tensors()), x, name)
        return y if input.dtype == torch.float32 else y.to(input.dtype)

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (layer.out_features, layer.in_features, layer.bias is not None)
        want = (self.out_features, self.in_features, self.bias is not None)
        if have != want:
            return (
                f"the checkpoint holds a dynaq Linear with out_features={have[0]}, "
                f"in_features={have[1]}, bias={have[2]}; this module has out_features={want[0]}, "
                f"in_features={want[1]}, bias={want[2]}"
            )
        return None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {_format_repr(self._format, self.per_channel)}, "
            f"granularity={self.granularity!r}"
        )


def _format_repr(fmt: ops.Format, per_channel: bool) -> str:
    bits, group, symmetric = fmt
    if bits == 8:
        return f"dtype=int8, per_channel={per_channel}"
    return f"dtype=int4, group_size={group or None}, symmetric={symmetric}"


def safe_globals() -> list[type]:
    """The classes a pickle of a whole quantized model references besides the model's own:
    ``torch.serialization.safe_globals([MyModel, ..., *dynaq.torch.safe_globals()])`` lets
    ``torch.load(path, weights_only=True)`` load it (the modules pickle as plain tensors)."""
    return [Linear, LSTM, GRU]


# LSTM and GRU are defined on the base above (recurrent.py imports this file), so this import
# comes last.
from .recurrent import GRU, LSTM  # noqa: E402
