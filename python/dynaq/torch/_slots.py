"""Which modules ``quantize_dynamic`` swaps, and swapping them: a :class:`Slot` per module to
swap (its places in the model, the options it gets, the dynaq module made for it), swapped in
and back out as often as a budget's measurement needs, each dynaq module made once per set of
options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np
from torch import nn

from .. import layers as _layers
from ..mixed import Format, Plan
from . import _bridge
from . import budget as _budget
from .modules import GRU, LSTM, Linear

SWAPS: dict[type, Any] = {nn.Linear: Linear, nn.LSTM: LSTM, nn.GRU: GRU}


class Slot:
    """A module to swap: its first name, the float module, the options ``qconfig_spec`` gives
    it (``base``) and those it takes now (None: left float), the places it sits in the model,
    the dynaq module made for it, and the importance of its input features (from sample
    inputs) that calibrates a 4-bit weight."""

    def __init__(self, name: str, mod: nn.Module, opts: dict[str, Any]) -> None:
        self.name = name
        self.mod = mod
        self.base = opts
        self.opts: Optional[dict[str, Any]] = opts
        self.places: list[tuple[Optional[nn.Module], str]] = []
        self.new: Optional[nn.Module] = None
        self.made_for: Any = None
        self.importance: Optional[np.ndarray] = None


def find_slots(
    model: nn.Module,
    types: dict[type, Optional[dict[str, Any]]],
    names: dict[str, Optional[dict[str, Any]]],
    is_excluded: Callable[[str], bool],
    conv1d_default: Optional[dict[str, Any]],
) -> tuple[dict[int, Slot], dict[str, nn.Module]]:
    """What ``quantize_dynamic`` swaps, with which options (the module ids' slots), and what it
    keeps in float on purpose (excluded, tied, unselected)."""
    tied = tied_to_others(model)
    slots: dict[int, Slot] = {}
    left: dict[str, nn.Module] = {}
    unset: Any = object()

    def visit(mod: nn.Module, name: str, named: Any, parent: Any, attr: str) -> None:
        # ``named``: the entry of the closest named ancestor (or this module), else ``unset``.
        named = names.get(name, named)
        if is_excluded(name):
            left.update((f"{name}.{n}" if n else name, m) for n, m in mod.named_modules())
            return
        if swap_target(mod) is not None:
            if named is not unset:
                opts = named
            elif _bridge.is_conv1d(mod):
                opts = types.get(type(mod), conv1d_default)
            else:
                opts = types.get(type(mod))
            if opts is None or id(getattr(mod, "weight", None)) in tied:
                # A weight tied to a module that stays float (GPT-2's lm_head and wte): kept
                # float and tied, not duplicated.
                left[name] = mod
                return
            slot = slots.setdefault(id(mod), Slot(name, mod, opts))
            slot.places.append((parent, attr))
            return
        # Not named_children(): it skips a module's second appearance, which must be swapped too.
        for child_name, child in list(mod._modules.items()):
            if child is not None:
                visit(child, f"{name}.{child_name}" if name else child_name, named, mod, child_name)

    visit(model, "", unset, None, "")
    return slots, left


def apply_slots(
    model: nn.Module, slots: dict[int, Slot], left: dict[str, nn.Module], shared: dict[Any, Any]
) -> nn.Module:
    """Puts each slot's module in its places: the dynaq module for its options (made once, and
    again only when the options change), the float module when they are None. Returns the root
    (a swapped root is a new module)."""
    root = model
    for slot in slots.values():
        if slot.opts is None:
            module = slot.mod
            left[slot.name] = slot.mod
        else:
            left.pop(slot.name, None)
            if slot.new is None or slot.made_for != slot.opts:
                slot.new = swap_module(slot.mod, slot.name, slot.opts, shared, slot.importance)
                slot.made_for = dict(slot.opts)
            module = slot.new
        root = place(slot, module, root)
    return root


def place(slot: Slot, module: nn.Module, root: nn.Module) -> nn.Module:
    """Puts ``module`` in every place of ``slot``; the model's root after it."""
    for parent, attr in slot.places:
        if parent is None:
            root = module
        else:
            setattr(parent, attr, module)
    return root


