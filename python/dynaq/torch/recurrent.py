"""The recurrent dynaq modules: :class:`LSTM` and :class:`GRU` (and their shared base), on
int8 or 4-bit weights, calling the operators ``torch.ops.dynaq.lstm`` / ``.gru``. Their
buffers and state dicts are as :mod:`dynaq.torch.modules` describes (which re-exports both
classes: pickles name them ``dynaq.torch.modules.LSTM`` / ``.GRU``, as before this file).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .. import layers as _layers
from .._dynaq import check_granularity as _check_granularity
from ..layers import _common
from . import ops
from ._bridge import checked, direct, param_numpy
from .modules import _DynaqModule, _format_repr, _weight_format

__all__ = ["GRU", "LSTM"]


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

    # Pickles (torch.save of a whole model) and exported programs name the class by this path,
    # where it was defined before recurrent.py and which re-exports it: saved models still load.
    __module__ = "dynaq.torch.modules"
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

    __module__ = "dynaq.torch.modules"  # as LSTM's
    _float_type = nn.GRU
    _kind = "GRU"

    def forward(
        self, input: torch.Tensor, hx: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self._run(input, [] if hx is None else [hx], ["h_0"])
        return out, h
