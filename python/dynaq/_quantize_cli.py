"""``python -m dynaq quantize IN OUT``: quantize the 2-D float tensors of a safetensors file to int8
(or 4 bits with ``--bits 4``), or each to the format a budget (``--max-bits``, ``--min-sqnr``) or
a saved plan (``--plan``) gives it.

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
        default=None,
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
    budget = parser.add_argument_group(
        "automatic mixed precision",
        "a format per tensor from its weights alone (each tensor's output error measured on "
        "synthetic activations); the plan is printed and stored in OUT's metadata",
    )
    budget.add_argument(
        "--max-bits",
        type=_finite_float,
        default=None,
        metavar="B",
        help="at most B stored bits per weight on average over the tensors considered, with the "
        "least mean output error",
    )
    budget.add_argument(
        "--min-sqnr",
        type=_finite_float,
        default=None,
        metavar="DB",
        help="each tensor in the smallest format whose output SQNR reaches DB decibels (among "
        "--formats, or between the --bits format and float when --bits is given)",
    )
    budget.add_argument(
        "--formats",
        type=_formats,
        default=None,
        metavar="LIST",
        help="the candidates, comma-separated (default: int4-channel,int4-g128,int4-g64,int4,"
        "int8,float; float is always one)",
    )
    budget.add_argument(
        "--plan",
        default=None,
        metavar="FILE",
        help="apply a saved plan: a JSON file (dynaq.mixed.Plan.save) or a file this command "
        "wrote with a budget (its metadata holds the plan)",
    )
    budget.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="with a budget: write the size/accuracy curve (needs matplotlib)",
    )


def _group_size(text: str) -> object:
    """``--group-size``: a number, or ``none`` (per channel), kept apart from "not given"."""
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a group size: {text!r}") from None


def _formats(text: str) -> list:
    """``--formats``: names, checked here so that a typo is a usage error."""
    from .mixed import Format

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no format named")
    try:
        return [Format.parse(n) for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _budget_options(args: argparse.Namespace) -> dict:
    """The budget, plan and plot flags as :func:`quantize_file` takes them; ``ValueError``
    naming the flags that do not go together."""
    budget = args.max_bits is not None or args.min_sqnr is not None
    if args.max_bits is not None and args.min_sqnr is not None:
        raise ValueError("give one of --max-bits and --min-sqnr")
    if args.plan is not None and (budget or args.formats is not None):
        raise ValueError("--plan applies a saved plan: give no --max-bits, --min-sqnr or --formats")
    if args.formats is not None and not budget:
        raise ValueError("--formats names the candidates of --max-bits or --min-sqnr")
    if args.plot is not None and not budget:
        raise ValueError("--plot draws a budget's choice: give --max-bits or --min-sqnr")
    if args.max_bits is not None and args.bits is not None:
        raise ValueError("--max-bits chooses the formats: name the candidates with --formats, "
                         "not --bits")  # fmt: skip
    out: dict = {"min_sqnr": args.min_sqnr, "max_bits_per_weight": args.max_bits,
                 "formats": args.formats}  # fmt: skip
    if args.plan is not None:
        out["plan"] = _read_plan(args.plan)
    return out


def _read_plan(path: str) -> object:
    """A plan from a JSON file or from the metadata of a file quantized with a budget."""
    from .mixed import Plan
    from .safetensors import read_metadata
    from .safetensors._quantize import PLAN_KEY

    with open(path, "rb") as f:
        start = f.read(1)
    if start == b"{":
        return Plan.load(path)
    meta = read_metadata(path)
    if PLAN_KEY not in meta:
        raise ValueError(f"{path}: no plan in its metadata (quantize it with --max-bits or "
                         "--min-sqnr, or give a plan's JSON file)")  # fmt: skip
    return Plan.from_json(meta[PLAN_KEY])


def _weight_options(args: argparse.Namespace) -> dict:
    """The options for :func:`dynaq.pack_weight` the flags ask for (only those given);
    ``ValueError`` naming the flags that do not go together."""
    if args.bits != 4:
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
    opts: dict = {} if args.bits is None else {"bits": args.bits}
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
        options.update(_budget_options(args))
    except (OSError, ValueError) as e:
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
    if args.plot is not None:
        from .mixed.plot import plot_plan

        try:
            print(f"wrote {plot_plan(report.plan, args.plot)}")
        except (ImportError, OSError, ValueError) as e:
            print(f"dynaq quantize: error: --plot: {e}", file=err)
            return 1
    return 0
