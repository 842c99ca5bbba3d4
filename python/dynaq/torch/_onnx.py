"""The ONNX symbolics of dynaq's operators, for the TorchScript exporter: each operator becomes a
node of the custom domain ``dynaq`` (``dynaq::Linear``, ``dynaq::Linear4``, ``dynaq::LSTM``,
``dynaq::GRU``) with its inputs. Registered on import (by :mod:`dynaq.torch.ops`); a torch
without the TorchScript exporter registers nothing.
"""

from __future__ import annotations

from typing import Any, Callable


def _register_onnx() -> None:
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "v", "i", "i", "s", "v", "v")
    def linear(g, input, panels, scale, bias, out_features, in_features, granularity, s, zp):  # type: ignore[no-untyped-def]
        inputs = [input, panels, scale] + [t for t in (bias, s, zp) if not _is_none(t)]
        return g.op(
            "dynaq::Linear",
            *inputs,
            out_features_i=out_features,
            in_features_i=in_features,
            granularity_s=granularity,
            has_bias_i=int(not _is_none(bias)),
            static_i=int(not _is_none(s)),
            layout_s="K4N16",
        )

    @parse_args("v", "v", "v", "v", "v", "v", "v", "i", "i", "i", "b", "s", "v", "v")
    def linear4(g, input, panels, gscale, gmin, scale, minimum, bias, out_features, in_features,  # type: ignore[no-untyped-def]
                group_size, symmetric, granularity, s, zp):  # fmt: skip
        weight = [panels, gscale, gmin, scale, minimum]
        inputs = [input, *weight] + [t for t in (bias, s, zp) if not _is_none(t)]
        return g.op(
            "dynaq::Linear4",
            *inputs,
            out_features_i=out_features,
            in_features_i=in_features,
            group_size_i=group_size,
            symmetric_i=int(symmetric),
            granularity_s=granularity,
            has_bias_i=int(not _is_none(bias)),
            static_i=int(not _is_none(s)),
            layout_s="K8N16",
        )

    def rnn(kind: str) -> Callable[..., Any]:
        outputs = 3 if kind == "LSTM" else 2

        @parse_args("v", "v", "v", "b", "i", "b", "b", "i", "i", "s", "i", "i", "b")
        def symbolic(g, input, hx, params, has_biases, num_layers, bidirectional, batch_first,  # type: ignore[no-untyped-def]
                     input_size, hidden_size, granularity, bits, group_size,
                     symmetric):  # fmt: skip
            from torch.onnx.symbolic_helper import _unpack_list

            args = [input, *_unpack_list(hx), *_unpack_list(params)]
            return g.op(
                f"dynaq::{kind}",
                *args,
                has_biases_i=int(has_biases),
                num_layers_i=num_layers,
                bidirectional_i=int(bidirectional),
                batch_first_i=int(batch_first),
                input_size_i=input_size,
                hidden_size_i=hidden_size,
                granularity_s=granularity,
                num_states_i=len(_unpack_list(hx)),
                bits_i=bits,
                group_size_i=group_size,
                symmetric_i=int(symmetric),
                layout_s="K4N16" if bits == 8 else "K8N16",
                outputs=outputs,
            )

        return symbolic

    register_custom_op_symbolic("dynaq::linear", linear, 1)
    register_custom_op_symbolic("dynaq::linear4", linear4, 1)
    register_custom_op_symbolic("dynaq::lstm", rnn("LSTM"), 1)
    register_custom_op_symbolic("dynaq::gru", rnn("GRU"), 1)


def _is_none(v: Any) -> bool:
    return v is None or (hasattr(v, "node") and v.node().mustBeNone())


try:
    _register_onnx()
except (ImportError, AttributeError):  # pragma: no cover - a torch without the TorchScript exporter
    pass
