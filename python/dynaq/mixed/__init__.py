"""Automatic mixed precision: a format per layer (4-bit at a group size, int8, or float) for a
size or accuracy budget.

The parts, each a file: ``formats.py`` (:class:`Format`, the candidates and their names),
``sensitivity.py`` (what each format costs each layer: bytes and error; the weights-only
measurement), ``select.py`` (the Pareto front over every plan and the budgets read off it),
``plan.py`` (:class:`Plan`, the chosen formats as data), ``plot.py`` (the size/accuracy
picture). The model-level measurement with sample inputs is ``dynaq.torch``'s
(:func:`dynaq.torch.quantize_dynamic` with ``max_bits_per_weight=`` or ``min_sqnr_db=``);
the command line's is ``python -m dynaq quantize --max-bits`` / ``--min-sqnr``. Design notes:
``README.md`` beside this file.
"""

from __future__ import annotations

from .formats import DEFAULT_FORMATS, Format, parse_formats
from .plan import Plan, PlanLayer
from .select import Frontier, check_budget, choose, frontier
from .sensitivity import LayerCosts, Sensitivity, measure_weights

__all__ = [
    "DEFAULT_FORMATS",
    "Format",
    "Frontier",
    "LayerCosts",
    "Plan",
    "PlanLayer",
    "Sensitivity",
    "check_budget",
    "choose",
    "frontier",
    "measure_weights",
    "parse_formats",
]
