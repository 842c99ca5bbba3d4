"""Loading quantized safetensors files: dynaq's own (format version 2, and version 1 as the
release before it wrote them) into :class:`dynaq.PackedWeight` objects and layers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np

from .. import _dynaq
from ._io import PathLike, _open, _read_bytes, _read_header, _to_numpy

# Version 1 files stored the scales of W as "W.dynaq_scale", of shape (rows,) or (1,), and said
# which in the "dynaq.per_channel" metadata.
_V1_SCALE_SUFFIX = ".dynaq_scale"


def load_quantized(path: PathLike) -> dict[str, Any]:
    """Load a file written by :func:`quantize_file` (format version 2, or 1 as the release
    before it wrote them).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to PackedWeight or numpy.ndarray
        Each quantized tensor as a :class:`dynaq.PackedWeight` (from its int8 values and
        scales, so it computes exactly what the quantizer produced); every other tensor as a
        numpy array, as :func:`read` gives it. The scale tensors are consumed, not returned.

    Raises
    ------
    ValueError
        When the file is not a dynaq-quantized safetensors file, is from a newer format, or a
        quantized tensor or its scales are missing or malformed (the message names the tensor).
    """
    p = os.fspath(path)
    with _open(p) as f:
        header = _read_header(f, p)
        meta = header.metadata
        key = _dynaq.FORMAT_KEY
        if key not in meta:
            raise ValueError(
                f"{p}: not a dynaq-quantized file (no {key} metadata; make one with "
                "python -m dynaq quantize)"
            )
        try:
            version = int(meta[key])
        except ValueError:
            raise ValueError(f"{p}: bad {key} metadata {meta[key]!r}") from None
        readable = (1, _dynaq.FORMAT_VERSION, _dynaq.FORMAT_VERSION_INT4)
        if version not in readable:
            raise ValueError(
                f"{p}: dynaq file format {version} is not supported (this dynaq reads "
                f"{', '.join(map(str, readable))})"
            )
        try:
            names = json.loads(meta.get(_dynaq.QUANTIZED_KEY, "[]"))
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: bad {_dynaq.QUANTIZED_KEY} metadata (a JSON list of names)")
        quantized = set(names)
        suffix = _V1_SCALE_SUFFIX if version == 1 else _dynaq.SCALE_SUFFIX
        # 4-bit weights (version 3) may have minima and group codes beside their scales.
        suffixes = _dynaq.WEIGHT_PART_SUFFIXES if version >= 3 else [suffix]
        per_tensor_v1 = version == 1 and meta.get("dynaq.per_channel", "true") == "false"
        entries = {e.name: e for e in header.entries}
        scales_of = {n + sfx: n for n in quantized for sfx in suffixes}
        if version == 1:
            for e in header.entries:
                if e.name.endswith(suffix) and e.name not in scales_of:
                    raise ValueError(f"{p}: tensor {e.name!r} has no quantized tensor to scale")
        missing = sorted(quantized - set(entries))
        if missing:
            raise ValueError(f"{p}: quantized tensors {missing} are missing")
        result: dict[str, Any] = {}
        for e in header.entries:
            if e.name in scales_of:
                continue
            arr = _to_numpy(header, e, _read_bytes(f, header, e))
            if e.name not in quantized:
                result[e.name] = arr
                continue
            where = f"{p}: tensor {e.name!r}"
            se = entries.get(e.name + suffix)
            if se is None:
                raise ValueError(f"{where}: its scales {e.name + suffix!r} are missing")
            if arr.dtype == np.uint8 and version < 3:
                raise ValueError(
                    f"{where}: 4-bit (uint8) values in a format-{version} file (4-bit weights "
                    "are format 3)"
                )
            scales = _to_numpy(header, se, _read_bytes(f, header, se))
            if per_tensor_v1 and scales.shape == (1,):
                scales = scales.reshape(())
            parts = {e.name: arr, e.name + _dynaq.SCALE_SUFFIX: scales}
            for sfx in suffixes[1:]:
                pe = entries.get(e.name + sfx)
                if pe is not None:
                    parts[pe.name] = _to_numpy(header, pe, _read_bytes(f, header, pe))
            try:
                result[e.name] = _dynaq.weight_from_tensors(parts, e.name)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from None
    return result


def load_linear(
    tensors: Union[PathLike, Mapping[str, Any]],
    name: str,
    bias: Optional[str] = None,
    *,
    granularity: str = "row",
) -> Any:
    """Build a :class:`dynaq.layers.Linear` from a weight (and optional bias) of a model file.

    Parameters
    ----------
    tensors : str, os.PathLike or mapping
        What :func:`load_quantized` returns, or the path of a file to load with it.
    name : str
        The weight (out_features, in_features). A quantized weight is used as it is; a float
        one (kept or excluded at quantization) is quantized now, per channel.
    bias : str, optional
        Name of the bias tensor (out_features,).
    granularity : {"row", "tensor"}
        Activation scales per row (default) or per call.

    Returns
    -------
    dynaq.layers.Linear

    Raises
    ------
    KeyError
        When ``name`` or ``bias`` is not in ``tensors``.
    """
    from .._dynaq import PackedWeight
    from ..layers import Linear

    if not isinstance(tensors, Mapping):
        tensors = load_quantized(tensors)
    if name not in tensors:
        raise KeyError(f"no tensor {name!r} (have {sorted(tensors)[:20]})")
    if bias is not None and bias not in tensors:
        raise KeyError(f"no bias tensor {bias!r}")
    weight = tensors[name]
    b = tensors[bias] if bias is not None else None
    if isinstance(weight, PackedWeight):
        return Linear(weight, b, granularity=granularity)
    return Linear.from_float(weight, b, granularity=granularity)
