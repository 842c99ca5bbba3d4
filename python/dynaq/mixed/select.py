"""Choosing one format per layer from a :class:`~dynaq.mixed.sensitivity.Sensitivity` table.

The choice is a multiple-choice knapsack: every layer takes exactly one of its formats, bytes
add up, and so does the noise. :func:`frontier` builds its Pareto front exactly, one layer at
a time (the sums of the layers so far, every combination, then only those no other beats on
both bytes and noise); both budgets are read off it:

- a size budget: the point of least noise within the bytes;
- an accuracy budget: the point of fewest bytes within the noise.

The front of a model with hundreds of layers can hold millions of points; past
:data:`MAX_POINTS` it is thinned to the best point per byte interval (each kept point is still
a real plan with its exact bytes and noise, so a budget still holds; only the optimum can be
missed, by less than one interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .sensitivity import Sensitivity, sqnr_db

__all__ = ["Frontier", "allowed_noise", "check_budget", "choose", "frontier"]

#: Points kept on the front between layers: 4096 byte intervals keep a chosen plan within
#: 1/4096 of the range of sizes (0.001 bits per weight between uniform int4 and float32).
MAX_POINTS = 4096


@dataclass
class Frontier:
    """The Pareto front of a table: ``nbytes`` ascending, ``noise`` descending, and the plan
    of each point (:meth:`choice`)."""

    nbytes: np.ndarray
    noise: np.ndarray
    _steps: list[tuple[np.ndarray, np.ndarray]]

    def choice(self, point: int) -> list[int]:
        """The format index of each layer at point ``point``."""
        out = []
        for prev, opt in reversed(self._steps):
            out.append(int(opt[point]))
            point = int(prev[point])
        return out[::-1]

    def within_bytes(self, max_bytes: float) -> int:
        """The point of least noise with at most ``max_bytes``, or -1 when none fits."""
        return int(np.searchsorted(self.nbytes, max_bytes, side="right")) - 1

    def within_noise(self, max_noise: float) -> int:
        """The point of fewest bytes with at most ``max_noise`` (noise descends along the
        front; the last point, all float where float is a candidate, has the least)."""
        ok = np.nonzero(self.noise <= max_noise)[0]
        return int(ok[0]) if ok.size else -1


def frontier(table: Sensitivity, max_points: int = MAX_POINTS) -> Frontier:
    """The Pareto front of bytes against noise over every plan of ``table``."""
    return _front([lay.nbytes for lay in table.layers], [lay.noise for lay in table.layers],
                  max_points)  # fmt: skip


def _front(costs: Sequence[np.ndarray], noises: Sequence[np.ndarray], max_points: int) -> Frontier:
    f_cost = np.zeros(1, dtype=np.int64)
    f_noise = np.zeros(1, dtype=np.float64)
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    for cost, noise in zip(costs, noises):
        n = len(cost)
        c = (f_cost[:, None] + np.asarray(cost, dtype=np.int64)[None, :]).ravel()
        e = (f_noise[:, None] + np.asarray(noise, dtype=np.float64)[None, :]).ravel()
        prev = np.repeat(np.arange(len(f_cost)), n)
        opt = np.tile(np.arange(n), len(f_cost))
        order = np.lexsort((e, c))  # by bytes, then noise
        c, e, prev, opt = c[order], e[order], prev[order], opt[order]
        # Keep a point only when it has less noise than every cheaper one.
        best_before = np.minimum.accumulate(e)
        keep = np.ones(len(e), dtype=bool)
        keep[1:] = e[1:] < best_before[:-1]
        c, e, prev, opt = c[keep], e[keep], prev[keep], opt[keep]
        if len(c) > max_points:
            keep = _thin(c, max_points)
            c, e, prev, opt = c[keep], e[keep], prev[keep], opt[keep]
        steps.append((prev, opt))
        f_cost, f_noise = c, e
    return Frontier(f_cost, f_noise, steps)


def _thin(cost: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of a front (bytes ascending) keeping its first point and the last (least
    noise) of each of ``max_points - 1`` equal byte intervals."""
    lo, hi = int(cost[0]), int(cost[-1])
    bucket = ((cost - lo) * (max_points - 1)) // max(hi - lo, 1)
    last = np.ones(len(cost), dtype=bool)
    last[:-1] = bucket[1:] != bucket[:-1]
    last[0] = True
    return np.nonzero(last)[0]


