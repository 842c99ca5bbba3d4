"""Model files: safetensors reading and writing in pure Python, and int8 quantization of files.

The safetensors format is an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON
(``{name: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str:
str}}``), then the data: every tensor's bytes, C order, little-endian, back to back. This module
reads and writes it with numpy alone (the ``safetensors`` package is not needed, and files are
interchangeable with it), checks every field when reading, and writes atomically: a temporary
file in the destination's directory, flushed to disk, then renamed over the destination, so an
error never leaves a half-written file behind.

:func:`quantize_file` turns every 2-D floating-point tensor of a file into int8 values (stored as
``I8`` under the tensor's own name) and float32 scales (``<name>.dynaq_scale``, one per output
channel or one in all), exactly what :func:`dynaq.pack_weight` would use, and copies everything
else byte for byte. :func:`load_quantized` reads such a file back into :class:`dynaq.PackedWeight`
objects and :func:`load_linear` builds :class:`dynaq.layers.Linear` layers from it.

Reading and format errors are ``ValueError`` naming the file and, where there is one, the tensor;
wrong argument types are ``TypeError``; ``OSError`` comes from the operating system.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from typing import IO, Any, Callable, Optional, Union

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "QuantizeReport",
    "RawTensor",
    "TensorReport",
    "load_linear",
    "load_quantized",
    "quantize_file",
    "read",
    "read_metadata",
    "read_raw",
    "write",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Version of the quantized-file layout written by :func:`quantize_file` (metadata
#: ``"dynaq.format"``).
FORMAT_VERSION = 1

#: Suffix of the scale tensor stored beside each quantized tensor.
SCALE_SUFFIX = ".dynaq_scale"

# The safetensors reader refuses headers above 100 MB; so do we.
_MAX_HEADER = 100_000_000
_CHUNK = 1 << 24  # bytes per read/write when copying tensors

# dtype name -> (bits per element, numpy dtype it is stored as, or None when it is decoded).
_DTYPES: dict[str, tuple[int, Optional[str]]] = {
    "BOOL": (8, "|b1"),
    "U8": (8, "|u1"),
    "I8": (8, "|i1"),
    "U16": (16, "<u2"),
    "I16": (16, "<i2"),
    "U32": (32, "<u4"),
    "I32": (32, "<i4"),
    "U64": (64, "<u8"),
    "I64": (64, "<i8"),
    "F16": (16, "<f2"),
    "BF16": (16, None),
    "F32": (32, "<f4"),
    "F64": (64, "<f8"),
    "C64": (64, "<c8"),
    "F8_E4M3": (8, None),
    "F8_E5M2": (8, None),
    "F8_E8M0": (8, None),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}
# numpy (kind, itemsize) -> dtype name, for writing.
_FROM_NUMPY = {
    (np.dtype(v).kind, np.dtype(v).itemsize): k for k, (_, v) in _DTYPES.items() if v is not None
}
# Floating dtypes that quantize_file turns into int8 (2-D tensors only).
_QUANTIZABLE = ("F32", "F16", "BF16", "F64")

_META_FORMAT = "dynaq.format"
_META_QUANTIZED = "dynaq.quantized"
_META_PER_CHANNEL = "dynaq.per_channel"
_META_VERSION = "dynaq.version"


# ---------------------------------------------------------------------------------------------
# Decoding of the float formats numpy lacks.
# ---------------------------------------------------------------------------------------------


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32, exactly (bfloat16 is float32's top half)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out[nan] = ((u[nan] >> np.uint64(16)) | np.uint64(0x40)).astype(np.uint16)
    return out


def _f8_e4m3_table() -> np.ndarray:
    """float32 values of the 256 F8_E4M3 (E4M3FN: bias 7, no infinity, 0x7F/0xFF NaN) codes."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    out = (sign * mag).astype(np.float32)
    out[(exp == 0xF) & (man == 0x7)] = np.nan
    return out