def apply_plan(slots: dict[int, Slot], left: dict[str, nn.Module], plan: Plan) -> None:
    """Gives each slot the format ``plan`` names for it (every layer the plan names must be
    one the model swaps; the model's other layers stay float)."""
    by_name = {s.name: s for s in slots.values()}
    formats = plan.formats()
    missing = [n for n in formats if n not in by_name]
    if missing:
        raise ValueError(
            f"the plan names {len(missing)} layer(s) this model does not quantize: "
            f"{', '.join(repr(n) for n in missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    for name, slot in by_name.items():
        fmt = formats.get(name)
        if fmt is not None and not fmt.is_float and not _budget.fits(fmt, slot.mod):
            raise ValueError(f"the plan gives module {name!r} format {fmt.name}, which its "
                             "input width does not allow")  # fmt: skip
    set_formats(slots, formats)


def set_formats(slots: dict[int, Slot], formats: Mapping[str, Format]) -> None:
    """Each slot's options for its format in ``formats`` (float when absent)."""
    for slot in slots.values():
        fmt = formats.get(slot.name)
        slot.opts = None if fmt is None or fmt.is_float else _budget.format_options(fmt, slot.base)


def swapper(model: nn.Module, slots: dict[int, Slot]) -> _budget.Swapper:
    """How the budget's measurement swaps this model's layers (see :class:`budget.Swapper`)."""
    shared: dict[Any, Any] = {}

    def swap(chosen: Mapping[str, Any]) -> nn.Module:
        # Formats by name; a module given instead is put in as it is (the probe of a layer).
        set_formats(slots, {n: f for n, f in chosen.items() if isinstance(f, Format)})
        root = apply_slots(model, slots, {}, shared)
        for slot in slots.values():
            given = chosen.get(slot.name)
            if isinstance(given, nn.Module):
                root = place(slot, given, root)
        return root

    by_name = {s.name: s for s in slots.values()}

    def make(mod: nn.Module, name: str, opts: dict[str, Any]) -> nn.Module:
        return swap_module(mod, name, opts, {}, by_name[name].importance)

    return _budget.Swapper(swap, make)


def calibrates(opts: dict[str, Any]) -> bool:
    """Whether an importance changes a weight of these options: 4-bit, searched."""
    return opts.get("bits") == 4 and opts.get("method") in (None, "search")


def swap_target(mod: nn.Module) -> Any:
    """The dynaq module class that replaces ``mod``, or None."""
    if type(mod) in SWAPS:
        return SWAPS[type(mod)]
    return Linear if _bridge.is_conv1d(mod) else None


def tied_to_others(model: nn.Module) -> set[int]:
    """The ids of the weights of swappable modules that another module, one that stays float,
    shares (a tied ``lm_head`` and word embedding)."""
    owners: dict[int, list[nn.Module]] = {}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(mod)
    return {
        pid
        for pid, mods in owners.items()
        if len(mods) > 1 and any(swap_target(m) is None for m in mods)
        and any(swap_target(m) is not None for m in mods)
    }  # fmt: skip


def swap_module(
    mod: nn.Module,
    name: str,
    opts: dict[str, Any],
    shared: dict[Any, Any],
    importance: Optional[np.ndarray] = None,
) -> nn.Module:
    """The dynaq module for ``mod`` with ``opts``; ``importance`` (a linear module's, from the
    sample inputs) calibrates a 4-bit searched weight."""
    try:
        cls = swap_target(mod)
        weight_opts = tuple(sorted((k, v) for k, v in opts.items() if k != "granularity"))
        key = (id(getattr(mod, "weight", None)), _bridge.is_conv1d(mod), weight_opts)
        calibrated = importance is not None and calibrates(opts)
        if cls is Linear and key in shared and mod.weight.device.type != "meta" and not calibrated:
            # A weight shared by several linear modules is quantized once, its memory shared.
            bias = None if mod.bias is None else _bridge.param_numpy(mod.bias, "bias")
            layer = _layers.Linear(shared[key], bias, granularity=opts["granularity"])
            new = Linear.from_layer(layer)
        elif calibrated:
            new = cls.from_float(mod, **opts, importance=importance)
        else:
            new = cls.from_float(mod, **opts)
            if cls is Linear and not new._on_meta():
                shared[key] = new.layer.weight
    except (TypeError, ValueError) as e:
        raise type(e)(f"cannot quantize module {name or '<root>'!r} ({mod!r}): {e}") from e
    # As torch's swap_module does: keep the user's hooks.
    for hook in mod._forward_pre_hooks.values():
        new.register_forward_pre_hook(hook)
    for hook in mod._forward_hooks.values():
        new.register_forward_hook(hook)
    return new
