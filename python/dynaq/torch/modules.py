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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .. import _dynaq, _legacy
from .. import layers as _layers
from .._dynaq import PackedWeight
from .._dynaq import check_granularity as _check_granularity
from ..layers import _common
from . import ops
from ._bridge import checked, direct, is_conv1d, param_numpy

__all__ = ["GRU", "LSTM", "Linear", "safe_globals"]

# The key of a module's options in the state dict's per-module metadata.
_CONFIG_KEY = "dynaq"
_PANELS = "_panels"


#: Every buffer suffix a weight may have, whatever its bits.
_WEIGHT_BUFFERS = tuple(dict.fromkeys(x for sfx in ops.BUFFER_SUFFIXES.values() for x in sfx))


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
        for sfx in _WEIGHT_BUFFERS:
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

    # --- state dicts -----------------------------------------------------------------------------

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        shapes = self._weight_shapes()
        if self._on_meta():
            for name, (n, k) in shapes.items():
                for key, t in self._meta_stored(name, n, k).items():
                    destination[prefix + key] = t
        else:
            weights, _, _ = self.layer._tensors()
            for name, pw in weights.items():
                if pw.bits == 8:
                    values, _ = pw.unpack()
                    destination[prefix + name] = torch.from_numpy(values)
                    destination[prefix + name + "_scale"] = self._buffers[name + "_scale"]
                else:
                    for key, a in _dynaq.weight_tensors(pw, name).items():
                        destination[prefix + key] = torch.from_numpy(a)
        derived = {w + sfx for w in shapes for sfx in _WEIGHT_BUFFERS}
        for name, buf in self._buffers.items():
            if buf is not None and name not in derived:
                destination[prefix + name] = buf if keep_vars else buf.detach()
        # The layer's options (granularity, ...) are not tensors: they go where PyTorch keeps a
        # module's version, the state dict's per-module metadata (kept by torch.save/load).
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})[_CONFIG_KEY] = self._layer_config()

    def _meta_stored(self, name: str, n: int, k: int) -> dict[str, torch.Tensor]:
        """The state-dict entries of weight ``name`` of a skeleton (meta tensors)."""

        def meta(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device="meta")

        bits, group, symmetric = self._format
        scale = self._buffers[name + "_scale"]
        if bits == 8:
            return {name: meta(n, k, dtype=torch.int8), name + "_scale": scale}
        out = {name: meta((n + 1) // 2, k), name + "_scale": scale}
        if not symmetric:
            out[name + "_min"] = self._buffers[name + "_min"]  # type: ignore[assignment]
        if group:
            out[name + "_gscale"] = meta(n, k // group)
            if not symmetric:
                out[name + "_gmin"] = meta(n, k // group)
        return out

    @staticmethod
    def _stored_parts(weight: str) -> tuple[str, ...]:
        """The names that may store ``weight``: ``W`` and its parts (``W_scale``, ``W_min``,
        ...); the first two are always there."""
        return (weight, *(weight + sfx for sfx in _dynaq.WEIGHT_PART_SUFFIXES))

    def _state_names(self) -> tuple[set[str], set[str]]:
        """The names of this module's weights, and every name its state dict may hold (the
        tensors that store the weights, biases, calibrated input scales)."""
        weights = set(self._weight_shapes())
        parts = {k for w in weights for k in self._stored_parts(w)}
        optional = {w.replace("weight", "bias", 1) for w in weights} | set(self._optional)
        return weights, parts | optional

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
        # Whatever the module holds (real weights or a meta skeleton), a checkpoint that passes
        # every check replaces its buffers (as load_state_dict(assign=True) would).
        where = f"{self._get_name()} at {prefix[:-1] or '<root>'!r}"
        if prefix + _legacy.STATE_PACKED in state_dict:
            layer = _legacy.layer_from_state_dict(
                state_dict, prefix, self._layer_type(), strict, missing_keys, unexpected_keys,
                error_msgs, where,
            )  # fmt: skip
            if layer is not None:
                problem = self._check_loaded(layer)
                if problem is not None:
                    error_msgs.append(
                        f"size mismatch for {prefix}{_legacy.STATE_PACKED}: {problem}"
                    )
                    return
                self._adopt(layer)
            return
        weight_names, known = self._state_names()
        parts = {k for w in weight_names for k in self._stored_parts(w)}
        required = {k for w in weight_names for k in (w, w + _dynaq.SCALE_SUFFIX)}
        mine = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        if strict:
            unexpected_keys.extend(k for n, k in mine.items() if n not in known)
        missing = [prefix + n for n in sorted(required) if n not in mine]
        if missing:
            if strict:
                missing_keys.extend(missing)
            return
        if local_metadata is not None and not isinstance(local_metadata, Mapping):
            error_msgs.append(f"{where}: its state-dict metadata must be a dict")
            return
        config = self._layer_config()
        saved = (local_metadata or {}).get(_CONFIG_KEY)
        if isinstance(saved, Mapping):
            config.update(saved)
        elif saved is not None:
            error_msgs.append(f"{where}: its metadata {_CONFIG_KEY!r} must be a dict")
            return
        arrays: dict[str, np.ndarray] = {}
        for n in sorted(known & set(mine)):
            value = state_dict[mine[n]]
            if not isinstance(value, torch.Tensor):
                error_msgs.append(
                    f"{where}: {mine[n]} must be a tensor, got {type(value).__name__}"
                )
                return
            try:
                arrays[n] = value.detach().cpu().contiguous().numpy()
            except (TypeError, RuntimeError) as e:
                error_msgs.append(f"{where}: {mine[n]} cannot be read: {e}")
                return
        weights = {}
        for w in weight_names:
            key = prefix + w
            try:
                # Keyed as in the state dict, so that errors name the entry at fault.
                found = {prefix + n: arrays[n] for n in self._stored_parts(w) if n in arrays}
                weights[w] = _dynaq.weight_from_tensors(found, key)
            except (TypeError, ValueError) as e:
                text = str(e)
                error_msgs.append(f"{where}: {text if text.startswith(key) else f'{key}: {text}'}")
                return
        try:
            tensors = {n: a for n, a in arrays.items() if n not in parts}
            layer = self._layer_type()._from_tensors(weights, tensors, config)
        except (TypeError, ValueError) as e:
            error_msgs.append(f"{where}: {e}")
            return
        problem = self._check_loaded(layer)
        if problem is not None:
            error_msgs.append(f"size mismatch for {prefix[:-1] or '<root>'}: {problem}")
            return
        self._adopt(layer)

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
                w, b, per_channel=per_channel, granularity=granularity, **options
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


class _Recurrent(_DynaqModule):
    _float_type: type[nn.Module] = nn.LSTM
    _kind = "LSTM"

    def __init__(self, layer: Any) -> None:
        super().__init__()
        if not isinstance(layer, self._layer_type()):
            raise TypeError(
                f"layer must be a dynaq.layers.{self._kind}, got {type(layer).__name__} (use "
                f"{type(self).__name__}.from_float for a torch module)"
            )
        self.batch_first = bool(layer.batch_first)
        self._adopt(layer)

    @classmethod
    def _layer_type(cls) -> Any:
        return _layers.LSTM if cls._kind == "LSTM" else _layers.GRU

    @classmethod
    def from_float(
        cls,
        mod: nn.Module,
        *,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
    ) -> Any:
        """Quantize a float ``nn.LSTM`` / ``nn.GRU`` (its configuration and weights). A module
        on the ``meta`` device gives a skeleton of the same shape.

        Parameters
        ----------
        mod : torch.nn.LSTM or torch.nn.GRU
            As the class wraps; ``proj_size`` is not supported.
        per_channel : bool
            int8: per-output-channel weight scales (default) or one scale per weight tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.
        bits, group_size, symmetric, method
            The weights' format, as :func:`dynaq.pack_weight` takes them (8 bits by default);
            a group size must divide ``input_size`` and ``hidden_size``.
        """
        if not isinstance(mod, cls._float_type):
            raise TypeError(
                f"from_float needs a torch.nn.{cls._float_type.__name__}, got {type(mod).__name__}"
            )
        if getattr(mod, "proj_size", 0):
            raise ValueError(f"{cls._float_type.__name__} with proj_size is not supported")
        options = _common.weight_options(bits, group_size, symmetric, method)
        if any(p.device.type == "meta" for p in mod.parameters()):
            out = cls._skeleton(mod, per_channel, granularity, options)
        else:
            params = {k: param_numpy(v, k) for k, v in mod.named_parameters()}
            layer = cls._layer_type()(
                params,
                num_layers=mod.num_layers,
                bidirectional=mod.bidirectional,
                batch_first=mod.batch_first,
                input_size=mod.input_size,
                hidden_size=mod.hidden_size,
                per_channel=per_channel,
                granularity=granularity,
                **options,
            )
            out = cls(layer)
        out.train(mod.training)
        return out

    @classmethod
    def _skeleton(
        cls, mod: Any, per_channel: bool, granularity: str, options: dict[str, Any]
    ) -> Any:
        _check_granularity(granularity)
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.input_size, out.hidden_size = int(mod.input_size), int(mod.hidden_size)
        out.num_layers, out.bidirectional = int(mod.num_layers), bool(mod.bidirectional)
        out.batch_first, out.bias = bool(mod.batch_first), bool(mod.bias)
        out.granularity = granularity
        for name, (n, k) in out._weight_shapes().items():
            try:
                fmt, pc = _weight_format(k, per_channel, options)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            out._format = fmt
            out._set_meta_weight(name, n, k, fmt, pc)
        for sfx in ops.cell_names(out.num_layers, out.bidirectional):
            for b in ("bias_ih", "bias_hh"):
                g = out._gates() * out.hidden_size
                t = torch.empty(g, device="meta") if out.bias else None
                out.register_buffer(b + sfx, t)
        return out

    def _gates(self) -> int:
        return 4 if self._kind == "LSTM" else 3

    def _weight_shapes(self) -> dict[str, tuple[int, int]]:
        g, h = self._gates() * self.hidden_size, self.hidden_size
        dirs = 2 if self.bidirectional else 1
        out = {}
        for sfx in ops.cell_names(self.num_layers, self.bidirectional):
            k = self.input_size if sfx.startswith("_l0") else h * dirs
            out["weight_ih" + sfx], out["weight_hh" + sfx] = (g, k), (g, h)
        return out

    @property
    def _float32(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(
            name
            for sfx in ops.cell_names(self.num_layers, self.bidirectional)
            for name in (f"weight_ih{sfx}_scale", f"weight_hh{sfx}_scale", f"weight_ih{sfx}_min",
                         f"weight_hh{sfx}_min", f"bias_ih{sfx}", f"bias_hh{sfx}")
        )  # fmt: skip

    def _layer_config(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "granularity": self.granularity,
        }

    def _params(self) -> list[torch.Tensor]:
        out = []
        suffixes = ops.BUFFER_SUFFIXES[self._format[0]]
        for sfx in ops.cell_names(self.num_layers, self.bidirectional):
            for w in ("weight_ih", "weight_hh"):
                out += [self._buffers[w + sfx + s] for s in suffixes]
            if self.bias:
                out += [self._buffers["bias_ih" + sfx], self._buffers["bias_hh" + sfx]]
        return out  # type: ignore[return-value]

    def _op_args(self) -> tuple[Any, ...]:
        return (
            self.bias, self.num_layers, self.bidirectional, self.batch_first, self.input_size,
            self.hidden_size, self.granularity, *self._format,
        )  # fmt: skip

    def _layer_tensors(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return tuple(self._params()), self._op_args()

    def _adopt(self, layer: Any) -> None:
        # batch_first belongs to the calling code, not to the weights.
        layer.batch_first = getattr(self, "batch_first", layer.batch_first)
        weights, tensors, config = layer._tensors()
        self.input_size, self.hidden_size = int(layer.input_size), int(layer.hidden_size)
        self.num_layers, self.bidirectional = int(layer.num_layers), bool(layer.bidirectional)
        self.batch_first = bool(layer.batch_first)
        self.bias = layer.cells[0][0].b_ih is not None
        self.granularity = str(layer.granularity)
        self._format = self._uniform_format(weights)
        for name, pw in weights.items():
            self._set_weight(name, pw)
        for sfx in ops.cell_names(self.num_layers, self.bidirectional):
            for b in ("bias_ih", "bias_hh"):
                self._set_tensor(b + sfx, tensors.get(b + sfx))
        ops.recurrent_layer(self._kind, self._params(), *self._op_args(), prepared=layer)

    @property
    def layer(self) -> Any:
        """The numpy :mod:`dynaq.layers` recurrent layer of the buffers (shared; cached)."""
        return ops.recurrent_layer(self._kind, self._params(), *self._op_args())

    @property
    def proj_size(self) -> int:
        """Always 0 (projections are not supported)."""
        return 0

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return self._buffers["weight_ih_l0_scale"].dim() == 1  # type: ignore[union-attr]

    @property
    def bits(self) -> int:
        """Bits per weight value: 8 or 4."""
        return self._format[0]

    @property
    def group_size(self) -> Optional[int]:
        """Input features per scale of 4-bit weights; None per channel, and for int8."""
        return self._format[1] or None

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` / ``nn.GRU`` (the weights are packed)."""

    def _check_input(self, input: Any) -> None:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(
                f"{self._get_name()} does not take a PackedSequence; pass a padded tensor "
                "(torch.nn.utils.rnn.pad_packed_sequence) or keep this module in float "
                "(exclude it in quantize_dynamic)"
            )

    def _run(self, input: Any, states: list[Any], names: list[str]) -> tuple[torch.Tensor, ...]:
        """The layer on ``input`` and the initial ``states`` (none, or ``h_0`` [and ``c_0``]):
        directly when every tensor is a plain float32 one, else through the operator."""
        self._check_input(input)
        if direct(input) and all(direct(s) for s in states):
            arrays = [s.numpy() for s in states]
            hx = (tuple(arrays) if len(arrays) == 2 else arrays[0]) if arrays else None
            out, state = self._direct_layer()(input.numpy(), hx)
            flat = state if isinstance(state, tuple) else (state,)
            return (torch.from_numpy(out), *(torch.from_numpy(s) for s in flat))
        owner, meta = self._get_name(), self._on_meta()
        x = checked(input, "input", owner, meta)
        hx = [checked(s, n, owner, meta) for s, n in zip(states, names)]
        op = torch.ops.dynaq.lstm if self._kind == "LSTM" else torch.ops.dynaq.gru
        outs = ops.no_gradient(op(x, hx, self._params(), *self._op_args()), x, self._kind.lower())
        if input.dtype != torch.float32:
            outs = tuple(o.to(input.dtype) for o in outs)
        return tuple(outs)

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (
            int(layer.input_size),
            int(layer.hidden_size),
            int(layer.num_layers),
            bool(layer.bidirectional),
            layer.cells[0][0].b_ih is not None,
        )
        want = (self.input_size, self.hidden_size, self.num_layers, self.bidirectional, self.bias)
        if have != want:
            names = ("input_size", "hidden_size", "num_layers", "bidirectional", "bias")
            fmt = ", ".join
            return (
                f"the checkpoint holds a dynaq {layer.kind} with "
                f"{fmt(f'{n}={v}' for n, v in zip(names, have))}; this module has "
                f"{fmt(f'{n}={v}' for n, v in zip(names, want))}"
            )
        return None

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        fmt = _format_repr(self._format, self.per_channel)
        return s + f", {fmt}, granularity={self.granularity!r}"


class LSTM(_Recurrent):
    """``nn.LSTM`` with int8 or 4-bit input and hidden projections (wraps
    :class:`dynaq.layers.LSTM`).

    Parameters
    ----------
    layer : dynaq.layers.LSTM
        The numpy layer to wrap; use :meth:`from_float` to quantize an ``nn.LSTM``.

    Notes
    -----
    ``forward(input, hx=None)`` follows ``nn.LSTM``: ``input`` of shape (seq, batch,
    input_size), (batch, seq, input_size) with ``batch_first``, or (seq, input_size) unbatched;
    ``hx = (h_0, c_0)`` of shape (num_layers * directions, batch, hidden_size); returns
    ``(output, (h_n, c_n))`` in the input's dtype. ``PackedSequence`` input raises
    ``TypeError``. It calls the operator ``torch.ops.dynaq.lstm``. Inference only: a backward
    through it raises, and dropout between layers is not applied.
    """

    _float_type = nn.LSTM
    _kind = "LSTM"

    def forward(
        self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        states: list[Any] = []
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(
                    f"{self._get_name()}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}"
                )
            states = list(hx)
        out, h, c = self._run(input, states, ["h_0", "c_0"])
        return out, (h, c)


class GRU(_Recurrent):
    """``nn.GRU`` with int8 or 4-bit input and hidden projections (wraps
    :class:`dynaq.layers.GRU`).

    Parameters
    ----------
    layer : dynaq.layers.GRU
        The numpy layer to wrap; use :meth:`from_float` to quantize an ``nn.GRU``.

    Notes
    -----
    ``forward(input, hx=None)`` follows ``nn.GRU`` and returns ``(output, h_n)``; it calls the
    operator ``torch.ops.dynaq.gru``; otherwise as :class:`LSTM`.
    """

    _float_type = nn.GRU
    _kind = "GRU"

    def forward(
        self, input: torch.Tensor, hx: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self._run(input, [] if hx is None else [hx], ["h_0"])
        return out, h


def safe_globals() -> list[type]:
    """The classes a pickle of a whole quantized model references besides the model's own:
    ``torch.serialization.safe_globals([MyModel, ..., *dynaq.torch.safe_globals()])`` lets
    ``torch.load(path, weights_only=True)`` load it (the modules pickle as plain tensors)."""
    return [Linear, LSTM, GRU]
