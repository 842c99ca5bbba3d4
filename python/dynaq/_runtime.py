"""Kernel paths, threads and CPU information."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Optional

from . import _dynaq

__all__ = [
    "cpu_info",
    "get_max_isa",
    "get_num_threads",
    "set_max_isa",
    "set_num_threads",
    "use_isa",
]


def set_max_isa(name: Optional[str]) -> str:
    """Cap the kernel path at ``name`` for the whole process; ``None`` lifts the cap.

    Names on x86-64: ``"scalar"``, ``"avx2"``, ``"avx512vnni"``; on aarch64: ``"scalar"``,
    ``"neon"``, ``"dotprod"``, ``"i8mm"``. A path this CPU lacks selects the best one below it.
    Every path computes the same integers; the cap only changes speed. Returns the path now
    active. Raises ``ValueError`` for an unknown name or one of another architecture.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    return str(_dynaq.set_max_isa(name))


def get_max_isa() -> str:
    """The cap in force (the best path when nothing caps it)."""
    return str(_dynaq.max_isa())


@contextlib.contextmanager
def use_isa(name: Optional[str]) -> Iterator[str]:
    """Context manager: cap the kernel path inside a ``with`` block, then restore the cap.

    The cap is process-wide, so other threads see it too while the block runs.
    """
    previous = get_max_isa()
    active = set_max_isa(name)
    try:
        yield active
    finally:
        _dynaq.set_max_isa(previous)


def set_num_threads(n: int) -> None:
    """Number of threads the kernels use (default: ``DYNAQ_NUM_THREADS`` or the physical cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _dynaq.set_num_threads(n)


def get_num_threads() -> int:
    """Number of threads the kernels use."""
    return int(_dynaq.get_num_threads())


def cpu_info() -> dict[str, Any]:
    """What this machine offers and what dynaq will run.

    Returns
    -------
    dict
        ``features``: the CPU features detected (names); ``isas``: the kernel paths this machine
        can run, slowest first; ``arch_isas``: every path of this architecture;
        ``active_isa`` / ``max_isa``: the path in use and the cap; ``kernels``: operation ->
        kernel name on the active path; ``num_threads``, ``physical_cores``, ``arch``,
        ``version``, and ``env``: the dynaq environment variables seen.
    """
    return {
        "version": _dynaq.__version__,
        "arch": _dynaq.ARCH,
        "features": [name for name, present in _dynaq.cpu_features() if present],
        "isas": list(_dynaq.detected_isas()),
        "arch_isas": list(_dynaq.arch_isas()),
        "active_isa": _dynaq.active_isa(),
        "max_isa": _dynaq.max_isa(),
        "kernels": dict(_dynaq.kernels()),
        "num_threads": _dynaq.get_num_threads(),
        "physical_cores": _dynaq.physical_cores(),
        "env": {
            k: os.environ[k] for k in ("DYNAQ_MAX_ISA", "DYNAQ_NUM_THREADS") if k in os.environ
        },
    }


def format_info(info: dict[str, Any]) -> str:
    """``cpu_info()`` as text for a person."""
    lines = [
        f"dynaq {info['version']} on {info['arch']}",
        f"  CPU features:    {', '.join(info['features']) or '(none detected)'}",
        f"  kernel paths:    {', '.join(info['isas'])} (of {', '.join(info['arch_isas'])})",
        f"  active path:     {info['active_isa']} (cap: {info['max_isa']})",
        f"  threads:         {info['num_threads']} (physical cores: {info['physical_cores']})",
        "  kernels:",
    ]
    width = max((len(k) for k in info["kernels"]), default=0)
    lines += [f"    {op:<{width}}  {name}" for op, name in info["kernels"].items()]
    if info["env"]:
        lines.append("  environment:     " + ", ".join(f"{k}={v}" for k, v in info["env"].items()))
    return "\n".join(lines)
