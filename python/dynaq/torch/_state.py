"""The state dicts of the dynaq modules (:mod:`dynaq.torch.modules`): the tensors that store a
module's weights (``W`` and ``W_scale``, and for a 4-bit weight ``W_min``, ``W_gscale`` and
``W_gmin``; a skeleton's as meta tensors), its options in the state dict's per-module metadata,
and loading them back (checked, into a module of any format or a meta skeleton), version-1
state dicts (one ``uint8`` tensor ``<name>.dynaq_packed`` per module) included. The modules'
``_save_to_state_dict`` and ``_load_from_state_dict`` call these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import _dynaq, _legacy
from . import ops

if TYPE_CHECKING:
    from .modules import _DynaqModule

# The key of a module's options in the state dict's per-module metadata.
_CONFIG_KEY = "dynaq"

#: Every buffer suffix a weight may have, whatever its bits.
WEIGHT_BUFFERS = tuple(dict.fromkeys(x for sfx in ops.BUFFER_SUFFIXES.values() for x in sfx))


def save_to_state_dict(mod: _DynaqModule, destination: Any, prefix: str, keep_vars: bool) -> None:
    """``nn.Module._save_to_state_dict`` of ``mod``: its weights as the tensors that store
    them, its other persistent buffers, and its options in the per-module metadata."""
    shapes = mod._weight_shapes()
    if mod._on_meta():
        for name, (n, k) in shapes.items():
            for key, t in meta_stored(mod, name, n, k).items():
                destination[prefix + key] = t
    else:
        weights, _, _ = mod.layer._tensors()
        for name, pw in weights.items():
            if pw.bits == 8:
                values, _ = pw.unpack()
                destination[prefix + name] = torch.from_numpy(values)
                destination[prefix + name + "_scale"] = mod._buffers[name + "_scale"]
            else:
                for key, a in _dynaq.weight_tensors(pw, name).items():
                    destination[prefix + key] = torch.from_numpy(a)
    derived = {w + sfx for w in shapes for sfx in WEIGHT_BUFFERS}
    for name, buf in mod._buffers.items():
        if buf is not None and name not in derived:
            destination[prefix + name] = buf if keep_vars else buf.detach()
    # The layer's options (granularity, ...) are not tensors: they go where PyTorch keeps a
    # module's version, the state dict's per-module metadata (kept by torch.save/load).
    metadata = getattr(destination, "_metadata", None)
    if metadata is not None:
        metadata.setdefault(prefix[:-1], {})[_CONFIG_KEY] = mod._layer_config()


def meta_stored(mod: _DynaqModule, name: str, n: int, k: int) -> dict[str, torch.Tensor]:
    """The state-dict entries of weight ``name`` of a skeleton (meta tensors)."""

    def meta(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    bits, group, symmetric = mod._format
    scale = mod._buffers[name + "_scale"]
    if bits == 8:
        return {name: meta(n, k, dtype=torch.int8), name + "_scale": scale}
    out = {name: meta((n + 1) // 2, k), name + "_scale": scale}
    if not symmetric:
        out[name + "_min"] = mod._buffers[name + "_min"]  # type: ignore[assignment]
    if group:
        out[name + "_gscale"] = meta(n, k // group)
        if not symmetric:
            out[name + "_gmin"] = meta(n, k // group)
    return out


def stored_parts(weight: str) -> tuple[str, ...]:
    """The names that may store ``weight``: ``W`` and its parts (``W_scale``, ``W_min``,
    ...); the first two are always there."""
    return (weight, *(weight + sfx for sfx in _dynaq.WEIGHT_PART_SUFFIXES))


def state_names(mod: _DynaqModule) -> tuple[set[str], set[str]]:
    """The names of this module's weights, and every name its state dict may hold (the
    tensors that store the weights, biases, calibrated input scales)."""
    weights = set(mod._weight_shapes())
    parts = {k for w in weights for k in stored_parts(w)}
    optional = {w.replace("weight", "bias", 1) for w in weights} | set(mod._optional)
    return weights, parts | optional


def load_from_state_dict(
    mod: _DynaqModule,
    state_dict: Mapping[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``nn.Module._load_from_state_dict`` of ``mod``: checks the entries under ``prefix`` (or
    a version-1 ``dynaq_packed`` tensor), builds the layer they describe and adopts it;
    problems go to ``missing_keys``, ``unexpected_keys`` and ``error_msgs``."""
    # Whatever the module holds (real weights or a meta skeleton), a checkpoint that passes
    # every check replaces its buffers (as load_state_dict(assign=True) would).
    where = f"{mod._get_name()} at {prefix[:-1] or '<root>'!r}"
    if prefix + _legacy.STATE_PACKED in state_dict:
        layer = _legacy.layer_from_state_dict(
            state_dict, prefix, mod._layer_type(), strict, missing_keys, unexpected_keys,
            error_msgs, where,
        )  # fmt: skip
        if layer is not None:
            problem = mod._check_loaded(layer)
            if problem is not None:
                error_msgs.append(f"size mismatch for {prefix}{_legacy.STATE_PACKED}: {problem}")
                return
            mod._adopt(layer)
        return
    weight_names, known = state_names(mod)
    parts = {k for w in weight_names for k in stored_parts(w)}
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
    config = mod._layer_config()
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
            error_msgs.append(f"{where}: {mine[n]} must be a tensor, got {type(value).__name__}")
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
            found = {prefix + n: arrays[n] for n in stored_parts(w) if n in arrays}
            weights[w] = _dynaq.weight_from_tensors(found, key)
        except (TypeError, ValueError) as e:
            text = str(e)
            error_msgs.append(f"{where}: {text if text.startswith(key) else f'{key}: {text}'}")
            return
    try:
        tensors = {n: a for n, a in arrays.items() if n not in parts}
        layer = mod._layer_type()._from_tensors(weights, tensors, config)
    except (TypeError, ValueError) as e:
        error_msgs.append(f"{where}: {e}")
        return
    problem = mod._check_loaded(layer)
    if problem is not None:
        error_msgs.append(f"size mismatch for {prefix[:-1] or '<root>'}: {problem}")
        return
    mod._adopt(layer)
