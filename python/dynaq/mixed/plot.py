"""The size/accuracy picture of a plan: the front of best plans (each candidate budget a point),
the uniform formats, the chosen plan and its budget, as a PNG (matplotlib, an optional
dependency: ``pip install "dynaq[plot]"``)."""

from __future__ import annotations

import math
import os
from typing import Optional, Union

from .plan import Plan

__all__ = ["plot_plan"]


def plot_plan(plan: Plan, path: Union[str, os.PathLike], *, title: Optional[str] = None) -> str:
    """Writes ``plan``'s trade-off curve as a PNG and returns its path.

    x: stored bits per weight; y: SQNR in dB (the model output's with sample inputs, the mean
    layer's from the weights alone). The line is the front of best plans the budget was read
    from; squares are the uniform plans (hollow: predicted; filled: measured), the star the
    chosen plan (and a filled star where it was measured), the dashed line the budget.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    ValueError
        The plan holds no curve (it was not chosen for a budget).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f'the picture needs matplotlib: pip install matplotlib (or "dynaq[plot]"): {e}'
        ) from e
    curve = [(b, s) for b, s in plan.curve if math.isfinite(s)]
    if not curve:
        raise ValueError("the plan has no size/accuracy curve (it was not chosen for a budget)")
    what = "model output" if plan.sensitivity == "samples" else "mean layer (weights only)"
    # Sizes up to the largest quantized uniform plan's (int8) and a little beyond: float's 16
    # or 32 bits would squash the picture.
    quantized = [u["bits_per_weight"] for n, u in plan.uniform.items() if n != "float"]
    right = max(quantized + [plan.bits_per_weight]) + 0.75
    curve = [(b, s) for b, s in curve if b <= right] or curve[:1]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    front = "best plan for each size (squares: uniform plans)"
    ax.plot(*zip(*curve), ".-", color="tab:blue", lw=1.2, ms=3, label=front)
    uniform = sorted(plan.uniform.items(), key=lambda item: item[1]["bits_per_weight"])
    for i, (name, u) in enumerate(uniform):
        bits, pred = u["bits_per_weight"], u.get("predicted_sqnr_db")
        if pred is None or not math.isfinite(pred) or bits > right:
            continue
        ax.plot([bits], [pred], "s", mfc="none", mec="tab:gray", ms=8)
        # Labels alternate below and above: neighbouring group sizes sit close together.
        ax.annotate(name, (bits, pred), textcoords="offset points", fontsize=8, color="dimgray",
                    xytext=(-8, -16 if i % 2 == 0 else 9))  # fmt: skip
        measured = u.get("measured")
        if measured and math.isfinite(measured["sqnr_db"]):
            ax.plot([bits], [measured["sqnr_db"]], "s", color="tab:gray", ms=6)
    bits = plan.bits_per_weight
    if plan.predicted_sqnr_db is not None and math.isfinite(plan.predicted_sqnr_db):
        label = f"chosen: {bits:.3f} bits, predicted {plan.predicted_sqnr_db:.2f} dB"
        ax.plot([bits], [plan.predicted_sqnr_db], "*", mfc="none", mec="tab:red", ms=16,
                label=label)  # fmt: skip
    if plan.measured is not None and math.isfinite(plan.measured["sqnr_db"]):
        ax.plot([bits], [plan.measured["sqnr_db"]], "*", color="tab:red", ms=12,
                label=f"chosen, measured: {plan.measured['sqnr_db']:.2f} dB, cosine "
                f"{plan.measured['cosine']:.5f}")  # fmt: skip
    budget = plan.budget
    if "max_bits_per_weight" in budget:
        ax.axvline(budget["max_bits_per_weight"], ls="--", color="tab:red", lw=1,
                   label=f"budget: {budget['max_bits_per_weight']:g} bits per weight")  # fmt: skip
    elif "max_bytes" in budget and plan.weights:
        limit = 8.0 * budget["max_bytes"] / plan.weights
        ax.axvline(limit, ls="--", color="tab:red", lw=1,
                   label=f"budget: {budget['max_bytes']:.0f} bytes")  # fmt: skip
    elif "min_sqnr_db" in budget:
        ax.axhline(budget["min_sqnr_db"], ls="--", color="tab:red", lw=1,
                   label=f"budget: {budget['min_sqnr_db']:g} dB")  # fmt: skip
    elif "min_cosine" in budget:
        # The SQNR that guarantees the cosine (select.allowed_noise).
        bound = -10.0 * math.log10(1.0 - budget["min_cosine"] ** 2)
        ax.axhline(bound, ls="--", color="tab:red", lw=1,
                   label=f"budget: cosine {budget['min_cosine']:g} ({bound:.2f} dB)")  # fmt: skip
    ax.set_xlim(min([b for b, _ in curve] + [bits]) - 0.25, right)
    ax.set_xlabel("stored bits per weight (scales and minima included)")
    ax.set_ylabel(f"SQNR of the {what}, dB")
    ax.set_title(title or f"{len(plan.layers)} layers: {plan.counts()}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = os.fspath(path)
    fig.savefig(out)
    plt.close(fig)
    return out
