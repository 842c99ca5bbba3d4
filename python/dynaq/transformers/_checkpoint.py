"""Reading a model's checkpoint files for the quantizer: their headers (each tensor's dtype and
shape, the metadata), one float weight at a time, and which of the model's modules a
checkpoint key names."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..safetensors._io import _open, _read_bytes, _read_header, _to_numpy


def checkpoint_header(files: Optional[list[str]]) -> tuple[dict[str, tuple[str, list[int]]], dict]:
    """Every tensor's dtype and shape, and the metadata, of a model's safetensors files (their
    headers only, read and checked by dynaq's one safetensors reader)."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    metadata: dict[str, str] = {}
    for path in files or []:
        if not str(path).endswith(".safetensors"):
            continue
        with _open(path) as f:
            header = _read_header(f, str(path))
        metadata.update(header.metadata)
        tensors.update((e.name, (e.dtype, list(e.shape))) for e in header.entries)
    return tensors, metadata


def checkpoint_weights(
    files: Optional[list[str]], names: list[str], modules: dict[str, Any], model: Any
) -> Any:
    """``(module name, float32 weight)`` for each of ``names`` whose ``.weight`` the
    checkpoint's safetensors files hold (one at a time: a model's weights are never all in
    memory twice)."""
    wanted = set(names)
    for path in files or []:
        if not str(path).endswith(".safetensors"):
            continue
        with _open(path) as f:
            header = _read_header(f, str(path))
            for e in header.entries:
                if not e.name.endswith(".weight") or len(e.shape) != 2:
                    continue
                name = module_name(e.name[: -len(".weight")], modules, model)
                if name in wanted:
                    w = _to_numpy(header, e, _read_bytes(f, header, e))
                    yield name, np.ascontiguousarray(w, dtype=np.float32)


def module_name(name: str, modules: dict[str, Any], model: Any) -> Optional[str]:
    """The model's module a checkpoint key's prefix names, allowing for the base model prefix
    (a ``BertModel`` loads a ``BertForMaskedLM`` checkpoint, whose keys start ``bert.``)."""
    if name in modules:
        return name
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in modules:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in modules:
        return f"{prefix}.{name}"
    return None
