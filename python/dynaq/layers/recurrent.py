"""The numpy recurrent layers: ``LSTM``, ``GRU`` and their cells, on PyTorch-format parameters,
with int8 input and hidden projections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from .._dynaq import as_float32 as _as_float32
from .._dynaq import check_granularity as _check_granularity
from .._dynaq import layer_linear
from ._common import (
    F32,
    Serialized,
    Tensors,
    Weights,
    bias_array,
    bool_arg,
    config_value,
    expect_config,
    expect_names,
    finite,
    int_arg,
    pack,
    sigmoid,
    weight_options,
)

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell"]

_GATES = {"LSTM": 4, "GRU": 3}


def _overflow(what: str, step: Optional[int] = None) -> str:
    """How a state that became NaN or infinity is named: with finite inputs, parameters and
    states the gates stay bounded, so only a float32 overflow of a projection gets there."""
    at = "" if step is None else f" at step {step}"
    return f"{what}{at} (float32 overflow: the input or the weights are too large)"


class _CellWeights:
    """The quantized weights of one direction of one layer (or of a cell), checked against each
    other and against the layer around them; ``names`` are the parameters' PyTorch names
    (``weight_ih_l1_reverse``, ...), which every error quotes."""

    def __init__(
        self,
        kind: str,
        params: tuple[Any, Any, Any, Any],
        names: tuple[str, str, str, str],
        *,
        input_size: Optional[int],
        hidden_size: Optional[int],
        per_channel: bool,
        options: Optional[dict[str, Any]] = None,
        sizes_from: str = "",
        inputs_from: str = "",
    ) -> None:
        gates = _GATES[kind]
        a_kind = ("an " if kind == "LSTM" else "a ") + kind
        w_ih, w_hh, b_ih, b_hh = params
        n_ih, n_hh, n_bih, n_bhh = names
        self.w_ih = pack(w_ih, n_ih, per_channel, options)
        self.w_hh = pack(w_hh, n_hh, per_channel, options)
        g_h, inp = self.w_ih.shape
        # weight_hh is (gates * hidden, hidden): when the two weights agree with each other but
        # not with this kind's gate count, say so (e.g. GRU weights given to an LSTM).
        h_cols = self.w_hh.shape[1]
        other = _GATES["GRU" if kind == "LSTM" else "LSTM"]
        if hidden_size is None and h_cols and g_h == self.w_hh.shape[0] == other * h_cols:
            raise ValueError(
                f"{n_ih} has shape {self.w_ih.shape}: {other} gates of hidden_size = {h_cols}, "
                f"but {a_kind} has {gates} gates (wrong gate count)"
            )
        if g_h % gates:
            raise ValueError(
                f"{n_ih} has shape {self.w_ih.shape}: {g_h} rows is not a whole number of the "
                f"{gates} gates of {a_kind} (wrong gate count?)"
            )
        hidden = hidden_size if hidden_size is not None else g_h // gates
        if hidden == 0:  # as PyTorch: a layer of no hidden units is a mistake
            raise ValueError(f"{n_ih} has shape {self.w_ih.shape}: hidden_size must be at least 1")
        why = f" ({sizes_from})" if sizes_from else ""
        if g_h != gates * hidden:
            raise ValueError(
                f"{n_ih} has shape {self.w_ih.shape}; {a_kind} of hidden_size = {hidden}{why} "
                f"needs {gates} gates x {hidden} = {gates * hidden} rows"
            )
        if input_size is not None and inp != input_size:
            raise ValueError(
                f"{n_ih} has shape {self.w_ih.shape}; expected input_size = {input_size} columns"
                + (f" ({inputs_from})" if inputs_from else "")
            )
        if self.w_hh.shape != (gates * hidden, hidden):
            raise ValueError(
                f"{n_hh} has shape {self.w_hh.shape}; expected {(gates * hidden, hidden)} for "
                f"hidden_size = {hidden}{why}"
            )
        self.kind = kind
        self.hidden_size = hidden
        self.input_size = inp
        self.b_ih = bias_array(b_ih, n_bih, gates * hidden)
        self.b_hh = bias_array(b_hh, n_bhh, gates * hidden)
        # LSTM: both biases simply add to the gates, so they ride on the input projection.
        # GRU: b_hn sits inside r * (W_hn h + b_hn), so it stays with the hidden projection.
        if kind == "LSTM" and (self.b_ih is not None or self.b_hh is not None):
            zeros = np.zeros(gates * hidden, dtype=F32)
            b_i = self.b_ih if self.b_ih is not None else zeros
            b_h = self.b_hh if self.b_hh is not None else zeros
            self.in_bias: Optional[np.ndarray] = (b_i + b_h).astype(F32)
            self.hid_bias: Optional[np.ndarray] = None
        else:
            self.in_bias, self.hid_bias = self.b_ih, self.b_hh

    def project_input(self, x: np.ndarray, granularity: str, name: str) -> np.ndarray:
        return layer_linear(x, self.w_ih, self.in_bias, name=name, granularity=granularity)

    def step(
        self,
        xp: np.ndarray,
        h: np.ndarray,
        c: Optional[np.ndarray],
        granularity: str,
        state: str,
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """One time step from the projected input ``xp`` (batch, gates * hidden); ``state``
        names the hidden state ``h`` in errors."""
        hp = layer_linear(h, self.w_hh, self.hid_bias, name=state, granularity=granularity)
        # A projection that overflowed float32 makes NaN below; the caller reports it by name,
        # so numpy's warnings would only repeat it.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._gates(xp, hp, h, c)

    def _gates(
        self, xp: np.ndarray, hp: np.ndarray, h: np.ndarray, c: Optional[np.ndarray]
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        hs = self.hidden_size
        if self.kind == "LSTM":
            assert c is not None
            g = xp + hp
            i = sigmoid(g[:, :hs])
            f = sigmoid(g[:, hs : 2 * hs])
            cand = np.tanh(g[:, 2 * hs : 3 * hs])
            o = sigmoid(g[:, 3 * hs :])
            c_new = f * c + i * cand
            return (o * np.tanh(c_new)).astype(F32, copy=False), c_new.astype(F32, copy=False)
        r = sigmoid(xp[:, :hs] + hp[:, :hs])
        z = sigmoid(xp[:, hs : 2 * hs] + hp[:, hs : 2 * hs])
        n = np.tanh(xp[:, 2 * hs :] + r * hp[:, 2 * hs :])
        return ((F32(1.0) - z) * n + z * h).astype(F32, copy=False), None

    def tensors(self, suffix: str) -> tuple[Weights, Tensors]:
        """Its weights and biases under PyTorch's names (``weight_ih`` + ``suffix``, ...)."""
        weights = {f"weight_ih{suffix}": self.w_ih, f"weight_hh{suffix}": self.w_hh}
        tensors: Tensors = {}
        if self.b_ih is not None:
            tensors[f"bias_ih{suffix}"] = self.b_ih
        if self.b_hh is not None:
            tensors[f"bias_hh{suffix}"] = self.b_hh
        return weights, tensors


