"""``compare``: run a float model and its quantized version on the same inputs and measure the
error, layer by layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn

from .._text import format_table
from ..mixed.sensitivity import sqnr_db

__all__ = ["Comparison", "compare"]


def _first_tensor(out: Any) -> Optional[torch.Tensor]:
    """The tensor that stands for a module's output: itself, ``last_hidden_state`` /
    ``logits`` of a mapping (Hugging Face ``ModelOutput``), or the first tensor inside."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("last_hidden_state", "logits"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _error_stats(name: str, kind: str, ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    if ref.shape != got.shape:
        raise ValueError(
            f"{name}: the float output has shape {tuple(ref.shape)} and the quantized one "
            f"{tuple(got.shape)}"
        )
    a = ref.detach().to("cpu", torch.float64).reshape(-1)
    b = got.detach().to("cpu", torch.float64).reshape(-1)
    err = a - b
    signal = float(torch.dot(a, a))
    noise = float(torch.dot(err, err))
    sqnr = sqnr_db(signal, noise)
    na, nb = math.sqrt(signal), float(torch.linalg.vector_norm(b))
    if na == 0.0 or nb == 0.0:
        cosine = 1.0 if na == nb else 0.0
    else:
        cosine = float(torch.dot(a, b)) / (na * nb)
    return {
        "name": name,
        "kind": kind,
        "shape": tuple(ref.shape),
        "sqnr_db": sqnr,
        "cosine": cosine,
        "max_abs_error": float(err.abs().max()) if err.numel() else 0.0,
        "rel_error": math.sqrt(noise / signal) if signal else (0.0 if noise == 0 else math.inf),
    }