def _decode(dtype: str, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes (uint8, C order) of a tensor as a numpy array; the formats numpy lacks become
    float32 (exactly: every value of theirs is a float32 value)."""
    numpy_dtype = _DTYPES[dtype][1]
    if numpy_dtype is not None:
        a = raw.view(np.dtype(numpy_dtype))
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        return a.reshape(shape)
    if dtype == "BF16":
        return _bf16_to_float32(raw.view("<u2")).reshape(shape)
    if dtype == "F8_E5M2":  # the top byte of a float16
        return (raw.astype("<u2") << 8).view("<f2").astype(np.float32).reshape(shape)
    if dtype == "F8_E4M3":
        return _f8_e4m3_table()[raw].reshape(shape)
    if dtype == "F8_E8M0":  # 2 ** (code - 127); 0xFF is NaN
        out = np.ldexp(np.float32(1.0), np.minimum(raw, 254).astype(np.int32) - 127)
        out[raw == 0xFF] = np.nan
        return out.reshape(shape)
    raise ValueError(f"dtype {dtype} has no numpy equivalent")


# ---------------------------------------------------------------------------------------------
# Raw tensors and the header.
# ---------------------------------------------------------------------------------------------


def _nbytes(dtype: str, shape: tuple[int, ...]) -> Optional[int]:
    """Bytes of a tensor, or None when its bits do not fill whole bytes."""
    bits = math.prod(shape) * _DTYPES[dtype][0]
    return bits // 8 if bits % 8 == 0 else None


@dataclasses.dataclass(frozen=True)
class RawTensor:
    """A tensor as the file stores it: a safetensors dtype name, a shape and its bytes.

    Use it to write dtypes numpy has no type for (``BF16``, ``F8_E4M3``, ...) with
    :func:`write`, or to copy tensors byte for byte (:func:`read_raw`).

    Parameters
    ----------
    dtype : str
        A safetensors dtype name (``"F32"``, ``"BF16"``, ``"I8"``, ...).
    shape : tuple of int
    data : bytes
        The elements in C order, little-endian; exactly as many bytes as dtype and shape need.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown safetensors dtype {self.dtype!r}; known: {sorted(_DTYPES)}")
        shape = _check_shape(self.shape)
        if shape is None:
            raise ValueError(f"shape must be a sequence of non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "data", bytes(self.data))
        need = _nbytes(self.dtype, shape)
        if need is None:
            raise ValueError(f"{self.dtype} tensor of shape {shape} does not fill whole bytes")
        if len(self.data) != need:
            raise ValueError(
                f"{self.dtype} tensor of shape {shape} needs {need} bytes, got {len(self.data)}"
            )

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return len(self.data)

    def __repr__(self) -> str:
        return f"RawTensor(dtype={self.dtype!r}, shape={self.shape}, nbytes={self.nbytes})"

    def numpy(self) -> np.ndarray:
        """The tensor as a numpy array (``BF16`` and ``F8_*`` decoded to float32).

        Raises
        ------
        ValueError
            For dtypes numpy cannot represent (``F4``, ``F6_*``).
        """
        return _decode(self.dtype, np.frombuffer(self.data, dtype=np.uint8), self.shape).copy()


def _check_shape(shape: Any) -> Optional[tuple[int, ...]]:
    if not isinstance(shape, (list, tuple)):
        return None
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            return None
        out.append(int(d))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclasses.dataclass(frozen=True)
class _Header:
    path: str
    entries: list[_Entry]  # in data order
    metadata: dict[str, str]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _read_header(f: IO[bytes], path: str) -> _Header:
    """Reads and checks the header of an open safetensors file."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise ValueError(
            f"{path}: not a safetensors file ({size} bytes; the 8-byte header length is missing)"
        )
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER:
        raise ValueError(
            f"{path}: not a safetensors file (header length {n} is above the 100 MB limit)"
        )
    if 8 + n > size:
        raise ValueError(
            f"{path}: header length {n} runs past the end of the {size}-byte file (truncated, "
            "or not a safetensors file)"
        )
    raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a safetensors file (header is not UTF-8)") from None
    if not text.startswith("{"):
        raise ValueError(f"{path}: not a safetensors file (header does not start with '{{')")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise ValueError(
            f"{path}: not a safetensors file (header is not valid JSON: {err})"
        ) from None
    if not isinstance(header, dict):  # pragma: no cover - '{' start makes it an object
        raise ValueError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    entries = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            keys = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise ValueError(
                f"{where}: needs exactly the keys dtype, shape and data_offsets, got {keys}"
            )
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(
                f"{where}: unsupported dtype {dtype!r} (known: {', '.join(sorted(_DTYPES))})"
            )
        shape = _check_shape(info["shape"])
        if shape is None:
            raise ValueError(f"{where}: bad shape {info['shape']!r} (non-negative ints)")
        offsets = _check_shape(info["data_offsets"])
        if offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise ValueError(
                f"{where}: bad data_offsets {info['data_offsets']!r} (needs [begin, end], "
                "0 <= begin <= end)"
            )
        begin, end = offsets
        need = _nbytes(dtype, shape)
        if need is None:
            raise ValueError(f"{where}: a {dtype} tensor of shape {list(shape)} is not whole bytes")
        if end - begin != need:
            raise ValueError(
                f"{where}: a {dtype} tensor of shape {list(shape)} needs {need} bytes, but its "
                f"data_offsets [{begin}, {end}] hold {end - begin}"
            )
        if end > data_len:
            raise ValueError(
                f"{where}: data_offsets [{begin}, {end}] run past the end of the data "
                f"({data_len} bytes; the file is truncated)"
            )
        entries.append(_Entry(name, dtype, shape, begin, end))
    entries.sort(key=lambda e: (e.begin, e.end))
    pos, prev = 0, None
    for e in entries:
        if e.begin != pos:
            what = "overlaps" if e.begin < pos else "leaves a gap after"
            after = f"tensor {prev!r}" if prev is not None else "the start of the data"
            raise ValueError(
                f"{path}: tensor {e.name!r}: data_offsets [{e.begin}, {e.end}] {what} {after} "
                f"(which ends at {pos})"
            )
        pos, prev = e.end, e.name
    if pos != data_len:
        raise ValueError(
            f"{path}: the tensors hold {pos} bytes of data but the file has {data_len} "
            "(unexpected trailing bytes)"
        )
    return _Header(path, entries, dict(metadata), 8 + n)


def _read_bytes(f: IO[bytes], header: _Header, entry: _Entry) -> np.ndarray:
    """A tensor's bytes as a fresh uint8 array."""
    buf = np.empty(entry.nbytes, dtype=np.uint8)
    f.seek(header.data_start + entry.begin)
    got = f.readinto(buf.data) if entry.nbytes else 0  # type: ignore[attr-defined]
    if got != entry.nbytes:
        raise ValueError(f"{header.path}: tensor {entry.name!r}: file ended early (truncated)")
    return buf


def _to_numpy(header: _Header, entry: _Entry, raw: np.ndarray) -> np.ndarray:
    try:
        return _decode(entry.dtype, raw, entry.shape)
    except ValueError:
        raise ValueError(
            f"{header.path}: tensor {entry.name!r} has dtype {entry.dtype}, which numpy cannot "
            "represent (read_raw gives its bytes)"
        ) from None


def _open(path: PathLike) -> IO[bytes]:
    return open(os.fspath(path), "rb")


def read(path: PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to numpy.ndarray
        In the file's data order. ``BF16``, ``F8_E4M3``, ``F8_E5M2`` and ``F8_E8M0`` tensors are
        decoded to float32 (exactly); the others keep their type (``F16`` is float16, ...).

    Raises
    ------
    ValueError
        When the file is not a valid safetensors file (the message names the file and tensor),
        or holds a dtype numpy cannot represent (``F4``, ``F6_*``).
    OSError
        When the file cannot be read.
    """
    with _open(path) as f:
        header = _read_header(f, os.fspath(path))
        return {e.name: _to_numpy(header, e, _read_bytes(f, header, e)) for e in header.entries}


def read_raw(path: PathLike) -> dict[str, RawTensor]:
    """Read every tensor of a safetensors file as stored: dtype name, shape and bytes.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to RawTensor
    """
    with _open(path) as f:
        header = _read_header(f, os.fspath(path))
        return {
            e.name: RawTensor(e.dtype, e.shape, _read_bytes(f, header, e).tobytes())
            for e in header.entries
        }


def read_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty when it has none).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to str
    """
    with _open(path) as f:
        return _read_header(f, os.fspath(path)).metadata


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _beside(e: OSError, path: str) -> OSError:
    """``e`` (from creating a temporary file beside ``path``) re-aimed at ``path``."""
    return type(e)(e.errno, f"cannot write a file there ({e.strerror})", path)


def _output_dir(path: str) -> str:
    """The directory ``path`` will be written in; an ``OSError`` naming ``path`` when it is
    not an existing directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "its directory does not exist", path)
    return directory


def _umask() -> int:
    """The process's umask (mkstemp creates files 0600; the result should get the usual mode)."""
    try:  # Linux: readable without changing it, so safe with other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: PathLike, body: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over ``path``."""
    path = os.fspath(path)
    directory = _output_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise _beside(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            body(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _encode_header(
    items: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str]
) -> bytes:
    """Header bytes (length prefix included) for tensors stored back to back in this order,
    padded with spaces so that the data starts 8-byte aligned, as the safetensors writer does."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, dtype, shape, nbytes in items:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _data_order(items: Iterable[tuple[str, str]]) -> list[str]:
    """Widest dtypes first, then by name, so every tensor starts aligned to its element size
    (the order the safetensors writer uses)."""
    return [n for n, _ in sorted(items, key=lambda it: (-_DTYPES[it[1]][0], it[0]))]


def _check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata must be a mapping of str to str")
    return dict(metadata)


def _as_stored(name: Any, value: Any) -> tuple[str, tuple[int, ...], Any]:
    """``(dtype, shape, buffer)`` of a tensor given to :func:`write`."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__} {name!r}")
    if name == "__metadata__":
        raise ValueError("'__metadata__' is reserved and cannot name a tensor")
    if isinstance(value, RawTensor):
        return value.dtype, value.shape, value.data
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(
            f"tensor {name!r} must be a numpy array or a RawTensor, got {type(value).__name__}"
        )
    a = np.asarray(value)
    dtype = _FROM_NUMPY.get((a.dtype.kind, a.dtype.itemsize))
    if dtype is None:
        raise TypeError(
            f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot store (bool, "
            "(u)int8-64, float16/32/64 and complex64 can; use RawTensor for BF16 and F8)"
        )
    stored = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[dtype][1]))
    return dtype, tuple(a.shape), stored.reshape(-1).view(np.uint8)


def write(
    path: PathLike,
    tensors: Mapping[str, Union[np.ndarray, RawTensor]],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Write tensors to a safetensors file, atomically.

    The file is written to a temporary file in the same directory, flushed to disk and renamed
    over ``path``; on any error ``path`` is left as it was and the temporary file is removed.

    Parameters
    ----------
    path : str or os.PathLike
    tensors : mapping of str to numpy.ndarray or RawTensor
        numpy arrays of bool, (u)int8/16/32/64, float16/32/64 or complex64 (any byte order and
        memory layout); :class:`RawTensor` for other safetensors dtypes (``BF16``, ``F8_*``).
    metadata : mapping of str to str, optional
        Stored as ``__metadata__``.

    Raises
    ------
    TypeError
        For a tensor numpy type safetensors cannot store, or non-string metadata.
    ValueError
        For the reserved name ``__metadata__``.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
    meta = _check_metadata(metadata)
    stored = {name: _as_stored(name, value) for name, value in tensors.items()}
    order = _data_order((name, s[0]) for name, s in stored.items())
    items = []
    for name in order:
        dtype, shape, buf = stored[name]
        items.append((name, dtype, shape, len(buf) if isinstance(buf, bytes) else buf.nbytes))
    head = _encode_header(items, meta)

    def body(f: IO[bytes]) -> None:
        f.write(head)
        for name in order:
            buf = stored[name][2]
            f.write(buf if isinstance(buf, bytes) else memoryview(buf))

    _atomic_write(path, body)


# ---------------------------------------------------------------------------------------------
# Quantization of whole files.
# ---------------------------------------------------------------------------------------------

ACTIONS = ("quantized", "kept", "excluded", "kept-low-sqnr")


@dataclasses.dataclass(frozen=True)
class TensorReport:
    """What :func:`quantize_file` did with one tensor.

    Attributes
    ----------
    name : str
    shape : tuple of int
    dtype : str
        The source dtype (safetensors name).
    bytes_before : int
        The tensor's bytes in the source.
    bytes_after : int
        Its bytes in the result (int8 values plus float32 scales when quantized).
    sqnr_db : float or None
        Weight SQNR of the int8 quantization, ``10 log10(sum w^2 / sum (w - dequant(w))^2)``
        (``inf`` when exact); None when not computed (not a quantizable tensor, or excluded).
    action : str
        ``"quantized"``, ``"kept"`` (not a 2-D floating tensor), ``"excluded"`` (matched an
        exclude pattern) or ``"kept-low-sqnr"`` (SQNR below ``min_sqnr``; kept as it was).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes_before: int
    bytes_after: int
    sqnr_db: Optional[float]
    action: str


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _fmt_sqnr(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return "inf" if math.isinf(s) else f"{s:.2f}"


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """The result of :func:`quantize_file`: one :class:`TensorReport` per source tensor.

    Attributes
    ----------
    source, destination : str
    per_channel : bool
    min_sqnr : float or None
    rows : tuple of TensorReport
        In the source file's order.
    file_bytes_before, file_bytes_after : int
        Sizes of the two files, headers included.
    """

    source: str
    destination: str
    per_channel: bool
    min_sqnr: Optional[float]
    rows: tuple[TensorReport, ...]
    file_bytes_before: int
    file_bytes_after: int

    @property
    def bytes_before(self) -> int:
        """Tensor bytes in the source."""
        return sum(r.bytes_before for r in self.rows)

    @property
    def bytes_after(self) -> int:
        """Tensor bytes in the result."""
        return sum(r.bytes_after for r in self.rows)

    @property
    def quantized(self) -> list[str]:
        """Names of the tensors that became int8."""
        return [r.name for r in self.rows if r.action == "quantized"]

    def count(self, action: str) -> int:
        """How many tensors got ``action``."""
        return sum(r.action == action for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): the fields, the rows as dicts, and the totals."""
        d = dataclasses.asdict(self)
        d["rows"] = [dataclasses.asdict(r) for r in self.rows]
        d["bytes_before"], d["bytes_after"] = self.bytes_before, self.bytes_after
        return d

    def totals(self) -> str:
        """One line: tensor counts by action, bytes before and after, SQNR range."""
        parts = [f"{self.count('quantized')} quantized"]
        for action, label in (
            ("kept-low-sqnr", "kept for low SQNR"),
            ("excluded", "excluded"),
            ("kept", "kept (not 2-D float)"),
        ):
            if self.count(action):
                parts.append(f"{self.count(action)} {label}")
        before, after = self.bytes_before, self.bytes_after
        ratio = f" ({after / before:.1%})" if before else ""
        line = (
            f"total: {len(self.rows)} tensors, {', '.join(parts)}; tensor data "
            f"{_fmt_bytes(before)} -> {_fmt_bytes(after)}{ratio}; file "
            f"{self.file_bytes_before:,} -> {self.file_bytes_after:,} bytes"
        )
        sq = [r.sqnr_db for r in self.rows if r.action == "quantized" and r.sqnr_db is not None]
        if sq:
            line += f"; weight SQNR {_fmt_sqnr(min(sq))} to {_fmt_sqnr(max(sq))} dB"
        return line

    def table(self) -> str:
        """The per-tensor table and the totals line, as text."""
        head = ("tensor", "shape", "dtype", "before", "after", "SQNR dB", "action")
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "()",
                r.dtype,
                _fmt_bytes(r.bytes_before),
                _fmt_bytes(r.bytes_after),
                _fmt_sqnr(r.sqnr_db),
                r.action,
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        right = {3, 4, 5}

        def fmt(row: tuple[str, ...]) -> str:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        lines = [fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(row) for row in body]
        lines.append(self.totals())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _sqnr_db(w: np.ndarray, values: np.ndarray, scales: np.ndarray) -> float:
    """``10 log10(sum w^2 / sum (w - values * scale)^2)`` in float64, ``inf`` when exact."""
    signal = noise = 0.0
    rows = max(1, (1 << 20) // max(1, w.shape[1]))
    per_row = scales.shape == (w.shape[0],)
    for r0 in range(0, w.shape[0], rows):
        wc = w[r0 : r0 + rows].astype(np.float64)
        sc = scales[r0 : r0 + rows, None] if per_row else scales[None, :1]
        err = wc - values[r0 : r0 + rows].astype(np.float64) * sc.astype(np.float64)
        signal += float(np.sum(wc * wc))
        noise += float(np.sum(err * err))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:  # pragma: no cover - zero weights quantize exactly
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _copy_range(src: IO[bytes], dst: IO[bytes], start: int, n: int, where: str) -> None:
    src.seek(start)
    left = n
    while left:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise ValueError(f"{where}: file ended early (truncated)")
        dst.write(chunk)
        left -= len(chunk)


def quantize_file(
    src: PathLike,
    dst: PathLike,
    *,
    per_channel: bool = True,
    exclude: Union[str, Iterable[str]] = (),
    min_sqnr: Optional[float] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> QuantizeReport:
    """Quantize every 2-D floating-point tensor of a safetensors file to int8.

    Each 2-D ``F32``, ``F16``, ``BF16`` or ``F64`` tensor not excluded is quantized as
    :func:`dynaq.pack_weight` does (symmetric int8, ``scale = max|w| / 127`` per output channel
    (row) or for the whole tensor): the int8 values are stored as ``I8`` under the tensor's
    name and the float32 scales as ``<name>.dynaq_scale``, of shape (rows,) or (1,). Every other
    tensor is copied byte for byte. The metadata keeps the source's and adds
    ``dynaq.format`` (:data:`FORMAT_VERSION`), ``dynaq.quantized`` (a JSON list of the quantized
    names), ``dynaq.per_channel`` and ``dynaq.version``. The file is written atomically.

    Parameters
    ----------
    src, dst : str or os.PathLike
        May be the same path (the source is replaced only once the result is complete).
    per_channel : bool
        One scale per output channel (default) or one per tensor.
    exclude : str or iterable of str
        ``fnmatch`` patterns (case-sensitive); a tensor whose name matches one stays as it is.
    min_sqnr : float, optional
        Keep (as they are, e.g. float32) the tensors whose weight SQNR in dB falls below this:
        automatic mixed precision.
    progress : callable, optional
        Called after each tensor as ``progress(bytes_done, bytes_total, name)``, in source
        bytes.

    Returns
    -------
    QuantizeReport

    Raises
    ------
    ValueError
        When ``src`` is not a valid safetensors file, is already quantized by dynaq, has a
        tensor name ending in ``.dynaq_scale``, or a tensor to quantize holds NaN or infinity
        (exclude it); the message names the file and tensor. ``dst`` is then left untouched.
    """
    from . import __version__
    from ._dynaq import pack_weight

    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("exclude must be a pattern or an iterable of patterns (str)")
    if min_sqnr is not None:
        min_sqnr = float(min_sqnr)
        if math.isnan(min_sqnr):
            raise ValueError("min_sqnr must be a number of dB, got NaN")
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    rows: list[TensorReport] = []
    # name -> (dtype, shape, offset in the spool, bytes)
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    with _open(src) as f:
        header = _read_header(f, src_s)
        if _META_FORMAT in header.metadata:
            raise ValueError(f"{src_s}: already quantized by dynaq (metadata {_META_FORMAT})")
        for e in header.entries:
            if e.name.endswith(SCALE_SUFFIX):
                raise ValueError(
                    f"{src_s}: tensor {e.name!r}: names ending in {SCALE_SUFFIX!r} are reserved "
                    "for dynaq's scales"
                )
        total = sum(e.nbytes for e in header.entries)
        done = 0
        dst_dir = _output_dir(dst_s)
        try:
            spool_file = tempfile.TemporaryFile(dir=dst_dir)
        except OSError as err:
            raise _beside(err, dst_s) from None
        with spool_file as spool:

            def put(name: str, dtype: str, shape: tuple[int, ...], data: Any) -> int:
                pos = spool.tell()
                spool.write(data)
                out[name] = (dtype, shape, pos, spool.tell() - pos)
                return out[name][3]

            def copy(e: _Entry) -> None:
                pos = spool.tell()
                where = f"{src_s}: tensor {e.name!r}"
                _copy_range(f, spool, header.data_start + e.begin, e.nbytes, where)
                out[e.name] = (e.dtype, e.shape, pos, e.nbytes)

            for e in header.entries:
                candidate = e.dtype in _QUANTIZABLE and len(e.shape) == 2
                sqnr: Optional[float] = None
                if not candidate:
                    action = "kept"
                elif any(fnmatch.fnmatchcase(e.name, p) for p in patterns):
                    action = "excluded"
                else:
                    w = _to_numpy(header, e, _read_bytes(f, header, e))
                    if not np.isfinite(w).all():
                        raise ValueError(
                            f"{src_s}: tensor {e.name!r} contains NaN or infinity; exclude it "
                            "to keep it as it is"
                        )
                    if e.dtype == "F64" and np.abs(w).max(initial=0.0) > np.finfo(np.float32).max:
                        raise ValueError(
                            f"{src_s}: tensor {e.name!r} has values beyond float32's range; "
                            "exclude it to keep it as it is"
                        )
                    values, scales = pack_weight(w, per_channel=per_channel).unpack()
                    sqnr = _sqnr_db(w, values, scales)
                    del w
                    action = (
                        "quantized" if min_sqnr is None or sqnr >= min_sqnr else "kept-low-sqnr"
                    )
                    if action == "quantized":
                        after = put(e.name, "I8", e.shape, values.reshape(-1).view(np.uint8))
                        scales = np.ascontiguousarray(scales, dtype="<f4")
                        after += put(e.name + SCALE_SUFFIX, "F32", scales.shape, scales.tobytes())
                    del values
                if action != "quantized":
                    copy(e)
                    after = e.nbytes
                rows.append(TensorReport(e.name, e.shape, e.dtype, e.nbytes, after, sqnr, action))
                done += e.nbytes
                if progress is not None:
                    progress(done, total, e.name)
            metadata = dict(header.metadata)
            metadata[_META_FORMAT] = str(FORMAT_VERSION)
            metadata[_META_QUANTIZED] = json.dumps(
                [r.name for r in rows if r.action == "quantized"]
            )
            metadata[_META_PER_CHANNEL] = "true" if per_channel else "false"
            metadata[_META_VERSION] = str(__version__)
            order = _data_order((name, v[0]) for name, v in out.items())
            head = _encode_header([(n, out[n][0], out[n][1], out[n][3]) for n in order], metadata)

            def body(g: IO[bytes]) -> None:
                g.write(head)
                for name in order:
                    _, _, pos, n = out[name]
                    _copy_range(spool, g, pos, n, "temporary file")

            _atomic_write(dst_s, body)
        file_before = os.fstat(f.fileno()).st_size
    return QuantizeReport(
        source=src_s,
        destination=dst_s,
        per_channel=bool(per_channel),
        min_sqnr=min_sqnr,
        rows=tuple(rows),
        file_bytes_before=file_before,
        file_bytes_after=len(head) + sum(v[3] for v in out.values()),
    )


# ---------------------------------------------------------------------------------------------
# Loading quantized files.
# ---------------------------------------------------------------------------------------------


def load_quantized(path: PathLike) -> dict[str, Any]:
    """Load a file written by :func:`quantize_file`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict of str to PackedWeight or numpy.ndarray
        Each quantized tensor as a :class:`dynaq.PackedWeight` (built with
        ``PackedWeight.from_quantized(values, scales)``, so it computes exactly what the
        quantizer produced); every other tensor as a numpy array, as :func:`read` gives it. The
        ``.dynaq_scale`` tensors are consumed, not returned.

    Raises
    ------
    ValueError
        When the file is not a dynaq-quantized safetensors file, is from a newer format, or a
        quantized tensor or its scales are missing or malformed (the message names the tensor).
    """
    from ._dynaq import PackedWeight

    p = os.fspath(path)
    with _open(p) as f:
        header = _read_header(f, p)
        meta = header.metadata
        if _META_FORMAT not in meta:
            raise ValueError(
                f"{p}: not a dynaq-quantized file (no {_META_FORMAT} metadata; make one with "
                "python -m dynaq quantize)"
            )
        try:
            version = int(meta[_META_FORMAT])
        except ValueError:
            raise ValueError(f"{p}: bad {_META_FORMAT} metadata {meta[_META_FORMAT]!r}") from None
        if version > FORMAT_VERSION or version < 1:
            raise ValueError(
                f"{p}: dynaq file format {version} is not supported (this dynaq reads "
                f"{FORMAT_VERSION})"
            )
        try:
            names = json.loads(meta.get(_META_QUANTIZED, "[]"))
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: bad {_META_QUANTIZED} metadata (a JSON list of names)")
        per_channel = meta.get(_META_PER_CHANNEL, "true") != "false"
        entries = {e.name: e for e in header.entries}
        quantized = set(names)
        for e in header.entries:
            if e.name.endswith(SCALE_SUFFIX) and e.name[: -len(SCALE_SUFFIX)] not in quantized:
                raise ValueError(f"{p}: tensor {e.name!r} has no quantized tensor to scale")
        result: dict[str, Any] = {}
        for e in header.entries:
            if e.name.endswith(SCALE_SUFFIX):
                continue
            arr = _to_numpy(header, e, _read_bytes(f, header, e))
            if e.name not in quantized:
                result[e.name] = arr
                continue
            where = f"{p}: tensor {e.name!r}"
            if e.dtype != "I8" or len(e.shape) != 2:
                raise ValueError(
                    f"{where}: quantized tensors are 2-D I8, got {e.dtype} of shape {list(e.shape)}"
                )
            se = entries.get(e.name + SCALE_SUFFIX)
            if se is None:
                raise ValueError(f"{where}: its scales {e.name + SCALE_SUFFIX!r} are missing")
            want = (e.shape[0],) if per_channel else (1,)
            if se.dtype != "F32" or se.shape != want:
                raise ValueError(
                    f"{where}: scales must be F32 of shape {list(want)}, got {se.dtype} of shape "
                    f"{list(se.shape)}"
                )
            scales = _to_numpy(header, se, _read_bytes(f, header, se))
            try:
                result[e.name] = PackedWeight.from_quantized(
                    arr, scales if per_channel else scales.reshape(())
                )
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from None
        missing = quantized - set(result)
        if missing:
            raise ValueError(f"{p}: quantized tensors {sorted(missing)} are missing")
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
    from ._dynaq import PackedWeight
    from .layers import Linear

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