class _Recurrent(Serialized):
    """Shared implementation of LSTM and GRU."""

    kind = "LSTM"

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        input_size: Optional[int] = None,
        hidden_size: Optional[int] = None,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
    ) -> None:
        _check_granularity(granularity)
        options = weight_options(bits, group_size, symmetric, method)
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of name -> array, got {type(params)}")
        self.num_layers = int_arg(num_layers, "num_layers", 1)
        self.bidirectional = bool_arg(bidirectional, "bidirectional")
        self.batch_first = bool_arg(batch_first, "batch_first")
        if input_size is not None:
            input_size = int_arg(input_size, "input_size", 0)
        if hidden_size is not None:
            hidden_size = int_arg(hidden_size, "hidden_size", 1)
        if any(str(k).startswith("weight_hr") for k in params):
            raise ValueError(f"{self.kind} with proj_size (weight_hr_*) is not supported")
        self.granularity = granularity
        dirs = 2 if self.bidirectional else 1
        known = set()
        self.cells: list[list[_CellWeights]] = []
        layer_in = input_size
        # Every direction of every layer has the hidden size of the first one given (or
        # hidden_size=), the directions of the first layer have its input size (or
        # input_size=), and each later layer takes the outputs of the one before.
        sizes_from = "as hidden_size= says" if hidden_size is not None else ""
        inputs_from = "as input_size= says" if input_size is not None else ""
        for layer in range(self.num_layers):
            row = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                names = tuple(f"{p}{sfx}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                for nm in names[:2]:
                    if nm not in params:
                        raise ValueError(
                            f"{self.kind} parameters lack {nm!r} (num_layers={self.num_layers}, "
                            f"bidirectional={self.bidirectional}); got {sorted(params)}"
                        )
                known.update(names)
                cell = _CellWeights(
                    self.kind,
                    (
                        params[names[0]],
                        params[names[1]],
                        params.get(names[2]),
                        params.get(names[3]),
                    ),
                    names,  # type: ignore[arg-type]
                    input_size=layer_in,
                    hidden_size=hidden_size,
                    per_channel=per_channel,
                    options=options,
                    sizes_from=sizes_from if hidden_size is not None else "",
                    inputs_from=inputs_from,
                )
                if hidden_size is None:
                    hidden_size, sizes_from = cell.hidden_size, f"the hidden_size of {names[1]}"
                if layer_in is None:
                    layer_in, inputs_from = cell.input_size, f"the input size of {names[0]}"
                row.append(cell)
            layer_in = hidden_size * dirs
            inputs_from = f"the outputs of layer {layer}: " + (
                f"2 directions x hidden_size {hidden_size}" if dirs == 2 else "its hidden_size"
            )
            self.cells.append(row)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"{self.kind} parameters not understood: {unknown}")
        self.hidden_size = self.cells[0][0].hidden_size
        self.input_size = self.cells[0][0].input_size

    @classmethod
    def from_torch(
        cls, module: Any, *, per_channel: bool = True, granularity: str = "row", **weights: Any
    ) -> Any:
        """Build from a ``torch.nn.LSTM`` / ``torch.nn.GRU`` (its configuration and weights);
        ``weights``: ``bits``, ``group_size``, ``symmetric``, ``method`` as the constructor
        takes them."""
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{cls.kind} with proj_size is not supported")
        params = {k: v.detach().cpu().float().numpy() for k, v in module.named_parameters()}
        return cls(
            params,
            num_layers=module.num_layers,
            bidirectional=module.bidirectional,
            batch_first=module.batch_first,
            per_channel=per_channel,
            granularity=granularity,
            **weights,
        )

    def _check_state(self, h: Any, name: str, batch: int, unbatched: bool) -> np.ndarray:
        dirs = 2 if self.bidirectional else 1
        if unbatched:
            a = _as_float32(h, name, (self.num_layers * dirs, self.hidden_size))[:, None, :]
        else:
            a = _as_float32(h, name, (self.num_layers * dirs, batch, self.hidden_size))
        return finite(a, name)

    def __call__(self, input: Any, hx: Any = None) -> tuple[np.ndarray, Any]:
        x = _as_float32(input, "input")
        unbatched = x.ndim == 2
        if x.ndim not in (2, 3):
            raise ValueError(
                f"input must be 3-D (seq, batch, features) or 2-D unbatched, got shape {x.shape}"
            )
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        finite(x, "input")
        seq, batch, feat = x.shape
        if seq == 0:
            raise ValueError(f"input has a sequence length of 0 (shape {np.shape(input)})")
        if feat != self.input_size:
            raise ValueError(
                f"input has {feat} features (shape {np.shape(input)}); this {self.kind} has "
                f"input_size = {self.input_size}"
            )
        dirs = 2 if self.bidirectional else 1
        total = self.num_layers * dirs
        zeros = np.zeros((total, batch, self.hidden_size), dtype=F32)
        if self.kind == "LSTM":
            if hx is None:
                h0, c0 = zeros, zeros
            else:
                if not (isinstance(hx, tuple) and len(hx) == 2):
                    raise TypeError(
                        f"hx for an LSTM must be a tuple (h_0, c_0), got {type(hx).__name__}"
                    )
                h0 = self._check_state(hx[0], "h_0", batch, unbatched)
                c0 = self._check_state(hx[1], "c_0", batch, unbatched)
        else:
            h0 = zeros if hx is None else self._check_state(hx, "h_0", batch, unbatched)
            c0 = None
        h_n = np.empty_like(zeros)
        c_n = np.empty_like(zeros) if self.kind == "LSTM" else None
        layer_in = np.ascontiguousarray(x)
        for layer, row in enumerate(self.cells):
            outs = []
            for d, cell in enumerate(row):
                idx = layer * dirs + d
                flat = layer_in.reshape(seq * batch, layer_in.shape[2])
                where = f"layer {layer}" + (" (reverse)" if d else "")
                xp = cell.project_input(flat, self.granularity, "input" if layer == 0 else where)
                xp = xp.reshape(seq, batch, cell.w_ih.out_features)
                h = np.ascontiguousarray(h0[idx])
                c = np.ascontiguousarray(c0[idx]) if c0 is not None else None
                out = np.empty((seq, batch, self.hidden_size), dtype=F32)
                steps = range(seq - 1, -1, -1) if d else range(seq)
                # A state that overflowed is refused by the next step's projection, by name;
                # the cell state (which only reaches h through tanh) and the last step's hidden
                # state are checked here, so that an overflow raises whatever the length.
                for t in steps:
                    # (h came from the step before: t + 1 when running in reverse)
                    state = _overflow(f"the hidden state of {where}", t + 1 if d else t - 1)
                    h, c = cell.step(xp[t], h, c, self.granularity, state)
                    if c is not None:
                        finite(c, _overflow(f"the cell state of {where}", t))
                    out[t] = h
                finite(h, _overflow(f"the hidden state of {where}", steps[-1]))
                h_n[idx] = h
                if c_n is not None and c is not None:
                    c_n[idx] = c
                outs.append(out)
            layer_in = np.concatenate(outs, axis=2) if dirs == 2 else outs[0]
        output = layer_in
        if unbatched:
            output = output[:, 0, :]
            h_n = h_n[:, 0, :]
            c_n = c_n[:, 0, :] if c_n is not None else None
        elif self.batch_first:
            output = output.transpose(1, 0, 2)
        output = np.ascontiguousarray(output)
        if self.kind == "LSTM":
            return output, (h_n, c_n)
        return output, h_n

    forward = __call__

    def _tensors(self) -> tuple[Weights, Tensors, dict[str, Any]]:
        weights: Weights = {}
        tensors: Tensors = {}
        for layer, row in enumerate(self.cells):
            for d, cell in enumerate(row):
                w, t = cell.tensors(f"_l{layer}{'_reverse' if d else ''}")
                weights.update(w)
                tensors.update(t)
        config = {
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "batch_first": self.batch_first,
            "granularity": self.granularity,
        }
        return weights, tensors, config

    @classmethod
    def _from_tensors(cls, weights: Weights, tensors: Tensors, config: dict[str, Any]) -> Any:
        expect_config(config, {"num_layers", "bidirectional", "batch_first", "granularity"})
        return cls(
            {**weights, **tensors},
            num_layers=config_value(config, "num_layers", int),
            bidirectional=config_value(config, "bidirectional", bool),
            batch_first=config_value(config, "batch_first", bool),
            granularity=config_value(config, "granularity", str),
        )

    def __repr__(self) -> str:
        return (
            f"{self.kind}(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"batch_first={self.batch_first}, per_channel={self.cells[0][0].w_ih.per_channel}, "
            f"granularity={self.granularity!r})"
        )


