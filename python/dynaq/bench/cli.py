"""``python -m dynaq bench``: its options (:func:`add_arguments`), the :class:`BenchConfig` they
describe (:func:`config_from_args`), the re-execution without the OpenBLAS variables
(:func:`reexec_without_blas_env`) and the command itself (:func:`run_cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional, TextIO

import dynaq

from . import plot
from .config import (
    DEFAULT_MAX_REPS,
    DEFAULT_MIN_REPS,
    DEFAULT_MIN_TIME,
    BenchConfig,
    Shape,
    Threads,
    quick_config,
)
from .machine import BLAS_ENV
from .peers import LIB_ALIASES, LIBS
from .report import format_report, write_json
from .run import LibraryUnavailable, run_bench

__all__ = [
    "REEXEC_MARKER",
    "add_arguments",
    "config_from_args",
    "reexec_without_blas_env",
    "run_cli",
]

REEXEC_MARKER = "DYNAQ_BENCH_REEXEC"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _int_list(text: str) -> tuple[int, ...]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of integers")
    return tuple(dict.fromkeys(_positive_int(s) for s in items))


def _shape_list(text: str) -> tuple[Shape, ...]:
    shapes = []
    for item in (s.strip() for s in text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected KxN (e.g. 768x3072), got {item!r}")
        try:
            k, n = (_positive_int(p) for p in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected KxN with positive integers (e.g. 768x3072), got {item!r}"
            ) from None
        shapes.append((k, n))
    return tuple(dict.fromkeys(shapes))


def _threads_list(text: str) -> tuple[Threads, ...]:
    out: list[Threads] = []
    for item in (s.strip().lower() for s in text.split(",")):
        out.append("all" if item == "all" else _positive_int(item))
    return tuple(dict.fromkeys(out))


def _lib_list(text: str) -> tuple[str, ...]:
    out = []
    for item in (s.strip().lower() for s in text.split(",")):
        name = LIB_ALIASES.get(item, item)
        if name not in LIBS:
            raise argparse.ArgumentTypeError(
                f"unknown library {item!r}; choose from {', '.join(LIBS)}"
            )
        out.append(name)
    return tuple(dict.fromkeys(out))


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    isas = dynaq.cpu_info()["arch_isas"]
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--m", type=_int_list, metavar="M,...", help="batch rows (default 1,8,32,128,512)"
    )
    sweep.add_argument(
        "--shapes",
        type=_shape_list,
        metavar="KxN,...",
        help="in x out features (default 768x768,768x3072,3072x768,4096x4096,4096x11008)",
    )
    sweep.add_argument(
        "--threads",
        type=_threads_list,
        metavar="T,...",
        help="thread counts; 'all' is dynaq's default, the physical cores (default 1,all)",
    )
    sweep.add_argument(
        "--libs",
        type=_lib_list,
        metavar="LIB,...",
        help=f"libraries to time, of {','.join(LIBS)} (default: those installed)",
    )
    sweep.add_argument("--isa", choices=isas, help="cap dynaq's kernel path (dynaq.set_max_isa)")
    sweep.add_argument(
        "--quick",
        action="store_true",
        help="a tiny sweep for smoke tests (M 1,8; 128x96; 1 thread)",
    )
    sections = sweep.add_mutually_exclusive_group()
    sections.add_argument(
        "--no-quant", action="store_true", help="skip the activation quantization section"
    )
    sections.add_argument(
        "--quant-only", action="store_true", help="only the activation quantization section"
    )
    sweep.add_argument(
        "--rotate",
        type=_positive_int,
        metavar="R",
        help="R weights per shape, the timed calls going round them (R weights beyond the "
        "last-level cache measure DRAM; default 1)",
    )
    sweep.add_argument(
        "--no-overhead",
        action="store_true",
        help="skip the call-overhead section (dynaq's per-call cost at 1x64 by 64x64, ~1 s)",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--repeats",
        type=_positive_int,
        metavar="N",
        help=f"minimum calls per measurement (default {DEFAULT_MIN_REPS})",
    )
    timing.add_argument(
        "--min-time",
        type=_seconds,
        metavar="SECONDS",
        help=f"keep calling until this long per measurement (default {DEFAULT_MIN_TIME})",
    )
    timing.add_argument(
        "--max-reps",
        type=_positive_int,
        metavar="N",
        help=f"most calls per measurement (default {DEFAULT_MAX_REPS})",
    )
    timing.add_argument("--seed", type=int, default=0, help="seed of the random data")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write every result as JSON")
    out.add_argument("--plot", metavar="PATH", help="write a PNG plot (needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    out.add_argument(
        "--numpy-coretype",
        metavar="NAME",
        help="run numpy with OPENBLAS_CORETYPE=NAME (e.g. Haswell) instead of with the "
        "OpenBLAS variables removed",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` that parsed ``bench`` options describe.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    BenchConfig
    """
    base = quick_config() if args.quick else BenchConfig()
    fields: dict[str, Any] = {
        "ms": args.m,
        "shapes": args.shapes,
        "threads": args.threads,
        "libs": args.libs,
        "isa": args.isa,
        "min_reps": args.repeats,
        "min_time": args.min_time,
        "max_reps": args.max_reps,
        "seed": args.seed,
        "rotate": args.rotate,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["gemm"] = not args.quant_only
    fields["quant"] = not args.no_quant
    fields["overhead"] = not (args.no_overhead or args.quant_only)
    cfg = dataclasses.replace(base, **fields)
    if cfg.max_reps < cfg.min_reps:
        cfg = dataclasses.replace(cfg, max_reps=cfg.min_reps)
    return cfg


def reexec_without_blas_env(
    argv: Sequence[str], numpy_coretype: Optional[str], stream: TextIO
) -> Optional[dict[str, Any]]:
    """Re-executes ``python -m dynaq <argv>`` when OpenBLAS' variables are not as wanted.

    OpenBLAS reads ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` once, when numpy loads it,
    and ``import dynaq`` has loaded numpy already: only a new process sees a change. Wanted:
    both removed, or ``OPENBLAS_CORETYPE=numpy_coretype`` alone. Returns None when nothing
    had to change, else (in the re-executed process) what was changed; does not return when
    it re-executes.

    Parameters
    ----------
    argv : sequence of str
        The arguments after ``python -m dynaq`` (``bench`` first).
    numpy_coretype : str, optional
    stream : file
        Where the note about the re-execution goes.

    Returns
    -------
    dict or None
        ``{"removed": {var: value}, "numpy_coretype": name or None}``.
    """
    marker = os.environ.pop(REEXEC_MARKER, None)
    wanted = {"OPENBLAS_CORETYPE": numpy_coretype, "OPENBLAS_L2_SIZE": None}
    current = {var: os.environ.get(var) for var in BLAS_ENV}
    if current == wanted:
        if marker is None:
            return {"removed": {}, "numpy_coretype": numpy_coretype} if numpy_coretype else None
        return dict(json.loads(marker))
    if marker is not None:  # already re-executed once and still not right: do not loop
        stream.write("warning: could not set the OpenBLAS variables; numpy runs as is\n")
        return dict(json.loads(marker))
    removed = {var: value for var, value in current.items() if value is not None}
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    if numpy_coretype:
        env["OPENBLAS_CORETYPE"] = numpy_coretype
    env[REEXEC_MARKER] = json.dumps({"removed": removed, "numpy_coretype": numpy_coretype})
    what = ", ".join(f"{k}={v}" for k, v in removed.items()) or "nothing removed"
    extra = f", with OPENBLAS_CORETYPE={numpy_coretype}" if numpy_coretype else ""
    stream.write(
        f"dynaq bench: re-executing without {what}{extra} (OpenBLAS reads them when numpy "
        "loads it)\n"
    )
    stream.flush()
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "dynaq", *argv]
    os.execve(sys.executable, cmd, env)
    raise AssertionError("unreachable")  # pragma: no cover


