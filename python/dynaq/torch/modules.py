"""The dynaq modules: ``Linear``, ``LSTM`` and ``GRU`` on dynaq's numpy layers, with their
state dicts in dynaq's one on-disk form (plain tensors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .. import _dynaq, _legacy
from .. import layers as _layers
from .._dynaq import check_granularity as _check_granularity
from ._bridge import from_numpy, param_numpy, to_numpy

__all__ = ["GRU", "LSTM", "Linear"]

# The key of a module's options in the state dict's per-module metadata.
_CONFIG_KEY = "dynaq"


class _DynaqModule(nn.Module):
    """State-dict plumbing shared by the dynaq modules: the layer's weights (values and scales)
    and other tensors as ordinary tensors (dynaq's one on-disk form), and the version-1 form
    (one ``uint8`` tensor per module) read for compatibility."""

    _version = _dynaq.FORMAT_VERSION
    _layer: Any

    def _check_loaded(self, layer: Any) -> Optional[str]:  # pragma: no cover - overridden
        """None when ``layer`` fits this module, else the reason it does not."""
        raise NotImplementedError

    def _adopt(self, layer: Any) -> None:
        self._layer = layer

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        weights, tensors, config = self._layer._tensors()
        for name, pw in weights.items():
            for key, value in _dynaq.weight_tensors(pw, name).items():
                destination[prefix + key] = torch.from_numpy(value)
        for key, value in tensors.items():
            destination[prefix + key] = torch.from_numpy(np.array(value))
        # The layer's options (granularity, ...) are not tensors: they go where PyTorch keeps a
        # module's version, the state dict's per-module metadata (kept by torch.save/load).
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})[_CONFIG_KEY] = dict(config)

    def _state_names(self) -> tuple[set[str], set[str]]:
        """The names of this module's weights, and every name its state dict may hold (the
        tensors that store the weights, biases, calibrated input scales)."""
        weights, _, _ = self._layer._tensors()
        parts = {k for w in weights for k in (w, w + _dynaq.SCALE_SUFFIX)}
        optional = {w.replace("weight", "bias", 1) for w in weights} | set(self._optional)
        return set(weights), parts | optional

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
        where = f"{self._get_name()} at {prefix[:-1] or '<root>'!r}"
        if prefix + _legacy.STATE_PACKED in state_dict:
            layer = _legacy.layer_from_state_dict(
                state_dict, prefix, type(self._layer), strict, missing_keys, unexpected_keys,
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
        parts = {k for w in weight_names for k in (w, w + _dynaq.SCALE_SUFFIX)}
        mine = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        if strict:
            unexpected_keys.extend(k for n, k in mine.items() if n not in known)
        missing = [prefix + n for n in sorted(parts) if n not in mine]
        if missing:
            if strict:
                missing_keys.extend(missing)
            return
        if local_metadata is not None and not isinstance(local_metadata, Mapping):
            error_msgs.append(f"{where}: its state-dict metadata must be a dict")
            return
        config = dict(self._layer._tensors()[2])
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
                found = {prefix + n: arrays[n] for n in (w, w + _dynaq.SCALE_SUFFIX)}
                weights[w] = _dynaq.weight_from_tensors(found, key)
            except (TypeError, ValueError) as e:
                text = str(e)
                error_msgs.append(f"{where}: {text if text.startswith(key) else f'{key}: {text}'}")
                return
        try:
            tensors = {n: a for n, a in arrays.items() if n not in parts}
            layer = type(self._layer)._from_tensors(weights, tensors, config)
        except (TypeError, ValueError) as e:
            error_msgs.append(f"{where}: {e}")
            return
        problem = self._check_loaded(layer)
        if problem is not None:
            error_msgs.append(f"size mismatch for {prefix[:-1] or '<root>'}: {problem}")
            return
        self._adopt(layer)

    #: State-dict entries a module may have or not, besides its weights' biases (Linear's
    #: calibrated input scale).
    _optional: tuple[str, ...] = ()

    def _get_name(self) -> str:
        return "Dynaq" + type(self).__name__


class Linear(_DynaqModule):
    """``nn.Linear`` on int8 weights with dynamically quantized activations (dynaq).

    Parameters
    ----------
    in_features, out_features : int
        The layer's shape; the weight starts at zero (load a state dict into it, or build the
        layer with :meth:`from_float` / :meth:`from_layer`).
    bias : bool
        Whether the layer adds a bias.
    per_channel : bool
        One weight scale per output channel (default) or one per tensor.
    granularity : {"row", "tensor"}
        Activation scales per row (default: a row's result never depends on the rest of the
        batch) or one per call.

    Notes
    -----
    Called on a CPU tensor of shape (..., in_features), it returns (..., out_features) in the
    input's dtype. float32 passes through numpy without a copy; float64, float16 and bfloat16
    are computed in float32 and converted back; other dtypes raise ``TypeError``, tensors on
    other devices ``ValueError``. Inference only: no gradient flows through the layer.
    """

    _optional = ("input_scale", "input_zero_point")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        per_channel: bool = True,
        granularity: str = "row",
    ) -> None:
        super().__init__()
        _check_granularity(granularity)
        w = np.zeros((int(out_features), int(in_features)), dtype=np.float32)
        b = np.zeros(int(out_features), dtype=np.float32) if bias else None
        self._layer = _layers.Linear.from_float(
            w, b, per_channel=per_channel, granularity=granularity
        )

    @classmethod
    def from_layer(cls, layer: _layers.Linear) -> Linear:
        """Wrap a numpy :class:`dynaq.layers.Linear` (shared, not copied)."""
        if not isinstance(layer, _layers.Linear):
            raise TypeError(f"layer must be a dynaq.layers.Linear, got {type(layer).__name__}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._layer = layer
        return mod

    @classmethod
    def from_float(
        cls, mod: nn.Linear, *, per_channel: bool = True, granularity: str = "row"
    ) -> Linear:
        """Quantize the weight of a float ``nn.Linear`` (any float dtype, any device).

        Parameters
        ----------
        mod : torch.nn.Linear
        per_channel : bool
            Per-output-channel weight scales (default) or one scale for the tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.

        Returns
        -------
        Linear
        """
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"from_float needs a torch.nn.Linear, got {type(mod).__name__}")
        w = param_numpy(mod.weight, "weight")
        b = None if mod.bias is None else param_numpy(mod.bias, "bias")
        layer = _layers.Linear.from_float(w, b, per_channel=per_channel, granularity=granularity)
        out = cls.from_layer(layer)
        out.train(mod.training)
        return out

    @property
    def layer(self) -> _layers.Linear:
        """The underlying numpy :class:`dynaq.layers.Linear`."""
        return self._layer

    @property
    def in_features(self) -> int:
        """Size of each input row."""
        return self._layer.in_features

    @property
    def out_features(self) -> int:
        """Size of each output row."""
        return self._layer.out_features

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return bool(self._layer.weight.per_channel)

    @property
    def granularity(self) -> str:
        """Activation scales per ``"row"`` or per ``"tensor"`` (one per call)."""
        return str(self._layer.granularity)

    def weight(self) -> torch.Tensor:
        """The dequantized weight (out_features, in_features), float32 (a new tensor)."""
        return torch.from_numpy(np.ascontiguousarray(self._layer.weight.dequantize()))

    def weight_int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight values (out_features, in_features) and their float32 scales."""
        values, scales = self._layer.weight.unpack()
        return (
            torch.from_numpy(np.array(values, dtype=np.int8)),
            torch.from_numpy(np.array(scales, dtype=np.float32)),
        )

    def bias(self) -> Optional[torch.Tensor]:
        """The float32 bias (out_features,) as a new tensor, or None."""
        b = self._layer.bias
        return None if b is None else torch.from_numpy(np.array(b, dtype=np.float32))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = to_numpy(input, "input", self._get_name())
        return from_numpy(self._layer._forward(x, name="input"), input.dtype)

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (layer.out_features, layer.in_features, layer.bias is not None)
        want = (self.out_features, self.in_features, self._layer.bias is not None)
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
            f"bias={self._layer.bias is not None}, dtype=int8, per_channel={self.per_channel}, "
            f"granularity={self.granularity!r}"
        )