class LSTM(_Recurrent):
    """Multi-layer, optionally bidirectional LSTM with int8 input and hidden projections.

    Parameters
    ----------
    params : mapping of str -> array
        PyTorch names and shapes: ``weight_ih_l{k}`` (4*hidden, in), ``weight_hh_l{k}``
        (4*hidden, hidden), optional ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4*hidden,), plus the
        ``_reverse`` variants when bidirectional. Gate order i, f, g, o.
    num_layers, bidirectional, batch_first : as in ``torch.nn.LSTM``
    input_size, hidden_size : int, optional
        Checked against the weights when given.
    per_channel : bool
        Per-output-channel weight scales (default).
    granularity : {"row", "tensor"}
        Activation scales per row (default) or per call.
    bits, group_size, symmetric, method
        The weights' format, as :func:`dynaq.pack_weight` takes them (``bits=4``: 4-bit
        weights in groups of ``group_size`` input features, 32 by default; ``None``: per
        channel).

    Calling it on ``input`` of shape (seq, batch, input_size) (or (batch, seq, input_size) with
    ``batch_first``, or (seq, input_size) unbatched) with optional ``hx = (h_0, c_0)`` of shape
    (num_layers * directions, batch, hidden_size) returns ``(output, (h_n, c_n))`` like PyTorch.
    Dropout between layers is a training feature and is not applied.
    """

    kind = "LSTM"
    _kind = "LSTM"