def check_budget(
    max_bits_per_weight: Optional[float] = None,
    max_bytes: Optional[int] = None,
    min_sqnr_db: Optional[float] = None,
    min_cosine: Optional[float] = None,
) -> dict[str, float]:
    """The one budget given, checked: ``{"max_bits_per_weight": 5.0}`` and the like; empty
    when none is.

    Raises
    ------
    ValueError
        More than one budget, or a value that is not a finite positive number (any finite
        number for ``min_sqnr_db``; strictly between 0 and 1 for ``min_cosine``).
    """
    given = {
        k: v
        for k, v in (("max_bits_per_weight", max_bits_per_weight), ("max_bytes", max_bytes),
                     ("min_sqnr_db", min_sqnr_db), ("min_cosine", min_cosine))
        if v is not None
    }  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give one budget, not {' and '.join(given)}")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or (key != "min_sqnr_db" and value <= 0):
            raise ValueError(f"{key} must be a finite{'' if key == 'min_sqnr_db' else ' positive'} "
                             f"number, got {value!r}")  # fmt: skip
        if key == "max_bytes" and value != int(value):
            raise ValueError(f"max_bytes must be a whole number, got {value!r}")
        if key == "min_cosine" and not 0.0 < value < 1.0:
            raise ValueError(f"min_cosine must be between 0 and 1 (exclusive), got {value!r}")
    return {k: float(v) for k, v in given.items()}


def allowed_noise(table: Sensitivity, budget: dict[str, float]) -> Optional[float]:
    """The output error energy an accuracy budget allows (None for a size budget).

    ``min_cosine``: an error of energy ``x·|y|^2`` turns the output ``y`` by at most
    ``arcsin(sqrt(x))``, so ``x <= 1 - c^2`` keeps the cosine at ``c`` or more, whatever the
    error's direction (all outputs taken as one vector).

    Raises
    ------
    ValueError
        ``min_cosine`` on a table measured from the weights alone (no model output).
    """
    if "min_sqnr_db" in budget:
        return table.signal * 10.0 ** (-budget["min_sqnr_db"] / 10.0)
    if "min_cosine" in budget:
        if not table.calibrated:
            raise ValueError("min_cosine is a target on the model's output: it needs sample_inputs")
        return table.signal * (1.0 - budget["min_cosine"] ** 2)
    return None


def choose(table: Sensitivity, budget: dict[str, float]) -> tuple[list[int], Frontier]:
    """One format index per layer of ``table`` for ``budget`` (from :func:`check_budget`),
    and the front it was read from.

    - ``max_bits_per_weight`` / ``max_bytes``: the least noise within the size.
    - ``min_sqnr_db``, measured with sample inputs: the fewest bytes whose predicted model
      output SQNR reaches it; from the weights alone: each layer's cheapest format whose own
      output SQNR reaches it.
    - ``min_cosine`` (sample inputs only): the fewest bytes whose predicted error keeps the
      model output's cosine to float at or above it (:func:`allowed_noise`).

    Raises
    ------
    ValueError
        A size budget below the smallest plan, saying what the smallest takes.
    """
    front = frontier(table)
    weights = max(table.weights, 1)
    if "min_sqnr_db" in budget and not table.calibrated:
        target = budget["min_sqnr_db"]
        return [_cheapest_reaching(lay, target) for lay in table.layers], front
    allowed = allowed_noise(table, budget)
    if allowed is not None:
        point = front.within_noise(allowed)
        if point < 0:
            best = sqnr_db(table.signal, float(front.noise[-1]))
            raise ValueError(
                f"{_budget_text(budget)} cannot be met: the best plan of these formats is "
                f"predicted at {best:.2f} dB (add float to the formats)"
            )
        return front.choice(point), front
    max_bytes = budget.get("max_bytes", budget.get("max_bits_per_weight", 0.0) * weights / 8.0)
    point = front.within_bytes(max_bytes)
    if point < 0:
        least = int(front.nbytes[0])
        raise ValueError(
            f"{_budget_text(budget)} cannot be met: the smallest plan of these formats takes "
            f"{least} bytes, {8.0 * least / weights:.3f} bits per weight"
        )
    return front.choice(point), front


def _cheapest_reaching(layer: Any, target: float) -> int:
    order = np.argsort(layer.nbytes, kind="stable")
    for j in order:
        if layer.layer_sqnr_db[j] >= target:
            return int(j)
    return int(np.argmax(layer.layer_sqnr_db))  # float, when a candidate: inf


def _budget_text(budget: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in budget.items())
