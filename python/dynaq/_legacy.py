"""Reading what the release before format version 2 wrote: the layers' ``DYNAQLY`` container
and the torch modules' version-1 state-dict entries. Nothing writes these any more; the
``DYNAQPW`` weights inside them are read by the native module (``PackedWeight.from_bytes``).

``DYNAQLY`` version 1 (all integers little-endian)::

    b"DYNAQLY\\0"  magic
    u32           container version (1)
    u32           length H of the JSON header
    H bytes       JSON: {"kind": str, "config": {...}, "blobs": [[name, dtype, shape, size], ...]}
    blobs         the blobs, back to back, in header order (numpy arrays or raw bytes)
    u32           CRC-32 of everything before it
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Union

import numpy as np

from . import _dynaq
from ._dynaq import PackedWeight

LAYER_MAGIC = b"DYNAQLY\0"
_VERSION = 1
_ALLOWED_DTYPES = {"<f4", "|i1", "|u1", "<i4", "bytes"}

Blob = Union[np.ndarray, bytes]


def layer_tensors(
    data: bytes, kind: str
) -> tuple[dict[str, PackedWeight], dict[str, np.ndarray], dict[str, Any]]:
    """A version-1 layer of ``kind`` as format version 2 describes it: its weights, its other
    tensors and its configuration, under the names ``to_bytes`` uses now. ``ValueError``
    (``"<kind> bytes: ..."``) when the bytes are not such a layer."""
    config, blobs = _unpack(data, kind)
    weights: dict[str, PackedWeight] = {}
    tensors: dict[str, np.ndarray] = {}
    try:
        for name, blob in blobs.items():
            if kind in ("LSTM", "GRU"):
                # "l1_reverse.weight_ih" -> "weight_ih_l1_reverse"
                prefix, _, field = name.partition(".")
                layer, _, rev = prefix[1:].partition("_")
                name = f"{field}_l{int(layer)}" + ("_reverse" if rev else "")
            if isinstance(blob, bytes):
                weights[name] = PackedWeight.from_bytes(blob)
            else:
                tensors[name] = blob
        if kind == "Linear":
            scale, zp = (
                config.pop("activation_scale", None),
                config.pop("activation_zero_point", None),
            )
            if (scale is None) != (zp is None):
                raise ValueError("activation_scale and activation_zero_point go together")
            if scale is not None:
                if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                    raise ValueError(f"activation_scale must be a number, got {scale!r}")
                if _count(zp) is None or zp > 255:
                    raise ValueError(
                        f"activation_zero_point must be an integer in [0, 255], got {zp!r}"
                    )
                # A finite positive scale is checked with the version-2 tensors.
                with np.errstate(over="ignore"):
                    tensors["input_scale"] = np.array(scale, dtype=np.float32)
                tensors["input_zero_point"] = np.array(zp, dtype=np.uint8)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{kind} bytes: {e}") from None
    return weights, tensors, config


#: The two entries of a version-1 state dict of a torch module: its layer's DYNAQLY bytes as a
#: 1-D ``uint8`` tensor, and the version (1).
STATE_PACKED = "dynaq_packed"
STATE_VERSION = "dynaq_version"


def layer_from_state_dict(
    state_dict: Any,
    prefix: str,
    layer_type: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
    where: str,
) -> Any:
    """The layer in a version-1 state dict of a torch module at ``prefix``, or None after
    recording the problem as ``torch.nn.Module._load_from_state_dict`` does."""
    import torch

    key, vkey = prefix + STATE_PACKED, prefix + STATE_VERSION
    if strict:
        for k in state_dict:
            if k.startswith(prefix) and k not in (key, vkey):
                unexpected_keys.append(k)
    if vkey not in state_dict:
        if strict:
            missing_keys.append(vkey)
        return None
    version, blob = state_dict[vkey], state_dict[key]
    v = _integer(version)
    if v is None:
        error_msgs.append(f"{where}: {vkey} must be an integer, got {version!r}")
        return None
    if v != 1:
        error_msgs.append(
            f"{where}: {vkey} = {v} is not a version this dynaq reads (1, or the plain tensors "
            f"of version {_dynaq.FORMAT_VERSION})"
        )
        return None
    if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1):
        desc = (
            f"{blob.dtype} tensor of shape {tuple(blob.shape)}"
            if isinstance(blob, torch.Tensor)
            else type(blob).__name__
        )
        error_msgs.append(f"{where}: {key} must be a 1-D uint8 tensor, got a {desc}")
        return None
    try:
        data = blob.detach().cpu().contiguous().numpy().tobytes()
        return layer_type.from_bytes(data)
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: a meta or sparse tensor
        error_msgs.append(f"{where}: {key} cannot be read: {e}")
        return None


def _integer(value: Any) -> Any:
    """``value`` as an int when it is one (a Python int or a one-element integer tensor; not a
    bool, a float or a string), else None."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype.is_complex:
            return None
        if value.dtype == torch.bool or value.device.type == "meta":
            return None
        return int(value.item())
    return _count(value) if isinstance(value, int) else None