class Comparison:
    """What :func:`compare` found: per-layer and model-output error of a quantized model.

    Attributes
    ----------
    rows : list of dict
        One per swapped module, in the order they first ran, with keys ``name``, ``kind`` (the
        quantized module's type), ``shape`` (its output's), ``sqnr_db`` (``10 log10(|ref|^2 /
        |ref - q|^2)``, inf when exact), ``cosine``, ``max_abs_error`` and ``rel_error``
        (``|ref - q| / |ref|``), and ``calls`` (how often the module ran). Recurrent modules are
        measured on their ``output``.
    output : dict
        The same keys for the model's output (``name`` is ``"<output>"``).
    """

    def __init__(self, rows: list[dict[str, Any]], output: dict[str, Any]) -> None:
        self.rows = rows
        self.output = output

    def table(self) -> str:
        """The rows and the model output as a text table."""
        head = ("layer", "kind", "shape", "SQNR dB", "cosine", "max abs err")
        body = [self._cells(r) for r in self.rows]
        lines = format_table(head, body, right=(3, 4, 5), footer=[self._cells(self.output)])
        return "\n".join(lines)

    @staticmethod
    def _cells(row: dict[str, Any]) -> tuple[str, ...]:
        return (
            str(row["name"]),
            str(row["kind"]),
            "x".join(str(d) for d in row["shape"]),
            f"{row['sqnr_db']:.2f}",
            f"{row['cosine']:.6f}",
            f"{row['max_abs_error']:.3g}",
        )

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"Comparison({len(self.rows)} layers, output SQNR {self.output['sqnr_db']:.2f} dB, "
            f"cosine {self.output['cosine']:.6f})"
        )


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _real(t: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The positions of ``t`` the mask keeps (those of real tokens), when ``t`` is laid out as
    the mask is (``(batch, seq, ...)`` for a ``(batch, seq)`` mask); else all of ``t``."""
    if mask is None or t.dim() < mask.dim() or tuple(t.shape[: mask.dim()]) != tuple(mask.shape):
        return t
    return t[mask]


def compare(
    model_fp32: nn.Module,
    model_q: nn.Module,
    inputs: Any,
    *,
    attention_mask: Optional[torch.Tensor] = None,
) -> Comparison:
    """Run a float model and its quantized version on the same inputs and measure the error.

    The layers compared are the modules of ``model_q`` whose type differs from the module of
    the same name in ``model_fp32`` (the swapped ones, from this module's
    :func:`quantize_dynamic` or from ``torch.ao.quantization.quantize_dynamic``); forward
    hooks capture their outputs in both models for one call of each.

    Parameters
    ----------
    model_fp32, model_q : torch.nn.Module
        Put both in eval mode first (dropout would make the comparison random).
    inputs : torch.Tensor, tuple or dict
        One tensor (``model(inputs)``), a tuple or list of positional arguments
        (``model(*inputs)``) or a dict of keyword arguments (``model(**inputs)``).
    attention_mask : torch.Tensor, optional
        Which positions are real tokens (nonzero) and which padding, e.g. ``(batch, seq)``:
        every output laid out as ``(batch, seq, ...)`` is measured on the real positions only
        (padding carries arbitrary values in both models and would drown the error of the real
        tokens). By default, the ``attention_mask`` of a dict of ``inputs``; pass one
        explicitly otherwise. Outputs of another layout are measured whole.

    Returns
    -------
    Comparison
        ``.rows`` (per layer), ``.output`` (the model output), ``.table()`` / ``str()``; with a
        mask, the errors are those of the real tokens (``shape`` stays the full one). Model
        outputs that are tuples or Hugging Face ``ModelOutput`` objects are measured on
        ``last_hidden_state`` (or ``logits``) when present, else on their first tensor.
    """
    for arg, m in (("model_fp32", model_fp32), ("model_q", model_q)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(m).__name__}")
    if attention_mask is None and isinstance(inputs, Mapping):
        attention_mask = inputs.get("attention_mask")
    mask = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() == 0:
            raise TypeError("attention_mask must be a tensor of at least 1 dimension")
        mask = attention_mask.detach().cpu() != 0
        if not mask.any():
            raise ValueError("attention_mask masks every position: nothing to compare")
    fp_mods = dict(model_fp32.named_modules())
    swapped = [
        (n, m)
        for n, m in model_q.named_modules()
        if n and n in fp_mods and type(m) is not type(fp_mods[n])
    ]
    names = {n for n, _ in swapped}
    swapped = [
        (n, m) for n, m in swapped if not any(n.startswith(p + ".") for p in names if p != n)
    ]
    captured: dict[str, dict[str, list[torch.Tensor]]] = {"fp": {}, "q": {}}
    order: list[str] = []
    q_shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(side: str, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is None:
                return
            if side == "q" and name not in captured["q"]:
                order.append(name)
                q_shapes[name] = tuple(t.shape)
            captured[side].setdefault(name, []).append(_real(t.detach().cpu(), mask).clone())

        return hook

    handles = []
    try:
        for name, qmod in swapped:
            handles.append(fp_mods[name].register_forward_hook(hook_for("fp", name)))
            handles.append(qmod.register_forward_hook(hook_for("q", name)))
        with torch.no_grad():
            ref = _first_tensor(_call(model_fp32, inputs))
            got = _first_tensor(_call(model_q, inputs))
    finally:
        for h in handles:
            h.remove()
    if ref is None or got is None:
        raise TypeError("the models' outputs hold no tensor to compare")
    kinds = {n: m._get_name() for n, m in swapped}
    rows = []
    for name in order:
        fp_list, q_list = captured["fp"].get(name, []), captured["q"][name]
        if len(fp_list) != len(q_list):
            raise ValueError(
                f"{name}: ran {len(fp_list)} times in model_fp32 and {len(q_list)} times in model_q"
            )
        if len(q_list) == 1:
            a, b = fp_list[0], q_list[0]
        else:
            a = torch.cat([t.reshape(-1) for t in fp_list])
            b = torch.cat([t.reshape(-1) for t in q_list])
        row = _error_stats(name, kinds[name], a, b)
        row["shape"] = tuple(q_shapes[name])
        row["calls"] = len(q_list)
        rows.append(row)
    output = _error_stats("<output>", type(model_q).__name__, _real(ref.cpu(), mask),
                          _real(got.cpu(), mask))  # fmt: skip
    output["shape"] = tuple(got.shape)
    output["calls"] = 1
    return Comparison(rows, output)
