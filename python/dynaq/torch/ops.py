"""dynaq's operations as PyTorch operators: ``torch.ops.dynaq.linear`` (int8 weights),
``.linear4`` (4-bit weights), ``.lstm`` and ``.gru`` (either).

Registered with ``torch.library`` under the namespace ``dynaq``, with a CPU implementation that
calls dynaq's kernels and a fake (meta) implementation for shape inference, so that
``torch.compile`` (``fullgraph=True`` included), ``torch.export`` and ``torch.jit.trace`` record
them as operators instead of tracing into numpy. The TorchScript ONNX exporter writes each as a
node of the custom domain ``dynaq`` (``dynaq::Linear``, ``dynaq::Linear4``, ``dynaq::LSTM``,
``dynaq::GRU``) with its inputs. They are inference only: their outputs carry no autograd
history, and the modules make a backward through them raise (:func:`no_gradient`).

Weights travel as tensors in the layout the kernels read (the same on every CPU), in the order of
:data:`BUFFER_SUFFIXES`: an int8 weight as ``weight_panels`` (:attr:`dynaq.PackedWeight.panels`)
and ``weight_scale``; a 4-bit one as ``weight_panels`` (uint8, two levels per byte), its group
codes ``weight_gscale_panels`` and ``weight_gmin_panels`` (:attr:`~dynaq.PackedWeight.code_panels`)
and its row factors ``weight_scale`` and ``weight_min`` (:attr:`~dynaq.PackedWeight.row_factors`).
The native
weight built from them is cached while those tensors live unchanged (:class:`Prepared`), so a
module's buffers are packed once; the modules seed the cache with the weights they already
hold, so their panels are never copied.

The package splits it: this file defines and registers the operators (and :class:`NoGradient`);
``_prepared.py`` holds the tensors' layout and the cache of native layers (its names are
re-exported here: ``ops.linear_layer``, ``ops.PREPARED``, ...); ``_onnx.py`` the ONNX symbolics,
registered when this file is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import layers as _layers
from ._prepared import (
    BUFFER_SUFFIXES,
    PREPARED,
    Prepared,
    linear4_layer,
    linear_layer,
    recurrent_layer,
    weight_buffers,
)

# Used by the modules as ``ops.<name>``: re-exported (``name as name``).
from ._prepared import INT8 as INT8
from ._prepared import Format as Format
from ._prepared import cell_names as cell_names
from ._prepared import meta_buffers as meta_buffers
from ._prepared import unchanged as unchanged
from ._prepared import versions as versions
from ._prepared import weight_format as weight_format

__all__ = [
    "BUFFER_SUFFIXES",
    "PREPARED",
    "Prepared",
    "linear4_layer",
    "linear_layer",
    "recurrent_layer",
    "weight_buffers",
]


# --- the operators ------------------------------------------------------------------------------

_LIB = torch.library.Library("dynaq", "DEF")
_LIB.define(
    "linear(Tensor input, Tensor weight_panels, Tensor weight_scale, Tensor? bias, "
    "int out_features, int in_features, str granularity='row', Tensor? input_scale=None, "
    "Tensor? input_zero_point=None) -> Tensor"
)
_LIB.define(
    "linear4(Tensor input, Tensor weight_panels, Tensor weight_gscale_panels, "
    "Tensor weight_gmin_panels, Tensor weight_scale, Tensor weight_min, Tensor? bias, "
    "int out_features, int in_features, int group_size, bool symmetric, str granularity='row', "
    "Tensor? input_scale=None, Tensor? input_zero_point=None) -> Tensor"
)
_RNN_ARGS = (
    "Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, "
    "bool bidirectional, bool batch_first, int input_size, int hidden_size, str granularity, "
    "int bits=8, int group_size=0, bool symmetric=True"
)
_LIB.define(f"lstm({_RNN_ARGS}) -> (Tensor, Tensor, Tensor)")
_LIB.define(f"gru({_RNN_ARGS}) -> (Tensor, Tensor)")


def _input(x: torch.Tensor, op: str) -> np.ndarray:
    if x.dtype != torch.float32:
        raise TypeError(f"dynaq.{op}: input must be float32, got {x.dtype}")
    return (x.detach() if x.requires_grad else x).numpy()


def _linear_out(layer: _layers.Linear, input: torch.Tensor, op: str) -> torch.Tensor:
    if input.dtype != torch.float32:
        raise TypeError(f"dynaq.{op}: input must be float32, got {input.dtype}")
    x = input.detach() if input.requires_grad else input
    return torch.from_numpy(layer._forward(x.numpy(), name="input"))


def _linear_cpu(
    input: torch.Tensor,
    weight_panels: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    granularity: str = "row",
    input_scale: Optional[torch.Tensor] = None,
    input_zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    layer = linear_layer(
        weight_panels, weight_scale, bias, out_features, in_features, granularity, input_scale,
        input_zero_point,
    )  # fmt: skip
    return _linear_out(layer, input, "linear")


def _linear4_cpu(
    input: torch.Tensor,
    weight_panels: torch.Tensor,
    weight_gscale_panels: torch.Tensor,
    weight_gmin_panels: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_min: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    group_size: int,
    symmetric: bool,
    granularity: str = "row",
    input_scale: Optional[torch.Tensor] = None,
    input_zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    layer = linear4_layer(
        weight_panels, weight_gscale_panels, weight_gmin_panels, weight_scale, weight_min, bias,
        out_features, in_features, group_size, symmetric, granularity, input_scale,
        input_zero_point,
    )  # fmt: skip
    return _linear_out(layer, input, "linear4")


def _linear_shape(input: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The fake output of both linear operators."""
    torch._check(input.dtype == torch.float32, lambda: f"input must be float32, got {input.dtype}")
    torch._check(input.dim() >= 1, lambda: "input must have at least 1 dimension")
    torch._check(
        input.shape[-1] == in_features,
        lambda: (
            f"input has shape {tuple(input.shape)}: its last axis must equal in_features = "
            f"{in_features}"
        ),
    )
    return input.new_empty((*input.shape[:-1], out_features))


