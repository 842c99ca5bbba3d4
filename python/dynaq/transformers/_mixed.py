"""Mixed precision on load: each convertible module's format from ``DynaqConfig``'s plan, or from
its budget measured on the checkpoint's float weights alone (each module's output error on
synthetic activations, as ``python -m dynaq quantize --max-bits`` measures a file)."""

from __future__ import annotations

from typing import Any, Optional

from .. import _dynaq
from ..mixed import Format, Plan, Sensitivity, choose, measure_weights, parse_formats
from ..mixed.plan import build as build_plan
from ..torch._bridge import is_conv1d
from ._checkpoint import checkpoint_weights


def plan_formats(
    cfg: Any, model: Any, names: list[str], files: Optional[list[str]]
) -> Optional[dict[str, Format]]:
    """Each convertible module's format from the config's plan, or from its budget
    measured on the checkpoint's float weights (the plan is then kept in the config, for
    ``save_pretrained``); None when the config has neither."""
    budget = cfg.budget()
    if cfg.plan is None and not budget:
        return None
    if cfg.plan is not None:
        formats = Plan.from_dict(cfg.plan).formats()
        unknown = sorted(set(formats) - set(names))
        if unknown:
            raise ValueError(
                f"DynaqConfig: the plan names modules this model does not convert: {unknown[:5]}"
            )
    else:
        formats = _choose(cfg, model, names, files, budget)
    if any(f.bits == 4 for f in formats.values()):
        cfg.format_version = _dynaq.FORMAT_VERSION_INT4
    return formats


def _choose(
    cfg: Any, model: Any, names: list[str], files: Optional[list[str]], budget: dict[str, float]
) -> dict[str, Format]:
    """The budget's plan, from the checkpoint's float weights (kept in the config)."""
    candidates = parse_formats(cfg.formats)
    modules = dict(model.named_modules())
    layers = []
    for name, w in checkpoint_weights(files, names, modules, model):
        mod = modules[name]
        matrix = w.T if is_conv1d(mod) else w
        fits = [f for f in candidates if f.fits(matrix.shape[1])]
        layers.append(measure_weights(
            name, type(mod).__name__, [matrix], fits, float_itemsize=w.dtype.itemsize,
            per_channel=cfg.per_channel, granularity=cfg.granularity,
        ))  # fmt: skip
    if not layers:
        raise ValueError("DynaqConfig: a budget needs the checkpoint's float weights")
    table = Sensitivity(layers, signal=float(len(layers)), calibrated=False)
    choice, front = choose(table, budget)
    plan = build_plan(table, choice, budget=budget, front=front)
    cfg.plan = plan.to_dict()
    return plan.formats()
