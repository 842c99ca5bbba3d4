"""``python -m dynaq quantize IN OUT``: quantize the 2-D float tensors of a safetensors file to int8
(or 4 bits with ``--bits 4``).

Prints a per-tensor table (shape, dtype, bytes before and after, weight SQNR, what was done) and
the totals; shows a progress bar on stderr for large files when stderr is a terminal. Errors
(missing or unreadable file, not a safetensors file, truncated file, unsupported dtype, NaN in
a weight) print one line naming the file and tensor and exit with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import IO, Optional

from ._text import Progress

#: Files at least this large (in tensor bytes) get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 32 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``quantize`` subcommand's arguments to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument("input", metavar="IN", help="safetensors file of float weights")
    parser.add_argument(
        "output",
        metavar="OUT",
        help="safetensors file to write (atomically; may be IN itself)",
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of one per output channel (row)",
    )
    parser.add_argument(
        "--bits",
        type=int,
        choices=(8, 4),
        default=8,
        help="8 (default) or 4: 4-bit weights with a scale and minimum per group of input features",
    )
    parser.add_argument(
        "--group-size",
        type=_group_size,
        default=None,
        metavar="G",
        help="with --bits 4: 32 (default), 64, 128, or 'none' for one scale per output channel",
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="with --bits 4: levels scale * (q - 8), no minima",
    )
    parser.add_argument(
        "--method",
        choices=("search", "rtn"),
        default=None,
        help="with --bits 4: least-squares search of each group's grid (default) or min-max "
        "round to nearest",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep tensors whose name matches this glob pattern as they are (repeatable)",
    )
    parser.add_argument(
        "--min-sqnr",
        type=_finite_float,
        default=None,
        metavar="DB",
        help="keep tensors whose weight SQNR would fall below DB decibels in their float "
        "format (automatic mixed precision)",
    )


def _group_size(text: str) -> object:
    """``--group-size``: a number, or ``none`` (per channel), kept apart from "not given"."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a group size: {text!r}") from None


def _weight_options(args: argparse.Namespace) -> dict:
    """The options for :func:`dynaq.pack_weight` the flags ask for (only those given);
    ``ValueError`` naming the flags that do not go together."""
    if args.bits == 8:
        given = [
            flag
            for flag, on in (
                ("--group-size", args.group_size is not None),
                ("--symmetric", args.symmetric),
                ("--method", args.method is not None),
            )
            if on
        ]
        if given:
            raise ValueError(f"{', '.join(given)} applies to --bits 4 only")
    elif args.per_tensor:
        raise ValueError("--per-tensor is int8 only (4-bit weights have scales per group)")
    opts: dict = {"bits": args.bits}
    if args.group_size is not None:
        opts["group_size"] = None if args.group_size == "none" else args.group_size
    if args.symmetric:
        opts["symmetric"] = True
    if args.method is not None:
        opts["method"] = args.method
    return opts


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _bytes_done(done: float, total: float) -> str:
    return f"{done / total * 100:3.0f}% {done / 2**20:.0f}/{total / 2**20:.0f} MiB"


class ProgressBar:
    """The command's progress, in source bytes: the shared :class:`dynaq._text.Progress` with
    the percentage and MiB done, and the last tensor's name (its end when long).

    Parameters
    ----------
    stream : file object
        Where to draw (stderr).
    enabled : bool
        When False every method does nothing.
    width : int
        Characters of the bar itself.
    """

    def __init__(self, stream: IO[str], enabled: bool, width: int = 30) -> None:
        self._progress = Progress(
            1, "bar" if enabled else "off", stream, amount=_bytes_done, width=width
        )

    def __call__(self, done: int, total: int, name: str) -> None:
        """Redraws the bar for ``done`` of ``total`` bytes, ``name`` being the last tensor."""
        self._progress.total = max(total, 1)
        self._progress.update(done, name if len(name) <= 40 else "..." + name[-37:])

    def close(self) -> None:
        """Erases the bar."""
        self._progress.close()


def _total_bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def run(args: argparse.Namespace, stderr: Optional[IO[str]] = None) -> int:
    """Runs ``quantize`` with parsed arguments.

    Parameters
    ----------
    args : argparse.Namespace
        From a parser set up by :func:`add_arguments`.
    stderr : file object, optional
        For the progress bar and error messages; ``sys.stderr`` when omitted.

    Returns
    -------
    int
        0 on success, 1 on an error (reported on stderr, nothing written).
    """
    from dynaq.safetensors import quantize_file

    err = sys.stderr if stderr is None else stderr
    try:
        options = _weight_options(args)
    except ValueError as e:
        print(f"dynaq quantize: error: {e}", file=err)
        return 1
    show = bool(getattr(err, "isatty", lambda: False)())
    bar = ProgressBar(err, show and _total_bytes(args.input) >= PROGRESS_MIN_BYTES)
    try:
        report = quantize_file(
            args.input,
            args.output,
            per_channel=not args.per_tensor,
            exclude=tuple(args.exclude),
            min_sqnr=args.min_sqnr,
            progress=bar,
            **options,
        )
    except KeyboardInterrupt:
        bar.close()
        print("dynaq quantize: interrupted; nothing written", file=err)
        return 130
    except OSError as e:
        bar.close()
        where = "" if e.filename is None else f"{e.filename or repr(e.filename)}: "
        print(f"dynaq quantize: error: {where}{e.strerror or e}", file=err)
        return 1
    except (ValueError, TypeError, MemoryError) as e:
        bar.close()
        print(f"dynaq quantize: error: {e}", file=err)
        return 1
    bar.close()
    print(report.table())
    print(f"wrote {report.destination}")
    return 0
