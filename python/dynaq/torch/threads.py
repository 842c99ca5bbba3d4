"""Sharing PyTorch's OpenMP threads with dynaq: off unless :func:`share_torch_threads` is
called. The team itself is used by the native module (``rust/dynaq-core/src/threads/openmp.rs``:
why, and the back-off when the team keeps a call waiting)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _dynaq

__all__ = ["share_torch_threads"]

_OPENMP_NAMES = ("libgomp", "libiomp5", "libomp")


def _torch_openmp_library() -> Optional[str]:
    """Path of the OpenMP runtime torch's parallel ops run on, when it is loaded (Linux)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(maxsplit=5) for line in f]
        paths = {x[5].strip() for x in fields if len(x) == 6}
    except OSError:
        return None
    found = [p for p in paths if os.path.basename(p).startswith(_OPENMP_NAMES) and ".so" in p]
    torch_dir = os.path.realpath(os.path.dirname(torch.__file__))
    # torch's wheels bundle their own runtime; prefer it over any other one loaded.
    found.sort(key=lambda p: (not os.path.realpath(p).startswith(torch_dir), p))
    return found[0] if found else None


def share_torch_threads(enabled: bool = True) -> bool:
    """Runs dynaq's multi-threaded GEMMs on torch's OpenMP threads (``True``) or on dynaq's own
    thread pool again (``False``, as before any call: sharing is off unless asked for).

    With one set of threads for both libraries, the OpenMP threads that torch leaves spinning
    after each op do dynaq's next GEMM instead of competing with dynaq's workers for the cores.
    Results are bit-identical either way. GEMMs of 16M multiply-adds or more and quantizations
    of 512K values or more run on the team; smaller ones on the calling thread alone (dynaq's
    own workers stay asleep: a third busy thread is what sharing avoids). When the team keeps a
    call waiting without helping (more threads than free cores), the next 64 calls run on the
    calling thread alone. Only this process shares (a forked child uses dynaq's pool), and the
    thread count stays :func:`dynaq.get_num_threads`.

    Returns whether the threads are now shared: ``False`` also when torch does not run on an
    OpenMP runtime that dynaq can find (for example off Linux).
    """
    if not enabled:
        _dynaq.share_openmp_team(None)
        return False
    path = _torch_openmp_library()
    if path is None:
        return False
    try:
        _dynaq.share_openmp_team(path)
    except OSError:
        return False
    return bool(_dynaq.sharing_openmp_team())
