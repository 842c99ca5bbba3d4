"""What this machine offers and what dynaq runs: ``cpu_info()``, its text form, and
``use_isa``. The settings themselves (``set_max_isa``, ``set_num_threads``, ...) are native
functions."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Optional

from . import _dynaq

__all__ = ["cpu_info", "format_info", "use_isa"]


@contextlib.contextmanager
def use_isa(name: Optional[str]) -> Iterator[str]:
    """Context manager: cap the kernel path inside a ``with`` block, then restore the cap.

    The cap is process-wide, so other threads see it too while the block runs.
    """
    previous = _dynaq.get_max_isa()
    active = _dynaq.set_max_isa(name)
    try:
        yield active
    finally:
        _dynaq.set_max_isa(previous)


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
        "max_isa": _dynaq.get_max_isa(),
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
