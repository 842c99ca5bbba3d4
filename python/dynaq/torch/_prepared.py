"""The native objects behind the operators' tensors: the tensors a dynaq weight travels as
(:data:`BUFFER_SUFFIXES`, :func:`weight_buffers`, :func:`meta_buffers`), and the cache
(:class:`Prepared`, :data:`PREPARED`) of the native layers built from them
(:func:`linear_layer`, :func:`linear4_layer`, :func:`recurrent_layer`), kept while those tensors
live unchanged. The operators (:mod:`dynaq.torch.ops`, which re-exports these names) and the
modules call them.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import layers as _layers
from .._dynaq import PackedWeight

__all__ = [
    "BUFFER_SUFFIXES",
    "INT8",
    "PREPARED",
    "Format",
    "Prepared",
    "cell_names",
    "linear4_layer",
    "linear_layer",
    "meta_buffers",
    "recurrent_layer",
    "unchanged",
    "versions",
    "weight_buffers",
    "weight_format",
]


def versions(tensors: Sequence[Optional[torch.Tensor]]) -> tuple[Optional[int], ...]:
    """The version counters of ``tensors`` (bumped by every in-place write); None for a missing
    tensor or an inference tensor (which tracks none, and cannot be written outside inference
    mode)."""
    return tuple(None if t is None or t.is_inference() else t._version for t in tensors)


def unchanged(
    tensors: Sequence[Optional[torch.Tensor]],
    held: Sequence[Optional[torch.Tensor]],
    seen: Sequence[Optional[int]],
) -> bool:
    """Whether ``tensors`` are the very tensors ``held`` (identity, not ``==``), unwritten since
    their version counters were ``seen`` (:func:`versions`). On every call of a small layer:
    one loop, no temporaries (a generator per check cost ~2 us of a ~6 us call)."""
    if len(tensors) != len(held):
        return False
    for t, h, v in zip(tensors, held, seen):
        if t is not h or (v is not None and t._version != v):  # type: ignore[union-attr]
            return False
    return True


class Prepared:
    """Native objects built from tensors, kept while the tensors live unchanged.

    An entry is keyed by its first tensor (by identity, dropped when that tensor dies) and
    remembers the tensors (held, so that their identities stay unique), their version counters
    and the configuration; any difference builds the object again. Writes through ``.data``
    bump no version counter: the modules' buffers are meant to be replaced
    (``load_state_dict``), not written through ``.data``.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, ...]] = {}

    def get(
        self, tensors: Sequence[Optional[torch.Tensor]], config: Any, build: Callable[[], Any]
    ) -> Any:
        head = tensors[0]
        entry = self._entries.get(id(head))
        if (
            entry is not None
            and entry[0]() is head
            and (entry[3] is None or head._version == entry[3])  # type: ignore[union-attr]
            and entry[4] == config
            and unchanged(tensors[1:], entry[1], entry[2])
        ):
            return entry[5]
        obj = build()
        self.put(tensors, config, obj)
        return obj

    def put(self, tensors: Sequence[Optional[torch.Tensor]], config: Any, obj: Any) -> None:
        head = tensors[0]
        assert head is not None
        key = id(head)
        entries = self._entries
        # The weak reference drops the entry with its key tensor (whose id may then be reused);
        # the entry holds the other tensors, so while it lives no other tensor has their ids.
        ref = weakref.ref(head, lambda _, key=key: entries.pop(key, None))
        seen = versions(tensors)
        entries[key] = (ref, tuple(tensors[1:]), seen[1:], seen[0], config, obj)

    def __len__(self) -> int:
        return len(self._entries)


#: The process's cache of native layers built from torch tensors.
PREPARED = Prepared()


