"""A run's GOP/s as a PNG (:func:`write_plot`), with matplotlib when it is installed."""

from __future__ import annotations

import math
from typing import Any, Optional

from .peers import SHORT

__all__ = ["matplotlib_missing", "write_plot"]


def matplotlib_missing() -> Optional[str]:
    """Why ``--plot`` cannot work here (None when matplotlib is importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "--plot needs matplotlib: pip install matplotlib (or the 'dynaq[bench]' or "
            "'dynaq[plot]' extra)"
        )
    return None


def write_plot(doc: dict[str, Any], path: str) -> None:
    """Writes a PNG: GOP/s against M, one panel per (K, N), one line per library and threads.

    Parameters
    ----------
    doc : dict
        A result of :func:`~dynaq.bench.run_bench`.
    path : str

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    """
    # The object-oriented API with the Agg canvas: no pyplot, so no global backend change in
    # the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = doc.get("gemm") or []
    shapes = list(dict.fromkeys((c["k"], c["n"]) for c in cells))
    ncols = min(3, max(len(shapes), 1))
    nrows = max(1, math.ceil(len(shapes) / ncols))
    fig = Figure(figsize=(5 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    colors = {"dynaq": "C3", "numpy": "C0", "torch": "C1", "onnxruntime": "C2"}
    styles = ["-", "--", ":", "-."]
    threads = doc.get("threads") or []
    for i, (k, n) in enumerate(shapes):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for lib in doc["libs"]:
            for j, t in enumerate(threads):
                pts = [
                    (c["m"], c["results"][lib]["gops"])
                    for c in cells
                    if (c["k"], c["n"], c["threads"]) == (k, n, t)
                    and c["results"].get(lib, {}).get("gops")
                ]
                if pts:
                    ms, gops = zip(*sorted(pts))
                    ax.plot(
                        ms,
                        gops,
                        styles[j % len(styles)],
                        marker="o",
                        markersize=3,
                        color=colors.get(lib),
                        label=f"{SHORT[lib]} t={t}",
                    )
        ax.set_xscale("log", base=2)
        ms_here = sorted({c["m"] for c in cells if (c["k"], c["n"]) == (k, n)})
        ax.set_xticks(ms_here, [str(m) for m in ms_here])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_title(f"K={k}, N={n}")
        ax.set_xlabel("M")
        ax.set_ylabel("GOP/s")
        ax.grid(True, which="both", alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    dq = doc["dynaq"]
    fig.suptitle(
        f"dynaq {dq['version']} ({dq['active_isa']}, {dq['gemm_kernel']}) on "
        f"{doc['machine']['cpu_model']}",
        fontsize="medium",
    )
    fig.savefig(path, dpi=110)