class GRU(_Recurrent):
    """Multi-layer, optionally bidirectional GRU with int8 input and hidden projections.

    Same parameters as :class:`LSTM`, with 3 gates (r, z, n) instead of 4; calling it returns
    ``(output, h_n)`` like ``torch.nn.GRU``.
    """

    kind = "GRU"
    _kind = "GRU"


class _Cell(Serialized):
    kind = "LSTM"

    def __init__(
        self,
        weight_ih: Any,
        weight_hh: Any,
        bias_ih: Any = None,
        bias_hh: Any = None,
        *,
        per_channel: bool = True,
        granularity: str = "row",
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
    ) -> None:
        _check_granularity(granularity)
        self.granularity = granularity
        self.cell = _CellWeights(
            self.kind,
            (weight_ih, weight_hh, bias_ih, bias_hh),
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
            input_size=None,
            hidden_size=None,
            per_channel=per_channel,
            options=weight_options(bits, group_size, symmetric, method),
        )

    @classmethod
    def from_torch(
        cls, module: Any, *, per_channel: bool = True, granularity: str = "row", **weights: Any
    ) -> Any:
        """Build from a ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell``; ``weights`` as the
        constructor takes them (``bits``, ``group_size``, ``symmetric``, ``method``)."""
        p = {k: v.detach().cpu().float().numpy() for k, v in module.named_parameters()}
        return cls(
            p["weight_ih"],
            p["weight_hh"],
            p.get("bias_ih"),
            p.get("bias_hh"),
            per_channel=per_channel,
            granularity=granularity,
            **weights,
        )

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def _input(self, x: Any) -> tuple[np.ndarray, bool]:
        a = _as_float32(x, "input")
        if a.ndim not in (1, 2) or a.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have shape (batch, {self.input_size}) or ({self.input_size},), "
                f"got {a.shape}"
            )
        finite(a, "input")
        return (a[None, :], True) if a.ndim == 1 else (a, False)

    def _state(self, h: Any, name: str, batch: int, unbatched: bool) -> np.ndarray:
        if h is None:
            return np.zeros((batch, self.hidden_size), dtype=F32)
        want = (self.hidden_size,) if unbatched else (batch, self.hidden_size)
        a = finite(_as_float32(h, name, want), name)
        return np.ascontiguousarray(a[None, :] if unbatched else a)

    def _step(
        self, x: np.ndarray, h: np.ndarray, c: Optional[np.ndarray]
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        xp = self.cell.project_input(x, self.granularity, "input")
        h2, c2 = self.cell.step(xp, h, c, self.granularity, "the hidden state")
        finite(h2, _overflow("the new hidden state"))
        if c2 is not None:
            finite(c2, _overflow("the new cell state"))
        return h2, c2

    def _tensors(self) -> tuple[Weights, Tensors, dict[str, Any]]:
        weights, tensors = self.cell.tensors("")
        return weights, tensors, {"granularity": self.granularity}

    @classmethod
    def _from_tensors(cls, weights: Weights, tensors: Tensors, config: dict[str, Any]) -> Any:
        expect_names("weights", weights, {"weight_ih", "weight_hh"}, {"weight_ih", "weight_hh"})
        expect_names("tensors", tensors, {"bias_ih", "bias_hh"})
        expect_config(config, {"granularity"})
        return cls(
            weights["weight_ih"],
            weights["weight_hh"],
            tensors.get("bias_ih"),
            tensors.get("bias_hh"),
            granularity=config_value(config, "granularity", str),
        )

    def __repr__(self) -> str:
        return (
            f"{self.kind}Cell(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"per_channel={self.cell.w_ih.per_channel}, granularity={self.granularity!r})"
        )


