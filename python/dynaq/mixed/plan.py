"""A mixed-precision plan: the format of each layer, what it costs, what it was measured to do,
as data (a table to read, JSON to save in a file's metadata or a model's config, and the
``qconfig_spec`` that applies it to another copy of the model)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from .._text import format_db, format_table
from .formats import Format
from .select import Frontier
from .sensitivity import Sensitivity, sqnr_db

__all__ = ["Plan", "PlanLayer"]

#: The version of a plan's JSON form; a newer one is refused rather than misread.
PLAN_VERSION = 1
#: Points of the size/accuracy curve a plan keeps (for its picture), spread over the front.
CURVE_POINTS = 200


@dataclass(frozen=True)
class PlanLayer:
    """One layer of a :class:`Plan`.

    Attributes
    ----------
    name, kind : str
    shapes : tuple of (int, int)
        Its weight matrices' ``(out, in)``.
    format : Format
    nbytes : int
        Stored bytes of its weights in that format.
    layer_sqnr_db : float or None
        The layer's own output SQNR in that format (on the sample inputs' activations, or on
        synthetic ones from the weights alone); None when not measured.
    alone_sqnr_db : float or None
        The model output's SQNR with this layer alone in that format (sample inputs only).
    """

    name: str
    kind: str
    shapes: tuple[tuple[int, int], ...]
    format: Format
    nbytes: int
    layer_sqnr_db: Optional[float] = None
    alone_sqnr_db: Optional[float] = None

    @property
    def weights(self) -> int:
        return sum(n * k for n, k in self.shapes)


class Plan:
    """The format of each layer of a model (or tensor of a file), chosen for a budget.

    Attributes
    ----------
    layers : list of PlanLayer
    budget : dict
        What it was chosen for: ``{"max_bits_per_weight": 5.0}``, ``{"max_bytes": n}``,
        ``{"min_sqnr_db": 30.0}``, or empty (a plan read from a model or given by hand).
    sensitivity : str
        ``"samples"`` (measured on the model with sample inputs), ``"weights"`` (from the
        weights alone) or ``"none"``.
    predicted_sqnr_db : float or None
        What the sensitivity table predicts: the model output's SQNR (samples), or the mean
        layer's (weights).
    measured : dict or None
        The whole mixed model measured on the sample inputs: ``sqnr_db``, ``cosine``.
    uniform : dict
        Format name -> ``{"bits_per_weight", "predicted_sqnr_db"}`` (and ``"measured"``) of
        giving every layer that format, for comparison.
    curve : list of (float, float)
        ``(bits per weight, predicted SQNR dB)`` along the front of best plans.
    """

    def __init__(
        self,
        layers: Sequence[PlanLayer],
        *,
        budget: Optional[Mapping[str, float]] = None,
        sensitivity: str = "none",
        predicted_sqnr_db: Optional[float] = None,
        measured: Optional[Mapping[str, float]] = None,
        uniform: Optional[Mapping[str, Mapping[str, Any]]] = None,
        curve: Sequence[tuple[float, float]] = (),
    ) -> None:
        names = [lay.name for lay in layers]
        if len(set(names)) != len(names):
            raise ValueError("a plan names each layer once")
        self.layers = list(layers)
        self.budget = dict(budget or {})
        self.sensitivity = sensitivity
        self.predicted_sqnr_db = predicted_sqnr_db
        self.measured = None if measured is None else dict(measured)
        self.uniform = {k: dict(v) for k, v in (uniform or {}).items()}
        self.curve = [(float(b), float(s)) for b, s in curve]

    # -- sizes ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Stored bytes of every layer's weights."""
        return sum(lay.nbytes for lay in self.layers)

    @property
    def weights(self) -> int:
        """How many weights the layers hold."""
        return sum(lay.weights for lay in self.layers)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight over the plan's layers (scales and minima included)."""
        return 8.0 * self.nbytes / max(self.weights, 1)

    # -- use -----------------------------------------------------------------------------
    def formats(self) -> dict[str, Format]:
        """Layer name -> its format."""
        return {lay.name: lay.format for lay in self.layers}

    def qconfig_spec(self) -> dict[str, Optional[dict[str, Any]]]:
        """The ``qconfig_spec`` of :func:`dynaq.torch.quantize_dynamic` giving each layer its
        format (None: kept in float)."""
        return {lay.name: lay.format.options() for lay in self.layers}

    def counts(self) -> dict[str, int]:
        """Format name -> how many layers take it."""
        out: dict[str, int] = {}
        for lay in self.layers:
            out[lay.format.name] = out.get(lay.format.name, 0) + 1
        return out

    # -- reading -------------------------------------------------------------------------
    def table(self) -> str:
        """The layers as a text table, then the totals and how the plan compares."""
        head = ("layer", "kind", "shape", "format", "bytes", "layer SQNR dB", "output SQNR dB")
        body = [
            (
                lay.name,
                lay.kind,
                ", ".join(f"{n}x{k}" for n, k in lay.shapes),
                lay.format.name,
                str(lay.nbytes),
                format_db(lay.layer_sqnr_db),
                format_db(lay.alone_sqnr_db),
            )
            for lay in self.layers
        ]
        lines = format_table(head, body, right=(4, 5, 6))
        return "\n".join(lines + [""] + self.summary())

    def summary(self) -> list[str]:
        """The plan's totals, budget, predicted and measured error, as lines."""
        counts = ", ".join(f"{n} {name}" for name, n in sorted(self.counts().items()))
        out = [
            f"{len(self.layers)} layers ({counts}): {self.nbytes} bytes, "
            f"{self.bits_per_weight:.3f} bits per weight"
        ]
        if self.budget:
            out.append("budget: " + ", ".join(f"{k} = {v:g}" for k, v in self.budget.items()))
        what = "model output" if self.sensitivity == "samples" else "mean layer"
        if self.predicted_sqnr_db is not None:
            out.append(f"predicted {what} SQNR: {format_db(self.predicted_sqnr_db)} dB "
                       f"(sensitivity from {self.sensitivity})")  # fmt: skip
        if self.measured is not None:
            out.append(
                f"measured model output: SQNR {format_db(self.measured['sqnr_db'])} dB, cosine "
                f"{self.measured['cosine']:.6f}"
            )
        for name, u in self.uniform.items():
            line = (f"  uniform {name}: {u['bits_per_weight']:.3f} bits per weight, predicted "
                    f"{format_db(u.get('predicted_sqnr_db'))} dB")  # fmt: skip
            if u.get("measured"):
                m = u["measured"]
                line += f", measured {format_db(m['sqnr_db'])} dB, cosine {m['cosine']:.6f}"
            out.append(line)
        return out

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"Plan({len(self.layers)} layers, {self.bits_per_weight:.3f} bits per weight, "
            f"{self.counts()})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    # -- storing -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (infinite SQNRs as the string ``"inf"``)."""
        return {
            "version": PLAN_VERSION,
            "budget": self.budget,
            "sensitivity": self.sensitivity,
            "predicted_sqnr_db": _out(self.predicted_sqnr_db),
            "measured": None
            if self.measured is None
            else {k: _out(v) for k, v in self.measured.items()},
            "uniform": {
                name: {
                    k: (
                        _out(v)
                        if not isinstance(v, dict)
                        else {kk: _out(vv) for kk, vv in v.items()}
                    )
                    for k, v in u.items()
                }
                for name, u in self.uniform.items()
            },  # fmt: skip
            "curve": [[b, _out(s)] for b, s in self.curve],
            "layers": [
                {
                    "name": lay.name,
                    "kind": lay.kind,
                    "shapes": [list(s) for s in lay.shapes],
                    "format": lay.format.name,
                    "bytes": lay.nbytes,
                    "layer_sqnr_db": _out(lay.layer_sqnr_db),
                    "alone_sqnr_db": _out(lay.alone_sqnr_db),
                }
                for lay in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """A plan from :meth:`to_dict`'s form (also the ``layers`` list alone, or a mapping
        of layer names to format names).

        Raises
        ------
        ValueError
            Malformed data, an unknown format, or a newer version.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a plan is a mapping, got {type(data).__name__}")
        if "layers" not in data:
            # {name: format}: a plan given by hand.
            layers = [PlanLayer(str(n), "", (), Format.parse(f), 0) for n, f in data.items()]
            return cls(layers)
        version = data.get("version", PLAN_VERSION)
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise ValueError(
                f"plan version {version!r} is newer than this dynaq reads ({PLAN_VERSION})"
            )
        try:
            layers = [
                PlanLayer(
                    name=str(e["name"]),
                    kind=str(e.get("kind", "")),
                    shapes=tuple((int(n), int(k)) for n, k in e.get("shapes", ())),
                    format=Format.parse(e["format"]),
                    nbytes=int(e.get("bytes", 0)),
                    layer_sqnr_db=_in(e.get("layer_sqnr_db")),
                    alone_sqnr_db=_in(e.get("alone_sqnr_db")),
                )
                for e in data["layers"]
            ]
            measured = data.get("measured")
            return cls(
                layers,
                budget=data.get("budget") or {},
                sensitivity=str(data.get("sensitivity", "none")),
                predicted_sqnr_db=_in(data.get("predicted_sqnr_db")),
                measured=None if measured is None else {k: _in(v) for k, v in measured.items()},
                uniform={
                    name: {
                        k: (
                            _in(v)
                            if not isinstance(v, dict)
                            else {kk: _in(vv) for kk, vv in v.items()}
                        )
                        for k, v in u.items()
                    }
                    for name, u in (data.get("uniform") or {}).items()
                },  # fmt: skip
                curve=[(float(b), _in(s)) for b, s in data.get("curve", ())],
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed plan: {e!r}") from None

    def to_json(self) -> str:
        """The plan as a JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> Plan:
        """A plan from :meth:`to_json`'s string."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"a plan is JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the plan as a JSON file (indented, for reading)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> Plan:
        """Reads a plan that :meth:`save` wrote."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def build(
    table: Sensitivity,
    choice: Sequence[int],
    *,
    budget: Mapping[str, float],
    front: Optional[Frontier] = None,
) -> Plan:
    """The plan of one format index per layer of ``table``: each layer's bytes and SQNRs, the
    table's prediction, the uniform plans and the front's curve."""
    layers = []
    for lay, j in zip(table.layers, choice):
        alone = None
        if table.calibrated:
            alone = sqnr_db(table.signal, float(lay.noise[j]))
        layers.append(PlanLayer(
            name=lay.name, kind=lay.kind, shapes=tuple(lay.shapes), format=lay.formats[j],
            nbytes=int(lay.nbytes[j]), layer_sqnr_db=float(lay.layer_sqnr_db[j]),
            alone_sqnr_db=alone,
        ))  # fmt: skip
    weights = max(table.weights, 1)
    uniform = {}
    for fmt in dict.fromkeys(f for lay in table.layers for f in lay.formats):
        pick = table.uniform(fmt)
        if pick is not None:
            uniform[fmt.name] = {
                "bits_per_weight": 8.0 * table.nbytes(pick) / weights,
                "predicted_sqnr_db": table.predicted_sqnr_db(pick),
            }
    curve: list[tuple[float, float]] = []
    if front is not None and len(front.nbytes):
        step = max(1, len(front.nbytes) // CURVE_POINTS)
        points = list(range(0, len(front.nbytes), step))
        if points[-1] != len(front.nbytes) - 1:
            points.append(len(front.nbytes) - 1)
        curve = [
            (
                8.0 * float(front.nbytes[p]) / weights,
                sqnr_db(table.signal, float(front.noise[p])),
            )
            for p in points
        ]
    return Plan(
        layers,
        budget=budget,
        sensitivity="samples" if table.calibrated else "weights",
        predicted_sqnr_db=table.predicted_sqnr_db(choice),
        uniform=uniform,
        curve=curve,
    )


def _out(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _in(value: Any) -> Any:
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    return None if value is None else float(value)
