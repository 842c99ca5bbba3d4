"""Command line: ``python -m dynaq info``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynaq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="CPU features, kernel paths and the kernels in use")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    import dynaq
    from dynaq._runtime import format_info

    if args.command == "info":
        data = dynaq.cpu_info()
        print(json.dumps(data, indent=2) if args.json else format_info(data))
        return 0
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
