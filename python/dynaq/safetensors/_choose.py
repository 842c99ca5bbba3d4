"""How :func:`dynaq.safetensors.quantize_file` picks each tensor's format: one for all, a budget
measured over the file's tensors from their weights alone (each tensor a layer), or a plan
given."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..mixed.formats import FLOAT, Format, parse_formats
from ..mixed.plan import Plan
from ..mixed.plan import build as build_plan
from ..mixed.select import check_budget, choose
from ..mixed.sensitivity import LayerCosts, Sensitivity, measure_weights


class Chooser:
    """How :func:`quantize_file` picks each candidate's format: one for all (``uniform``), a
    budget measured over the file's tensors, or a plan given."""

    def __init__(self, uniform: Format, candidates: tuple[Format, ...], budget: dict[str, float],
                 given: Optional[Plan]) -> None:  # fmt: skip
        self.uniform = uniform
        self.candidates = candidates
        self.budget = budget
        self.given = given
        self.plan: Optional[Plan] = given
        self.layers: list[LayerCosts] = []
        self.measures = bool(budget)
        self.may_be_4_bit = uniform.bits == 4 or any(f.bits == 4 for f in candidates)
        if given is not None:
            self.may_be_4_bit = any(f.bits == 4 for f in given.formats().values())

    @classmethod
    def make(cls, opts: dict[str, Any], explicit: bool, min_sqnr: Optional[float],
             max_bits: Optional[float], formats: Any, plan: Any) -> Chooser:  # fmt: skip
        if min_sqnr is not None and max_bits is not None:
            raise ValueError("give one budget, not max_bits_per_weight and min_sqnr")
        budget = check_budget(max_bits_per_weight=max_bits, min_sqnr_db=min_sqnr)
        if plan is not None and (budget or formats is not None):
            raise ValueError("plan applies a plan already chosen: give no budget or formats")
        if formats is not None and not budget:
            raise ValueError("formats are the candidates of a budget: give one too")
        uniform = Format.parse(
            {k: v for k, v in opts.items() if v is not None or k == "group_size"}
        )
        if budget and explicit:
            if formats is not None or max_bits is not None:
                raise ValueError(
                    "bits, group_size, symmetric, method and per_channel=False set one format; "
                    "a size budget chooses among formats (name them with formats)"
                )
            candidates: tuple[Format, ...] = (uniform, FLOAT)
        else:
            candidates = parse_formats(formats) if budget else (uniform,)
        given = None
        if plan is not None:
            given = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
        return cls(uniform, candidates, budget, given)

    def measure(self, name: str, w: np.ndarray, dtype: str, per_channel: bool) -> None:
        itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
        fits = [f for f in self.candidates if f.fits(w.shape[1])]
        self.layers.append(measure_weights(name, "tensor", [w], fits, float_itemsize=itemsize,
                                           per_channel=per_channel))  # fmt: skip

    def choose(self, names: list[str], src: str) -> dict[str, Format]:
        """Each candidate tensor's format (absent: ``uniform``)."""
        if self.given is not None:
            formats = self.given.formats()
            unknown = [n for n in formats if n not in names]
            if unknown:
                raise ValueError(f"{src}: the plan names tensors the file has no 2-D float "
                                 f"tensor to quantize for: {unknown[:5]}")  # fmt: skip
            return {n: formats.get(n, FLOAT) for n in names}
        if not self.budget:
            return {}
        table = Sensitivity(self.layers, signal=float(len(self.layers)), calibrated=False)
        try:
            choice, front = choose(table, self.budget)
        except ValueError as e:
            raise ValueError(f"{src}: {e}") from None
        self.plan = build_plan(table, choice, budget=self.budget, front=front)
        return self.plan.formats()

    def action(self, fmt: Optional[Format]) -> str:
        if fmt is None or not fmt.is_float:
            return "quantized"
        return "kept-low-sqnr" if "min_sqnr_db" in self.budget else "kept-float"

    def layer_sqnr(self, name: str, fmt: Optional[Format]) -> Optional[float]:
        """The output SQNR measured for ``name`` in ``fmt``; for a tensor kept float, the best
        any quantized candidate reached (why it was kept)."""
        for layer in self.layers:
            if layer.name == name and fmt is not None:
                quantized = [j for j, f in enumerate(layer.formats) if not f.is_float]
                if not fmt.is_float:
                    return float(layer.layer_sqnr_db[layer.index(fmt)])
                return max((float(layer.layer_sqnr_db[j]) for j in quantized), default=None)
        return None