class LSTMCell(_Cell):
    """One LSTM step: ``h', c' = cell(x, (h, c))``, PyTorch's ``LSTMCell`` in int8.

    Parameters: ``weight_ih`` (4*hidden, input), ``weight_hh`` (4*hidden, hidden), optional
    ``bias_ih``, ``bias_hh`` (4*hidden,), gate order i, f, g, o.
    """

    kind = "LSTM"
    _kind = "LSTMCell"

    def __call__(self, input: Any, hx: Any = None) -> tuple[np.ndarray, np.ndarray]:
        x, unbatched = self._input(input)
        if hx is None:
            h, c = None, None
        elif isinstance(hx, tuple) and len(hx) == 2:
            h, c = hx
            if h is None or c is None:  # as PyTorch: both or neither
                raise TypeError("hx for an LSTMCell must be (h_0, c_0), both arrays, or None")
        else:
            raise TypeError(
                f"hx for an LSTMCell must be a tuple (h_0, c_0), got {type(hx).__name__}"
            )
        h = self._state(h, "h_0", x.shape[0], unbatched)
        c = self._state(c, "c_0", x.shape[0], unbatched)
        h2, c2 = self._step(x, h, c)
        assert c2 is not None
        return (h2[0], c2[0]) if unbatched else (h2, c2)


class GRUCell(_Cell):
    """One GRU step: ``h' = cell(x, h)``, PyTorch's ``GRUCell`` in int8 (gate order r, z, n)."""

    kind = "GRU"
    _kind = "GRUCell"

    def __call__(self, input: Any, hx: Any = None) -> np.ndarray:
        x, unbatched = self._input(input)
        h = self._state(hx, "hx", x.shape[0], unbatched)
        h2, _ = self._step(x, h, None)
        return h2[0] if unbatched else h2