def _count(v: Any) -> Any:
    """``v`` when it is a non-negative int (not a bool), else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _unpack(data: bytes, kind: str) -> tuple[dict[str, Any], dict[str, Blob]]:
    """The configuration and blobs of a version-1 container of a layer of ``kind``."""
    where = f"{kind} bytes"
    if len(data) < len(LAYER_MAGIC) + 12:
        raise ValueError(f"{where}: {len(data)} bytes is too short to be a dynaq layer")
    if data[: len(LAYER_MAGIC)] != LAYER_MAGIC:
        raise ValueError(f"{where}: bad magic (not a dynaq layer)")
    (stored_crc,) = struct.unpack("<I", data[-4:])
    body = data[:-4]
    if zlib.crc32(body) != stored_crc:
        raise ValueError(f"{where}: checksum mismatch (truncated or altered)")
    version, hlen = struct.unpack("<II", body[len(LAYER_MAGIC) : len(LAYER_MAGIC) + 8])
    if version != _VERSION:
        raise ValueError(
            f"{where}: container version {version} is not supported (reads {_VERSION})"
        )
    start = len(LAYER_MAGIC) + 8
    if start + hlen > len(body):
        raise ValueError(f"{where}: header length {hlen} runs past the end")
    try:
        header = json.loads(body[start : start + hlen].decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # RecursionError: absurdly deep nesting
        raise ValueError(f"{where}: unreadable header ({type(e).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"kind", "config", "blobs"}:
        raise ValueError(f"{where}: malformed header (the keys kind, config and blobs)")
    found_kind, config, entries = header["kind"], header["config"], header["blobs"]
    if found_kind != kind:
        raise ValueError(f"{where}: holds a {found_kind!r}, not a {kind!r}")
    if not isinstance(config, dict) or not isinstance(entries, list):
        raise ValueError(f"{where}: malformed header")
    pos = start + hlen
    blobs: dict[str, Blob] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError(f"{where}: malformed blob entry {entry!r}")
        name, dtype, shape, size = entry
        ok = (
            isinstance(name, str)
            and name not in blobs
            and isinstance(dtype, str)
            and dtype in _ALLOWED_DTYPES
            and _count(size) is not None
            and isinstance(shape, list)
            and all(_count(d) is not None for d in shape)
        )
        if not ok:
            raise ValueError(f"{where}: bad blob entry {entry!r}")
        if pos + size > len(body):
            raise ValueError(f"{where}: blob {name!r} runs past the end")
        raw = body[pos : pos + size]
        pos += size
        if dtype == "bytes":
            blobs[name] = raw
            continue
        dt = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= d
        if count * dt.itemsize != size:
            raise ValueError(f"{where}: blob {name!r} has {size} bytes for shape {shape}")
        blobs[name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    if pos != len(body):
        raise ValueError(f"{where}: {len(body) - pos} unexpected trailing bytes")
    return config, blobs
