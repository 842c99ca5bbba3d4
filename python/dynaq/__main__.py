"""Command line: ``python -m dynaq info``, ``python -m dynaq bench`` and
``python -m dynaq quantize``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    """Runs the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``python -m dynaq``; ``sys.argv[1:]`` when omitted. Only then may
        ``bench`` re-execute the process (to run numpy without the OpenBLAS variables), so
        in-process callers keep their process.

    Returns
    -------
    int
        Exit status.
    """
    from dynaq import _quantize_cli, bench

    parser = argparse.ArgumentParser(prog="python -m dynaq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="CPU features, kernel paths and the kernels in use")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    bench_parser = sub.add_parser(
        "bench",
        help="time dynaq against numpy, torch and onnxruntime",
        description="Times a fp32-in/fp32-out linear layer (dynaq.linear, numpy float32, "
        "torch and onnxruntime dynamic int8 quantization) over a sweep of M, K x N and thread "
        "counts, activation quantization and the per-call overhead; prints GOP/s and ratios.",
    )
    bench.add_arguments(bench_parser)
    quantize = sub.add_parser(
        "quantize",
        help="int8-quantize the 2-D float tensors of a safetensors file",
        description=_quantize_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _quantize_cli.add_arguments(quantize)
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(raw)

    import dynaq
    from dynaq._runtime import format_info

    if args.command == "info":
        data = dynaq.cpu_info()
        print(json.dumps(data, indent=2) if args.json else format_info(data))
        return 0
    if args.command == "bench":
        return bench.run_cli(args, bench_parser, raw if argv is None else None)
    if args.command == "quantize":
        return _quantize_cli.run(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
