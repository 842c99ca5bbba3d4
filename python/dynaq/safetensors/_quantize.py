"""Quantizing whole safetensors files: every 2-D float tensor to int8 values and float32 scales,
stored as plain tensors under dynaq's one on-disk form (``W`` and ``W_scale``), everything else
copied byte for byte; and the report of what was done."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from typing import IO, Any, Callable, Optional, Union

import numpy as np

from .. import _dynaq
from .._text import format_db, format_table
from ..mixed.plan import Plan
from ..mixed.sensitivity import sqnr_db
from ._choose import Chooser
from ._io import (
    PathLike,
    _atomic_write,
    _beside,
    _data_order,
    _encode_header,
    _Entry,
    _open,
    _output_target,
    _read_bytes,
    _read_header,
    _to_numpy,
    _WritingFor,
)

#: The format version of the files written (metadata ``"dynaq.format"``): the one version of
#: every form dynaq writes.
FORMAT_VERSION: int = _dynaq.FORMAT_VERSION

_CHUNK = 1 << 24  # bytes per read/write when copying tensors
# Floating dtypes that quantize_file turns into int8 (2-D tensors only).
_QUANTIZABLE = ("F32", "F16", "BF16", "F64")


ACTIONS = ("quantized", "kept", "excluded", "kept-low-sqnr", "kept-float")
#: The metadata key of the plan that chose a file's formats (a :class:`dynaq.mixed.Plan` as JSON).
PLAN_KEY = "dynaq.plan"


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
        exclude pattern), ``"kept-low-sqnr"`` (no format reaches ``min_sqnr``; kept as it was)
        or ``"kept-float"`` (a size budget or a plan kept it as it was).
    format : str or None
        The format it was stored in (``"int8"``, ``"int4-g64"``, ...), or that a budget
        measured it for; None when not quantized and not measured.
    layer_sqnr_db : float or None
        With a budget: its output SQNR in that format on synthetic activations (what the
        budget compares); for a tensor kept float, the best that a quantized format reached.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes_before: int
    bytes_after: int
    sqnr_db: Optional[float]
    action: str
    format: Optional[str] = None
    layer_sqnr_db: Optional[float] = None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


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
    bits : int
        8 or 4.
    group_size : int or None
        The 4-bit group size (None per channel, and for int8).
    """

    source: str
    destination: str
    per_channel: bool
    min_sqnr: Optional[float]
    rows: tuple[TensorReport, ...]
    file_bytes_before: int
    file_bytes_after: int
    bits: int = 8
    group_size: Optional[int] = None
    plan: Optional[Plan] = None

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
        """Names of the tensors that were quantized."""
        return [r.name for r in self.rows if r.action == "quantized"]

    def count(self, action: str) -> int:
        """How many tensors got ``action``."""
        return sum(r.action == action for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): the fields, the rows as dicts, and the totals."""
        d = dataclasses.asdict(dataclasses.replace(self, plan=None))
        d["rows"] = [dataclasses.asdict(r) for r in self.rows]
        d["plan"] = None if self.plan is None else self.plan.to_dict()
        d["bytes_before"], d["bytes_after"] = self.bytes_before, self.bytes_after
        return d

    def totals(self) -> str:
        """One line: tensor counts by action, bytes before and after, SQNR range."""
        group = f"group {self.group_size}" if self.group_size else "per channel"
        fmt = "" if self.bits == 8 else f" (4-bit, {group})"
        if self.plan is not None:
            counts: dict[str, int] = {}
            for r in self.rows:
                if r.action == "quantized" and r.format is not None:
                    counts[r.format] = counts.get(r.format, 0) + 1
            fmt = " (" + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) + ")"
        parts = [f"{self.count('quantized')} quantized{fmt}"]
        for action, label in (
            ("kept-low-sqnr", "kept for low SQNR"),
            ("kept-float", "kept float by the plan"),
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
            line += f"; weight SQNR {format_db(min(sq))} to {format_db(max(sq))} dB"
        return line

    def table(self) -> str:
        """The per-tensor table and the totals line, as text."""
        head = ("tensor", "shape", "dtype", "before", "after", "format", "SQNR dB", "out dB",
                "action")  # fmt: skip
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "()",
                r.dtype,
                _fmt_bytes(r.bytes_before),
                _fmt_bytes(r.bytes_after),
                r.format or "-",
                format_db(r.sqnr_db),
                format_db(r.layer_sqnr_db),
                r.action,
            )
            for r in self.rows
        ]
        lines = format_table(head, body, right=(3, 4, 6, 7))
        lines.append(self.totals())
        if self.plan is not None:
            lines.extend(self.plan.summary())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _sqnr_db(w: np.ndarray, pw: Any) -> float:
    """``10 log10(sum w^2 / sum (w - dequantized)^2)`` in float64, ``inf`` when exact; in
    blocks of rows (about 2^20 values each), so that float64 copies stay small."""
    signal = noise = 0.0
    if pw.bits == 8:
        values, scales = pw.unpack()
        per_row = scales.shape == (w.shape[0],)
    else:
        deq = pw.dequantize()
    rows = max(1, (1 << 20) // max(1, w.shape[1]))
    for r0 in range(0, w.shape[0], rows):
        wc = w[r0 : r0 + rows].astype(np.float64)
        if pw.bits == 8:
            sc = scales[r0 : r0 + rows, None] if per_row else scales[None, :1]
            approx = values[r0 : r0 + rows].astype(np.float64) * sc.astype(np.float64)
        else:
            approx = deq[r0 : r0 + rows].astype(np.float64)
        err = wc - approx
        signal += float(np.sum(wc * wc))
        noise += float(np.sum(err * err))
    return sqnr_db(signal, noise)


def _copy_range(src: IO[bytes], dst: IO[bytes], start: int, n: int, where: str) -> None:
    src.seek(start)
    left = n
    while left:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise ValueError(f"{where}: file ended early (truncated)")
        dst.write(chunk)
        left -= len(chunk)


#: The names transformers' ``from_pretrained`` reads a model folder's weights from
#: (``model.safetensors``, its shards, ``model.<variant>.safetensors``). A dynaq file under one of
#: them, beside a ``config.json``, would load in a plain ``from_pretrained`` with its int8 values
#: taken for float weights, silently; ``model.dynaq.safetensors`` is the name to use.
_TRANSFORMERS_WEIGHTS = re.compile(r"model(?:\.(?P<variant>[^.]+))?(?:-\d+-of-\d+)?\.safetensors")


def _refuse_transformers_weights(dst: str) -> None:
    for path in {dst, os.path.realpath(dst)}:
        folder, name = os.path.split(path)
        m = _TRANSFORMERS_WEIGHTS.fullmatch(name)
        if m is None or m.group("variant") == "dynaq":
            continue
        if os.path.isfile(os.path.join(folder or ".", "config.json")):
            raise ValueError(
                f"{dst}: transformers loads this name as the float weights of the model in "
                f"{folder or '.'!r} (config.json is there), and would read dynaq's int8 values "
                "as floats; write model.dynaq.safetensors instead, and load it with "
                '`import dynaq.transformers` and from_pretrained(folder, variant="dynaq", '
                "quantization_config=DynaqConfig())"
            )


def quantize_file(
    src: PathLike,
    dst: PathLike,
    *,
    per_channel: bool = True,
    exclude: Union[str, Iterable[str]] = (),
    min_sqnr: Optional[float] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
    bits: Optional[int] = None,
    group_size: Optional[int] = ...,  # type: ignore[assignment]
    symmetric: Optional[bool] = None,
    method: Optional[str] = None,
    max_bits_per_weight: Optional[float] = None,
    formats: Optional[Iterable[Any]] = None,
    plan: Any = None,
) -> QuantizeReport:
    """Quantize every 2-D floating-point tensor of a safetensors file to int8 (or 4 bits), or
    each to the format a budget or a plan gives it.

    Each 2-D ``F32``, ``F16``, ``BF16`` or ``F64`` tensor not excluded is quantized as
    :func:`dynaq.pack_weight` does (symmetric int8, ``scale = max|w| / 127`` per output channel
    (row) or for the whole tensor): the int8 values are stored as ``I8`` under the tensor's
    name ``W`` and the float32 scales as ``W_scale``, of shape (rows,) or () (dynaq's one
    on-disk form, the names of the torch modules' state dicts too). With ``bits=4`` each is
    quantized as ``dynaq.pack_weight(w, bits=4, group_size=..., symmetric=..., method=...)``
    does and stored as ``W`` (uint8, two rows per byte), ``W_scale`` and, as the weight needs
    them, ``W_min``, ``W_gscale``, ``W_gmin`` (format version 3). Every other tensor is copied
    byte for byte. The metadata keeps the source's and adds ``dynaq.format``
    (:data:`FORMAT_VERSION`), ``dynaq.quantized`` (a JSON list of the quantized names),
    ``dynaq.writer`` and, when a budget or plan chose the formats, ``dynaq.plan`` (the
    :class:`dynaq.mixed.Plan` as JSON). The file is written atomically.

    Automatic mixed precision, from the weights alone (each tensor a layer; its error measured
    on synthetic activations, see :func:`dynaq.mixed.measure_weights`): ``max_bits_per_weight``
    picks a format per tensor among ``formats`` (every 4-bit group size, int8 and float by
    default) for the least mean relative output error within that many stored bits per weight
    of the tensors considered; ``min_sqnr`` gives each tensor the smallest format whose output
    SQNR reaches it (among ``formats``, or between the format ``bits`` and friends name and
    float when those are given). ``plan`` applies a plan chosen before.

    Parameters
    ----------
    src, dst : str or os.PathLike
        May be the same path (the source is replaced only once the result is complete).
    per_channel : bool
        int8: one scale per output channel (default) or one per tensor.
    exclude : str or iterable of str
        ``fnmatch`` patterns (case-sensitive); a tensor whose name matches one stays as it is.
    min_sqnr : float, optional
        An accuracy budget in dB (see above); tensors it keeps get action ``"kept-low-sqnr"``.
    progress : callable, optional
        Called after each tensor as ``progress(bytes_done, bytes_total, name)``, in source
        bytes (a budget reads the file twice: the total counts both).
    bits, group_size, symmetric, method
        The weights' format, as :func:`dynaq.pack_weight` takes them (8 bits by default).
    max_bits_per_weight : float, optional
        A size budget (see above); tensors it keeps get action ``"kept-float"``.
    formats : iterable, optional
        A budget's candidates (names such as ``"int4-g64"``, dicts, or
        :class:`dynaq.mixed.Format`).
    plan : dynaq.mixed.Plan or dict, optional
        Each tensor's format by name (tensors it does not name stay as they are, action
        ``"kept-float"``).

    Returns
    -------
    QuantizeReport

    Raises
    ------
    ValueError
        When ``src`` is not a valid safetensors file, is already quantized by dynaq, holds both
        a tensor to quantize ``W`` and a tensor named ``W_scale`` (or ``W_min``, ``W_gscale``,
        ``W_gmin`` with 4 bits), a tensor to quantize holds NaN or infinity (exclude it), or
        the group size does not divide a tensor's columns; the message names the file and
        tensor. Also for options :func:`dynaq.pack_weight` refuses, a budget that cannot be met,
        two budgets, and a plan naming a tensor the file has no candidate for. Also when
        ``dst`` is named as transformers names a model's weights (``model.safetensors``, its
        shards) in a folder with a ``config.json``: a plain ``from_pretrained`` would read the
        int8 values as floats (use ``model.dynaq.safetensors``). ``dst`` is then left
        untouched.
    """
    from .. import __version__

    patterns = _patterns(exclude)
    if min_sqnr is not None:
        if isinstance(min_sqnr, bool) or not isinstance(min_sqnr, (int, float, np.number)):
            raise TypeError(f"min_sqnr must be a number of dB, got {min_sqnr!r}")
        min_sqnr = float(min_sqnr)
        if math.isnan(min_sqnr):
            raise ValueError("min_sqnr must be a number of dB, got NaN")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    explicit = bits is not None or group_size is not ... or symmetric is not None
    # One scale per tensor is an int8 format of its own: a budget then chooses it or float.
    explicit = explicit or method is not None or not per_channel
    opts: dict[str, Any] = {"bits": 8 if bits is None else bits, "symmetric": symmetric,
                            "method": method}  # fmt: skip
    if group_size is not ...:
        opts["group_size"] = group_size
    # The options are checked before any file is touched.
    _dynaq.pack_weight(np.zeros((1, 128), np.float32), per_channel=per_channel, **opts)
    chooser = Chooser.make(opts, explicit, min_sqnr, max_bits_per_weight, formats, plan)
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    _refuse_transformers_weights(dst_s)
    rows: list[TensorReport] = []
    # name -> (dtype, shape, offset in the spool, bytes)
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    with _open(src) as f:
        header = _read_header(f, src_s)
        if _dynaq.FORMAT_KEY in header.metadata:
            raise ValueError(f"{src_s}: already quantized by dynaq (metadata {_dynaq.FORMAT_KEY})")
        candidates = _candidates(header, patterns, chooser.may_be_4_bit, src_s)
        total = sum(e.nbytes for e in header.entries) * (2 if chooser.measures else 1)
        done = 0
        if chooser.measures:
            for e in header.entries:
                if candidates[e.name] == "candidate":
                    chooser.measure(e.name, _weight(f, header, e, src_s), e.dtype, per_channel)
                done += e.nbytes
                if progress is not None:
                    progress(done, total, e.name)
        chosen = chooser.choose([n for n, c in candidates.items() if c == "candidate"], src_s)
        four_bit = False
        dst_dir = os.path.dirname(_output_target(dst_s))
        try:
            spool_file = tempfile.TemporaryFile(dir=dst_dir)
        except OSError as err:
            raise _beside(err, dst_s) from None
        with spool_file as raw_spool:
            spool = _WritingFor(raw_spool, dst_s)  # a full disk names dst

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
                action = candidates[e.name]
                sqnr: Optional[float] = None
                fmt = chosen.get(e.name)
                if action == "candidate":
                    w = _weight(f, header, e, src_s)
                    options = opts if fmt is None else (fmt.options() or opts)
                    try:
                        pw = _dynaq.pack_weight(w, per_channel=per_channel, **options)
                    except ValueError as err:
                        raise ValueError(f"{src_s}: tensor {e.name!r}: {err}") from None
                    sqnr = _sqnr_db(w, pw)
                    del w
                    action = chooser.action(fmt)
                    if action == "quantized":
                        after = 0
                        for name, t in _dynaq.weight_tensors(pw, e.name).items():
                            dtype = {"int8": "I8", "uint8": "U8", "float32": "F32"}[t.dtype.name]
                            after += put(name, dtype, t.shape, t.tobytes())
                        four_bit |= pw.bits == 4
                    del pw
                if action != "quantized":
                    copy(e)
                    after = e.nbytes
                rows.append(TensorReport(
                    e.name, e.shape, e.dtype, e.nbytes, after, sqnr, action,
                    format=None if fmt is None and action != "quantized" else
                    (fmt or chooser.uniform).name,
                    layer_sqnr_db=chooser.layer_sqnr(e.name, fmt),
                ))  # fmt: skip
                done += e.nbytes
                if progress is not None:
                    progress(done, total, e.name)
            metadata = dict(header.metadata)
            version = _dynaq.FORMAT_VERSION_INT4 if four_bit else FORMAT_VERSION
            metadata[_dynaq.FORMAT_KEY] = str(version)
            metadata[_dynaq.QUANTIZED_KEY] = json.dumps(
                [r.name for r in rows if r.action == "quantized"]
            )
            metadata["dynaq.writer"] = f"dynaq {__version__}"
            if chooser.plan is not None:
                metadata[PLAN_KEY] = chooser.plan.to_json()
            order = _data_order([(name, v[0]) for name, v in out.items()])
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
        bits=int(opts["bits"]),
        group_size=opts.get("group_size", 32) if opts["bits"] == 4 else None,
        plan=chooser.plan,
    )


def _patterns(exclude: Any) -> tuple[str, ...]:
    if isinstance(exclude, str):
        patterns: tuple[Any, ...] = (exclude,)
    elif isinstance(exclude, Iterable) and not isinstance(exclude, bytes):
        patterns = tuple(exclude)
    else:
        patterns = (exclude,)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"exclude must be a pattern or an iterable of patterns (str), got {exclude!r}"
        )
    return patterns


def _candidates(
    header: Any, patterns: tuple[str, ...], may_be_4_bit: bool, src: str
) -> dict[str, str]:
    """Each tensor's fate before any is read: ``"candidate"`` (to quantize, or to choose a
    format for), ``"kept"`` (not a 2-D float) or ``"excluded"``; refuses a candidate whose
    stored parts would clash with a tensor of the file."""
    names = {e.name for e in header.entries}
    suffixes = _dynaq.WEIGHT_PART_SUFFIXES if may_be_4_bit else [_dynaq.SCALE_SUFFIX]
    out = {}
    for e in header.entries:
        if e.dtype not in _QUANTIZABLE or len(e.shape) != 2:
            out[e.name] = "kept"
        elif any(fnmatch.fnmatchcase(e.name, p) for p in patterns):
            out[e.name] = "excluded"
        elif clash := [e.name + s for s in suffixes if e.name + s in names]:
            raise ValueError(
                f"{src}: tensor {e.name!r}: its scales would be stored as {clash[0]!r}, which "
                "the file already has (exclude one of them)"
            )
        else:
            out[e.name] = "candidate"
    return out


def _weight(f: IO[bytes], header: Any, e: _Entry, src: str) -> np.ndarray:
    """A candidate tensor read, finite and within float32's range."""
    w = _to_numpy(header, e, _read_bytes(f, header, e))
    if not np.isfinite(w).all():
        raise ValueError(
            f"{src}: tensor {e.name!r} contains NaN or infinity; exclude it to keep it as it is"
        )
    if e.dtype == "F64" and np.abs(w).max(initial=0.0) > np.finfo(np.float32).max:
        raise ValueError(
            f"{src}: tensor {e.name!r} has values beyond float32's range; exclude it to keep "
            "it as it is"
        )
    return w