class _Recurrent(_DynaqModule):
    _float_type: type[nn.Module] = nn.LSTM
    _layer_type: Any = _layers.LSTM

    def __init__(self, layer: Any) -> None:
        super().__init__()
        if not isinstance(layer, self._layer_type):
            raise TypeError(
                f"layer must be a dynaq.layers.{self._layer_type.__name__}, got "
                f"{type(layer).__name__} (use {type(self).__name__}.from_float for a torch module)"
            )
        self._layer = layer

    @classmethod
    def from_float(
        cls, mod: nn.Module, *, per_channel: bool = True, granularity: str = "row"
    ) -> Any:
        """Quantize a float ``nn.LSTM`` / ``nn.GRU`` (its configuration and weights).

        Parameters
        ----------
        mod : torch.nn.LSTM or torch.nn.GRU
            As the class wraps; ``proj_size`` is not supported.
        per_channel : bool
            Per-output-channel weight scales (default) or one scale per weight tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.
        """
        if not isinstance(mod, cls._float_type):
            raise TypeError(
                f"from_float needs a torch.nn.{cls._float_type.__name__}, got {type(mod).__name__}"
            )
        if getattr(mod, "proj_size", 0):
            raise ValueError(f"{cls._float_type.__name__} with proj_size is not supported")
        params = {k: param_numpy(v, k) for k, v in mod.named_parameters()}
        layer = cls._layer_type(
            params,
            num_layers=mod.num_layers,
            bidirectional=mod.bidirectional,
            batch_first=mod.batch_first,
            input_size=mod.input_size,
            hidden_size=mod.hidden_size,
            per_channel=per_channel,
            granularity=granularity,
        )
        out = cls(layer)
        out.train(mod.training)
        return out

    @property
    def layer(self) -> Any:
        """The underlying numpy :mod:`dynaq.layers` recurrent layer."""
        return self._layer

    @property
    def input_size(self) -> int:
        """Features of each input step."""
        return int(self._layer.input_size)

    @property
    def hidden_size(self) -> int:
        """Features of the hidden state."""
        return int(self._layer.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of stacked layers."""
        return int(self._layer.num_layers)

    @property
    def bidirectional(self) -> bool:
        """Whether each layer runs both directions."""
        return bool(self._layer.bidirectional)

    @property
    def batch_first(self) -> bool:
        """Whether input and output are (batch, seq, features)."""
        return bool(self._layer.batch_first)

    @property
    def bias(self) -> bool:
        """Whether the layer has biases."""
        return self._layer.cells[0][0].b_ih is not None

    @property
    def proj_size(self) -> int:
        """Always 0 (projections are not supported)."""
        return 0

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return bool(self._layer.cells[0][0].w_ih.per_channel)

    @property
    def granularity(self) -> str:
        """Activation scales per ``"row"`` or per ``"tensor"`` (one per call)."""
        return str(self._layer.granularity)

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` / ``nn.GRU`` (the weights are packed)."""

    def _input(self, input: Any) -> np.ndarray:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(
                f"{self._get_name()} does not take a PackedSequence; pass a padded tensor "
                "(torch.nn.utils.rnn.pad_packed_sequence) or keep this module in float "
                "(exclude it in quantize_dynamic)"
            )
        return to_numpy(input, "input", self._get_name())

    def _config(self) -> tuple[Any, ...]:
        return (
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bidirectional,
            self.bias,
        )

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (
            int(layer.input_size),
            int(layer.hidden_size),
            int(layer.num_layers),
            bool(layer.bidirectional),
            layer.cells[0][0].b_ih is not None,
        )
        want = self._config()
        if have != want:
            names = ("input_size", "hidden_size", "num_layers", "bidirectional", "bias")
            fmt = ", ".join
            return (
                f"the checkpoint holds a dynaq {layer.kind} with "
                f"{fmt(f'{n}={v}' for n, v in zip(names, have))}; this module has "
                f"{fmt(f'{n}={v}' for n, v in zip(names, want))}"
            )
        return None

    def _adopt(self, layer: Any) -> None:
        # batch_first belongs to the calling code, not to the weights.
        layer.batch_first = self.batch_first
        self._layer = layer

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", dtype=int8, per_channel={self.per_channel}, granularity={self.granularity!r}"


class LSTM(_Recurrent):
    """``nn.LSTM`` with int8 input and hidden projections (wraps :class:`dynaq.layers.LSTM`).

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
    ``TypeError``. Inference only: no gradient flows, and dropout between layers is not applied.
    """

    _float_type = nn.LSTM
    _layer_type = _layers.LSTM

    def forward(
        self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        name = self._get_name()
        x = self._input(input)
        state = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            state = (to_numpy(hx[0], "h_0", name), to_numpy(hx[1], "c_0", name))
        out, (h, c) = self._layer(x, state)
        dt = input.dtype
        return from_numpy(out, dt), (from_numpy(h, dt), from_numpy(c, dt))


class GRU(_Recurrent):
    """``nn.GRU`` with int8 input and hidden projections (wraps :class:`dynaq.layers.GRU`).

    Parameters
    ----------
    layer : dynaq.layers.GRU
        The numpy layer to wrap; use :meth:`from_float` to quantize an ``nn.GRU``.

    Notes
    -----
    ``forward(input, hx=None)`` follows ``nn.GRU`` and returns ``(output, h_n)``; otherwise as
    :class:`LSTM`.
    """

    _float_type = nn.GRU
    _layer_type = _layers.GRU

    def forward(
        self, input: torch.Tensor, hx: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._input(input)
        state = None if hx is None else to_numpy(hx, "h_0", self._get_name())
        out, h = self._layer(x, state)
        return from_numpy(out, input.dtype), from_numpy(h, input.dtype)