def _linear_fake(
    input: torch.Tensor,
    weight_panels: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    *_: Any,
) -> torch.Tensor:
    """The fake kernel of ``linear``: it names the arguments it reads, the rest fall into ``*_``
    (the dispatcher passes them all by position; ``register_fake`` reads no signature)."""
    return _linear_shape(input, out_features, in_features)


def _linear4_fake(
    input: torch.Tensor,
    weight_panels: torch.Tensor,
    weight_gscale_panels: torch.Tensor,
    weight_gmin_panels: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_min: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    *_: Any,
) -> torch.Tensor:
    """The fake kernel of ``linear4`` (as :func:`_linear_fake`)."""
    return _linear_shape(input, out_features, in_features)


def _rnn_state(hx: Sequence[torch.Tensor], kind: str) -> Any:
    if not hx:
        return None
    states = tuple(_input(h, kind.lower()) for h in hx)
    return states if kind == "LSTM" else states[0]


def _rnn_cpu(kind: str) -> Callable[..., Any]:
    def impl(
        input: torch.Tensor,
        hx: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
        has_biases: bool,
        num_layers: int,
        bidirectional: bool,
        batch_first: bool,
        input_size: int,
        hidden_size: int,
        granularity: str,
        bits: int = 8,
        group_size: int = 0,
        symmetric: bool = True,
    ) -> Any:
        layer = recurrent_layer(
            kind, params, has_biases, num_layers, bidirectional, batch_first, input_size,
            hidden_size, granularity, bits, group_size, symmetric,
        )  # fmt: skip
        out, state = layer(_input(input, kind.lower()), _rnn_state(hx, kind))
        if kind == "LSTM":
            return torch.from_numpy(out), torch.from_numpy(state[0]), torch.from_numpy(state[1])
        return torch.from_numpy(out), torch.from_numpy(state)

    return impl


def _rnn_fake(kind: str) -> Callable[..., Any]:
    def impl(
        input: torch.Tensor,
        hx: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
        has_biases: bool,
        num_layers: int,
        bidirectional: bool,
        batch_first: bool,
        input_size: int,
        hidden_size: int,
        granularity: str,
        bits: int = 8,
        group_size: int = 0,
        symmetric: bool = True,
    ) -> Any:
        torch._check(input.dtype == torch.float32, lambda: "input must be float32")
        torch._check(input.dim() in (2, 3), lambda: "input must be 2-D or 3-D")
        torch._check(input.shape[-1] == input_size, lambda: f"input_size is {input_size}")
        dirs = 2 if bidirectional else 1
        if input.dim() == 2:
            out = input.new_empty((input.shape[0], dirs * hidden_size))
            h = input.new_empty((num_layers * dirs, hidden_size))
        else:
            batch = input.shape[0] if batch_first else input.shape[1]
            out = input.new_empty((*input.shape[:-1], dirs * hidden_size))
            h = input.new_empty((num_layers * dirs, batch, hidden_size))
        return (out, h, torch.empty_like(h)) if kind == "LSTM" else (out, h)

    return impl


class NoGradient(torch.autograd.Function):
    """Attaches to an operator's output a backward that raises: the operators' autograd key
    falls through (no per-call cost), so the modules add this node when the input needs a
    gradient, and a backward says why there is none instead of leaving earlier layers
    silently without one."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, input: torch.Tensor, op: str) -> torch.Tensor:
        ctx.op = op
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"dynaq.{ctx.op} has no gradient: dynaq's modules are for inference (their int8 "
            "weights are not trained). Keep the layers you train in float (exclude them in "
            "quantize_dynamic)."
        )


def no_gradient(out: Any, input: torch.Tensor, op: str) -> Any:
    """``out`` (a tensor or a tuple of them), with :class:`NoGradient` attached when ``input``
    needs a gradient."""
    if not (input.requires_grad and torch.is_grad_enabled()):
        return out
    if isinstance(out, torch.Tensor):
        return NoGradient.apply(out, input, op)
    return tuple(NoGradient.apply(o, input, op) for o in out)


_LIB.impl("linear", _linear_cpu, "CPU")
_LIB.impl("linear", torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("dynaq::linear", _linear_fake, lib=_LIB)
_LIB.impl("linear4", _linear4_cpu, "CPU")
_LIB.impl("linear4", torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("dynaq::linear4", _linear4_fake, lib=_LIB)
for _kind in ("LSTM", "GRU"):
    _name = _kind.lower()
    _LIB.impl(_name, _rnn_cpu(_kind), "CPU")
    _LIB.impl(_name, torch.library.fallthrough_kernel, "Autograd")
    torch.library.register_fake(f"dynaq::{_name}", _rnn_fake(_kind), lib=_LIB)


# The ONNX symbolics (the TorchScript exporter), registered on import.
from . import _onnx  # noqa: E402, F401
