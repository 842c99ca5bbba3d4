"""Reading and writing safetensors files: the tensors as numpy arrays or as stored bytes, and
atomic writes. The format's rules (header length, JSON, dtypes, shapes, offsets, data order) are
checked by the native module, the same code that reads and writes dynaq's own blobs
(``rust/dynaq-core/src/safetensors/``); this module does the file I/O around them and decodes
the float formats numpy lacks (``BF16``, ``F8_*``).

Files are written atomically: a temporary file in the destination's directory, flushed to
disk, then renamed over the destination, so an error never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
import tempfile
from collections.abc import Mapping
from typing import IO, Any, Callable, Optional, Union

import numpy as np

from .. import _dynaq

PathLike = Union[str, "os.PathLike[str]"]

# Bits per element of each safetensors dtype, from the native format rules.
_BITS: dict[str, int] = dict(_dynaq.safetensors_dtypes())
# The numpy dtype each is stored as, or None when it is decoded to float32 (or not at all).
_NUMPY: dict[str, Optional[str]] = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "U16": "<u2",
    "I16": "<i2",
    "U32": "<u4",
    "I32": "<i4",
    "U64": "<u8",
    "I64": "<i8",
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "C64": "<c8",
}
# numpy (kind, itemsize) -> dtype name, for writing.
_FROM_NUMPY = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in _NUMPY.items()}


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
    numpy_dtype = _NUMPY.get(dtype)
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
    count = 1
    for d in shape:
        count *= d
    bits = count * _BITS[dtype]
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
        if self.dtype not in _BITS:
            raise ValueError(f"unknown safetensors dtype {self.dtype!r}; known: {sorted(_BITS)}")
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


def _read_header(f: IO[bytes], path: str) -> _Header:
    """Reads and checks the header of an open safetensors file (``ValueError`` naming the file
    otherwise)."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    try:
        n = _dynaq.safetensors_header_len(f.read(8), size)
        entries, metadata = _dynaq.parse_safetensors_header(f.read(n), size - 8 - n)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return _Header(path, [_Entry(*e) for e in entries], metadata, 8 + n)


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


def _at(e: OSError, path: str) -> OSError:
    """``e`` (from writing a temporary file for ``path``: a full disk, a quota) re-aimed at
    ``path``, the file the user asked for."""
    return type(e)(e.errno, e.strerror or str(e), path)


class _WritingFor:
    """A temporary file being written for ``path``: its errors name ``path``."""

    def __init__(self, f: IO[bytes], path: str) -> None:
        self._f, self._path = f, path

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            raise _at(e, self._path) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _output_target(path: str) -> str:
    """The file that writing ``path`` replaces: ``path``, or the file a symbolic link there
    points to (the link stays a link). An ``OSError`` naming ``path`` when that file's
    directory does not exist, or when it exists but is not a regular file: a directory, or a
    device, FIFO or socket that an atomic rename would replace with a plain file."""
    if path == "":
        raise FileNotFoundError(errno.ENOENT, "empty path", path)
    # The directory as the system resolves it (not lexically: "missing/../f" has none).
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise FileNotFoundError(errno.ENOENT, "its directory does not exist", path)
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not os.path.isdir(os.path.dirname(target)):
            raise FileNotFoundError(
                errno.ENOENT, "links into a directory that does not exist", path
            )
    else:
        target = os.path.join(
            os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path)
        )
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory (give the file to write)", path)
    if not stat.S_ISREG(mode):
        raise OSError(
            errno.EINVAL, "is not a regular file (a device, FIFO or socket): not replaced", path
        )
    return target


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
    target = _output_target(path)
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise _beside(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            body(_WritingFor(f, path))  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.filename in (None, tmp):
            raise _at(e, path) from None
        raise
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
    """Header bytes (length prefix included) for tensors ``(name, dtype, shape, nbytes)`` stored
    back to back in this order, padded so that the data starts 8-byte aligned."""
    rows = [(n, d, list(s), b) for n, d, s, b in items]
    return bytes(_dynaq.encode_safetensors_header(rows, list(metadata.items())))


def _data_order(items: list[tuple[str, str]]) -> list[str]:
    """Widest dtypes first, then by name, so every tensor starts aligned to its element size
    (the order the safetensors writer uses)."""
    return list(_dynaq.safetensors_data_order(items))


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
    stored = np.ascontiguousarray(a, dtype=np.dtype(_NUMPY[dtype]))
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
    order = _data_order([(name, s[0]) for name, s in stored.items()])
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
