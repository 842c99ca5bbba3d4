"""``python -m dynaq quantize IN OUT``: int8-quantize the 2-D float tensors of a safetensors file.

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
import time
from typing import IO, Optional

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


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


class ProgressBar:
    """A one-line ``\\r`` progress bar for byte counts.

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
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.start = time.monotonic()
        self.drawn = 0

    def __call__(self, done: int, total: int, name: str) -> None:
        """Redraws the bar for ``done`` of ``total`` bytes, ``name`` being the last tensor."""
        if not self.enabled:
            return
        frac = done / total if total else 1.0
        fill = int(round(frac * self.width))
        elapsed = time.monotonic() - self.start
        mib = f"{done / 2**20:.0f}/{total / 2**20:.0f} MiB"
        text = f"[{'#' * fill}{'.' * (self.width - fill)}] {frac * 100:3.0f}% {mib} {elapsed:.0f}s"
        if len(name) > 40:
            name = "..." + name[-37:]
        text = f"{text} {name}"
        self.stream.write("\r" + text.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(text)

    def close(self) -> None:
        """Erases the bar."""
        if self.enabled and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0


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
        )
    except KeyboardInterrupt:
        bar.close()
        print("dynaq quantize: interrupted; nothing written", file=err)
        return 130
    except OSError as e:
        bar.close()
        where = f"{e.filename}: " if e.filename else ""
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
