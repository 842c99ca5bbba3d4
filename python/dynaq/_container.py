"""A small versioned container for layer state: a JSON description plus named binary blobs.

Layout (all integers little-endian)::

    b"DYNAQLY\\0"  magic
    u32           container version (1)
    u32           length H of the JSON header
    H bytes       JSON: {"kind": str, "config": {...}, "blobs": [[name, dtype, shape, size], ...]}
    blobs         the blobs, back to back, in header order
    u32           CRC-32 of everything before it

Blobs are numpy arrays (stored C-contiguous, little-endian) or raw bytes (dtype "bytes", e.g. a
serialized ``PackedWeight``). Every field is checked when reading; anything wrong is a
``ValueError`` naming the problem.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Union

import numpy as np

MAGIC = b"DYNAQLY\0"
VERSION = 1
_ALLOWED_DTYPES = {"<f4", "|i1", "|u1", "<i4", "bytes"}

Blob = Union[np.ndarray, bytes]


def pack(kind: str, config: dict[str, Any], blobs: dict[str, Blob]) -> bytes:
    """Serialize a layer description and its blobs."""
    entries = []
    parts = []
    for name, blob in blobs.items():
        if isinstance(blob, (bytes, bytearray)):
            data = bytes(blob)
            entries.append([name, "bytes", [len(data)], len(data)])
        else:
            arr = np.ascontiguousarray(blob)
            dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
            arr = arr.astype(dtype, copy=False)
            if arr.dtype.str not in _ALLOWED_DTYPES:
                raise TypeError(f"cannot store blob {name!r} of dtype {arr.dtype}")
            data = arr.tobytes()
            entries.append([name, arr.dtype.str, list(arr.shape), len(data)])
        parts.append(data)
    header = json.dumps({"kind": kind, "config": config, "blobs": entries}).encode()
    body = MAGIC + struct.pack("<II", VERSION, len(header)) + header + b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: Any, kind: str) -> tuple[dict[str, Any], dict[str, Blob]]:
    """Read a container written by :func:`pack` for a layer of ``kind``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    where = f"{kind} bytes"
    if len(data) < len(MAGIC) + 12:
        raise ValueError(f"{where}: {len(data)} bytes is too short to be a dynaq layer")
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{where}: bad magic (not a dynaq layer)")
    (stored_crc,) = struct.unpack("<I", data[-4:])
    body = data[:-4]
    if zlib.crc32(body) != stored_crc:
        raise ValueError(f"{where}: checksum mismatch (truncated or altered)")
    version, hlen = struct.unpack("<II", body[len(MAGIC) : len(MAGIC) + 8])
    if version != VERSION:
        raise ValueError(f"{where}: container version {version} is not supported (reads {VERSION})")
    start = len(MAGIC) + 8
    if start + hlen > len(body):
        raise ValueError(f"{where}: header length {hlen} runs past the end")
    try:
        header = json.loads(body[start : start + hlen].decode())
        found_kind = header["kind"]
        config = header["config"]
        entries = header["blobs"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: unreadable header ({e})") from None
    if found_kind != kind:
        raise ValueError(f"{where}: holds a {found_kind!r}, not a {kind!r}")
    if not isinstance(config, dict) or not isinstance(entries, list):
        raise ValueError(f"{where}: malformed header")
    pos = start + hlen
    blobs: dict[str, Blob] = {}
    for entry in entries:
        try:
            name, dtype, shape, size = entry
            size = int(size)
            shape = tuple(int(d) for d in shape)
        except (ValueError, TypeError):
            raise ValueError(f"{where}: malformed blob entry {entry!r}") from None
        if dtype not in _ALLOWED_DTYPES or size < 0 or any(d < 0 for d in shape):
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