def _numpy(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().contiguous().numpy()


#: The buffers of a weight ``W``, by its bits, in the order the operators take them.
BUFFER_SUFFIXES: dict[int, tuple[str, ...]] = {
    8: ("_panels", "_scale"),
    4: ("_panels", "_gscale_panels", "_gmin_panels", "_scale", "_min"),
}

#: A weight's format as the operators take it: ``(bits, group_size, symmetric)``, group size 0
#: for one scale per output channel (int8 weights: ``(8, 0, True)``).
Format = tuple[int, int, bool]
INT8: Format = (8, 0, True)


def weight_format(pw: PackedWeight) -> Format:
    """``pw``'s :data:`Format`."""
    return (int(pw.bits), int(pw.group_size or 0), bool(pw.symmetric))


def _view(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory (read-only by contract: torch does not enforce numpy's
    flag, and the kernels read this memory)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def weight_buffers(pw: PackedWeight) -> tuple[torch.Tensor, ...]:
    """``pw`` as the tensors the operators take (:data:`BUFFER_SUFFIXES`): views of its memory
    for the panels and codes, float32 copies of its (small) scales and factors."""
    if pw.bits == 8:
        s = np.array(pw.scales, dtype=np.float32)
        return _view(pw.panels), torch.from_numpy(s if pw.per_channel else s.reshape(()))
    scale_codes, min_codes = pw.code_panels
    row_scales, row_minima = pw.row_factors
    return (_view(pw.panels), _view(scale_codes), _view(min_codes), torch.from_numpy(row_scales),
            torch.from_numpy(row_minima))  # fmt: skip


def meta_buffers(n: int, k: int, fmt: Format, per_channel: bool) -> tuple[torch.Tensor, ...]:
    """The tensors of an ``(n, k)`` weight of format ``fmt`` on the meta device (shapes only)."""

    def meta(size: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, device="meta")

    if fmt[0] == 8:
        panels = meta(PackedWeight.panels_size(n, k), torch.int8)
        return panels, meta((n,) if per_channel else (), torch.float32)
    codes = PackedWeight.code_panels_size(n, k, fmt[1] or None)
    return (meta(PackedWeight.panels_size(n, k, bits=4), torch.uint8), meta(codes, torch.uint8),
            meta(codes, torch.uint8), meta(n, torch.float32), meta(n, torch.float32))  # fmt: skip


def _weight(tensors: Sequence[torch.Tensor], n: int, k: int, fmt: Format) -> PackedWeight:
    """The native weight of buffers that no cache entry holds (copied)."""
    if any(t.device.type == "meta" for t in tensors):
        raise ValueError(
            "the weights are on the meta device (a skeleton): load a checkpoint into the module "
            "(load_state_dict) before calling it"
        )
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"dynaq's weights must be on the CPU, not {t.device}")
    if fmt[0] == 8:
        panels, scale = tensors
        return PackedWeight.from_panels(
            _numpy(panels), _numpy(scale.to(torch.float32)), int(n), int(k)
        )
    panels, scale_codes, min_codes, row_scales, row_minima = tensors
    return PackedWeight.from_int4_panels(
        _numpy(panels), _numpy(scale_codes), _numpy(min_codes),
        _numpy(row_scales.to(torch.float32)), _numpy(row_minima.to(torch.float32)), int(n),
        int(k), group_size=int(fmt[1]) or None, symmetric=bool(fmt[2]),
    )  # fmt: skip


def _linear_from(
    pw: PackedWeight,
    bias: Optional[torch.Tensor],
    input_scale: Optional[torch.Tensor],
    input_zero_point: Optional[torch.Tensor],
    granularity: str,
) -> _layers.Linear:
    named = {"bias": bias, "input_scale": input_scale, "input_zero_point": input_zero_point}
    arrays = {k: _numpy(v) for k, v in named.items() if v is not None}
    if "bias" in arrays:
        arrays["bias"] = arrays["bias"].astype(np.float32, copy=False)
    return _layers.Linear._from_tensors(
        {"weight": pw},
        arrays,
        {"granularity": granularity},  # type: ignore[arg-type]
    )


def linear_layer(
    weight_panels: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    in_features: int,
    granularity: str,
    input_scale: Optional[torch.Tensor] = None,
    input_zero_point: Optional[torch.Tensor] = None,
    *,
    prepared: Optional[_layers.Linear] = None,
) -> _layers.Linear:
    """The numpy :class:`dynaq.layers.Linear` these tensors describe (cached; ``prepared``:
    the layer they were made from, cached as it is)."""
    # The hit, unrolled (this runs on every call of the operator: ~1 us instead of ~2).
    entry = PREPARED._entries.get(id(weight_panels))
    if entry is not None and prepared is None:
        ref, held, seen, v0, config, obj = entry
        if (
            ref() is weight_panels
            and len(held) == 4
            and held[0] is weight_scale
            and held[1] is bias
            and held[2] is input_scale
            and held[3] is input_zero_point
            and config == ("linear", out_features, in_features, granularity)
            and (v0 is None or weight_panels._version == v0)
            and (seen[0] is None or weight_scale._version == seen[0])
            and (seen[1] is None or bias._version == seen[1])  # type: ignore[union-attr]
            and (seen[2] is None or input_scale._version == seen[2])  # type: ignore[union-attr]
            and (seen[3] is None or input_zero_point._version == seen[3])  # type: ignore[union-attr]
        ):
            return obj  # type: ignore[no-any-return]
    tensors = (weight_panels, weight_scale, bias, input_scale, input_zero_point)
    config = ("linear", out_features, in_features, granularity)
    if prepared is not None:
        PREPARED.put(tensors, config, prepared)
        return prepared

    def build() -> _layers.Linear:
        pw = _weight((weight_panels, weight_scale), out_features, in_features, INT8)
        return _linear_from(pw, bias, input_scale, input_zero_point, granularity)

    return PREPARED.get(tensors, config, build)


def linear4_layer(
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
    granularity: str,
    input_scale: Optional[torch.Tensor] = None,
    input_zero_point: Optional[torch.Tensor] = None,
    *,
    prepared: Optional[_layers.Linear] = None,
) -> _layers.Linear:
    """:func:`linear_layer` for a 4-bit weight (``group_size`` 0: per channel)."""
    weight = (weight_panels, weight_gscale_panels, weight_gmin_panels, weight_scale, weight_min)
    tensors = (*weight, bias, input_scale, input_zero_point)
    config = ("linear4", out_features, in_features, group_size, symmetric, granularity)
    if prepared is not None:
        PREPARED.put(tensors, config, prepared)
        return prepared

    def build() -> _layers.Linear:
        pw = _weight(weight, out_features, in_features, (4, group_size, symmetric))
        return _linear_from(pw, bias, input_scale, input_zero_point, granularity)

    return PREPARED.get(tensors, config, build)


_GATES = {"LSTM": 4, "GRU": 3}


def cell_names(num_layers: int, bidirectional: bool) -> list[str]:
    """The suffixes of a recurrent layer's cells in PyTorch's order (``_l0``, ``_l0_reverse``,
    ``_l1``, ...)."""
    dirs = ("", "_reverse") if bidirectional else ("",)
    return [f"_l{layer}{d}" for layer in range(num_layers) for d in dirs]


def recurrent_layer(
    kind: str,
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
    *,
    prepared: Any = None,
) -> Any:
    """The numpy :class:`dynaq.layers.LSTM` / ``GRU`` these tensors describe (cached;
    ``prepared``: the layer they were made from).

    ``params`` holds, per cell in :func:`cell_names` order, the buffers of ``weight_ih``, then
    of ``weight_hh`` (:data:`BUFFER_SUFFIXES` of ``bits``), then ``bias_ih`` and ``bias_hh``
    when ``has_biases``. Every weight has the format ``(bits, group_size, symmetric)``."""
    fmt: Format = INT8 if bits == 8 else (int(bits), int(group_size), bool(symmetric))
    if fmt[0] not in BUFFER_SUFFIXES:
        raise ValueError(f"dynaq.{kind.lower()}: bits must be 8 or 4, got {bits}")
    per_weight = len(BUFFER_SUFFIXES[fmt[0]])
    per_cell = 2 * per_weight + (2 if has_biases else 0)
    cells = cell_names(num_layers, bidirectional)
    if len(params) != per_cell * len(cells):
        raise ValueError(
            f"dynaq.{kind.lower()}: {len(params)} parameters for {len(cells)} cells of "
            f"{per_cell} tensors"
        )
    config = (kind, has_biases, num_layers, bidirectional, batch_first, input_size, hidden_size,
              granularity, fmt)  # fmt: skip
    if prepared is not None:
        PREPARED.put(list(params), config, prepared)
        return prepared

    def build() -> Any:
        g = _GATES[kind] * hidden_size
        weights: dict[str, PackedWeight] = {}
        tensors: dict[str, np.ndarray] = {}
        for i, sfx in enumerate(cells):
            p = params[i * per_cell : (i + 1) * per_cell]
            dirs = 2 if bidirectional else 1
            k_ih = input_size if sfx.startswith("_l0") else hidden_size * dirs
            ih, hh, biases = p[:per_weight], p[per_weight : 2 * per_weight], p[2 * per_weight :]
            weights["weight_ih" + sfx] = _weight(ih, g, k_ih, fmt)
            weights["weight_hh" + sfx] = _weight(hh, g, hidden_size, fmt)
            if has_biases:
                tensors["bias_ih" + sfx] = _numpy(biases[0].to(torch.float32))  # type: ignore[assignment]
                tensors["bias_hh" + sfx] = _numpy(biases[1].to(torch.float32))  # type: ignore[assignment]
        cls = _layers.LSTM if kind == "LSTM" else _layers.GRU
        return cls._from_tensors(
            weights,
            tensors,
            {"num_layers": num_layers, "bidirectional": bidirectional,
             "batch_first": batch_first, "granularity": granularity},
        )  # fmt: skip

    return PREPARED.get(list(params), config, build)