def run_cli(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Runs ``python -m dynaq bench`` with parsed options.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``bench`` options.
    parser : argparse.ArgumentParser
        The ``bench`` parser, for usage errors (exit status 2).
    argv : sequence of str, optional
        The full arguments after ``python -m dynaq``; given, the command re-executes itself
        when the OpenBLAS variables must change. In-process callers leave it out.

    Returns
    -------
    int
        Exit status.
    """
    missing = plot.matplotlib_missing() if args.plot else None
    if missing:
        parser.error(missing)
    reexec = None
    if argv is not None:
        reexec = reexec_without_blas_env(argv, args.numpy_coretype, sys.stderr)
    elif args.numpy_coretype:
        parser.error("--numpy-coretype needs a new process: run `python -m dynaq bench ...`")
    cfg = config_from_args(args)
    try:
        doc = run_bench(cfg, progress=not args.quiet, stream=sys.stderr, reexec=reexec)
    except LibraryUnavailable as e:
        parser.error(str(e))
    # Files first: a closed stdout (`| head`) must not lose minutes of measurements.
    written = []
    if args.json:
        write_json(doc, args.json)
        written.append(args.json)
    if args.plot:
        plot.write_plot(doc, args.plot)
        written.append(args.plot)
    print(format_report(doc))
    for path in written:
        print(f"wrote {path}")
    return 0
