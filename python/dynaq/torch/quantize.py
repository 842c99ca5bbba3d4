"""``quantize_dynamic``: swap a model's ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU`` modules for
dynaq's."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .. import _dynaq
from .._dynaq import check_granularity as _check_granularity
from .._text import Progress
from ..layers import _common
from ..mixed import Plan, Sensitivity, parse_formats
from ..mixed.select import check_budget
from . import _bridge, _slots
from . import budget as _budget
from .modules import GRU, LSTM, Linear

__all__ = ["quantize_dynamic", "sensitivity"]

Spec = Union[Iterable[Union[type, str]], Mapping[Union[type, str], Any]]

_SUPPORTED = "torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU and transformers' Conv1D"
_OPTION_KEYS = ("per_channel", "granularity", "bits", "group_size", "symmetric", "method")


def _options(value: Any, where: str, default: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The options one qconfig_spec entry asks for; None for "do not quantize"."""
    if value is None or value is False:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_OPTION_KEYS))
        if unknown:
            raise ValueError(
                f"qconfig_spec[{where}]: unknown option(s) {unknown}; known: {list(_OPTION_KEYS)}"
            )
        opts = {**default, **value}
        if "bits" in value and value["bits"] != default["bits"]:
            # Options of the default's bits that do not apply to these: dropped.
            for key in ("group_size", "symmetric", "method"):
                if key not in value:
                    opts.pop(key, None)
        _check_options(opts, f"qconfig_spec[{where}]")
        return opts
    return dict(default)  # True, a torch QConfig, ...: quantize with the defaults.


def _check_options(opts: dict[str, Any], where: str) -> None:
    """Checks one set of options as quantizing will (any in_features): ``ValueError`` /
    ``TypeError`` naming ``where``."""
    _check_granularity(opts["granularity"])
    opts["per_channel"] = bool(opts["per_channel"])
    weight = {k: v for k, v in opts.items() if k not in ("granularity", "per_channel")}
    try:
        # 128 columns: every group size divides it (whether one divides a module's width is
        # checked when that module is quantized).
        _dynaq.weight_format(128, per_channel=opts["per_channel"], **weight)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None


def _parse_spec(
    spec: Optional[Spec], default: dict[str, Any]
) -> tuple[dict[type, Optional[dict[str, Any]]], dict[str, Optional[dict[str, Any]]]]:
    if spec is None:
        # And Conv1D, which _slots.swap_target recognizes.
        return {t: dict(default) for t in _slots.SWAPS}, {}
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable):
        raise TypeError(
            "qconfig_spec must be a set or list of module types and/or module names, or a "
            f"dict mapping them to options, got {type(spec).__name__}"
        )
    items = spec.items() if isinstance(spec, Mapping) else ((k, True) for k in spec)
    types: dict[type, Optional[dict[str, Any]]] = {}
    names: dict[str, Optional[dict[str, Any]]] = {}
    for key, value in items:
        if isinstance(key, str):
            names[key] = _options(value, repr(key), default)
        elif isinstance(key, type):
            if key not in _slots.SWAPS and not _bridge.is_conv1d(key):
                raise TypeError(
                    f"qconfig_spec names {key.__module__}.{key.__qualname__}, which "
                    f"dynaq.torch.quantize_dynamic cannot quantize: it swaps {_SUPPORTED} "
                    "(exact types)"
                )
            types[key] = _options(value, key.__name__, default)
        else:
            raise TypeError(
                "qconfig_spec entries must be module types or module names (str), got "
                f"{key!r} ({type(key).__name__})"
            )
    return types, names


def _excluder(exclude: Iterable[str], all_names: list[str]) -> Callable[[str], bool]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    entries = []
    for e in exclude:
        if not isinstance(e, str):
            raise TypeError(f"exclude entries must be module names (str), got {e!r}")
        entries.append(e)

    def match(entry: str, name: str) -> bool:
        if any(ch in entry for ch in "*?["):
            return fnmatch.fnmatchcase(name, entry)
        return name == entry or name.startswith(entry + ".")

    for e in entries:
        if not any(match(e, n) for n in all_names):
            raise ValueError(f"exclude entry {e!r} matches no module of the model")
    return lambda name: any(match(e, name) for e in entries)


def quantize_dynamic(
    model: nn.Module,
    qconfig_spec: Optional[Spec] = None,
    dtype: Any = None,
    mapping: Optional[Mapping[Any, Any]] = None,
    inplace: bool = False,
    *,
    per_channel: bool = True,
    granularity: str = "row",
    bits: int = 8,
    group_size: Optional[int] = ...,  # type: ignore[assignment]
    symmetric: Optional[bool] = None,
    method: Optional[str] = None,
    exclude: Iterable[str] = (),
    max_bits_per_weight: Optional[float] = None,
    max_bytes: Optional[int] = None,
    min_sqnr_db: Optional[float] = None,
    min_cosine: Optional[float] = None,
    sample_inputs: Optional[Iterable[Any]] = None,
    formats: Optional[Iterable[Any]] = None,
    plan: Optional[Union[Plan, Mapping[str, Any]]] = None,
    progress: Optional[bool] = None,
) -> nn.Module:
    """Swap a model's ``nn.Linear`` / ``nn.LSTM`` / ``nn.GRU`` modules (and transformers'
    ``Conv1D``) for dynaq ones, with int8 (default) or 4-bit weights.

    Like ``torch.ao.quantization.quantize_dynamic``, with dynaq's kernels: int8 weights with
    per-output-channel scales (or, with ``bits=4``, 4-bit weights with a scale and minimum per
    group of 32 input features) and per-row activation scales by default, exact integer
    accumulation, and modules that save and load with ``torch.save`` and ``state_dict``.

    Every projection: transformers' ``Conv1D`` (GPT-2's, weight stored ``(in, out)``) is
    swapped too, quantized per output channel. A weight tied to a module that stays float (a
    tied ``lm_head`` and the word embedding) stays float and tied, never duplicated; a weight
    shared by several linear modules is packed once. Matmul weights that dynaq cannot take
    (3-D expert weights, ``MultiheadAttention``'s projections) give one ``UserWarning`` naming
    them and the share of the model's matmul weight bytes they leave in float.

    Parameters
    ----------
    model : torch.nn.Module
        The float model; it is deep-copied first unless ``inplace``.
    qconfig_spec : set, list or dict, optional
        What to quantize. None (default): every ``nn.Linear``, ``nn.LSTM``, ``nn.GRU`` and
        ``Conv1D``. Otherwise module types (exactly those; subclasses such as MultiheadAttention's
        ``out_proj`` are never swapped) and/or module names as ``named_modules()`` gives them;
        a name selects that module and, for a container, every supported module inside it. A
        dict maps each entry to None or False (do not quantize), a dict of options
        (``{"per_channel": bool, "granularity": "row" | "tensor", "bits": 8 | 4,
        "group_size": 32 | 64 | 128 | None, "symmetric": bool, "method": "search" | "rtn"}``,
        each defaulting to this call's), or anything else (a torch ``QConfig``, True) for the
        defaults. A name's entry applies to that module and everything inside it and takes
        precedence over type entries (the closest named ancestor wins). dynaq quantizes as its
        own options say, whatever a ``QConfig`` says.
    dtype : torch.dtype, optional
        As in PyTorch's ``quantize_dynamic``, so that its calls run unchanged:
        ``torch.qint8`` (or None, the same); any other dtype raises ``ValueError`` (choose
        4-bit weights with ``bits``).
    mapping : dict, optional
        PyTorch's float-to-quantized module mapping; only None (dynaq's own modules) is
        accepted.
    inplace : bool
        Modify ``model`` itself instead of a copy (a root ``nn.Linear``/``LSTM``/``GRU`` is
        still returned as a new module).
    per_channel : bool
        Default weight scales: per output channel (True) or per tensor.
    granularity : {"row", "tensor"}
        Default activation scales: per row (a row's result never depends on the batch) or one
        per call.
    bits, group_size, symmetric, method
        Default weight format, as :func:`dynaq.pack_weight` takes them: 8 bits, or 4 with
        groups of 32 (default), 64 or 128 input features or per channel (``group_size=None``),
        asymmetric unless ``symmetric``, scales found by a least-squares search unless
        ``method="rtn"``. A group size that does not divide a module's ``in_features`` raises
        ``ValueError`` naming the module (give that module its own options in
        ``qconfig_spec``, or exclude it).
    exclude : iterable of str
        Module names to keep in float, with everything inside them. An entry matches a name
        exactly or as a dotted prefix (``"encoder.layer.0"`` covers
        ``"encoder.layer.0.output.dense"``, not ``"encoder.layer.01"``), or as an
        ``fnmatch`` pattern when it contains ``*``, ``?`` or ``[`` (``"*.pooler.*"``). An entry
        that matches no module raises ``ValueError`` (a likely typo). Exclusion beats
        ``qconfig_spec``.
    max_bits_per_weight, max_bytes, min_sqnr_db, min_cosine : float, optional
        Automatic mixed precision (one of them): a format per module among ``formats``, for
        the least error within a size (stored bits per weight averaged over the modules
        considered, or bytes), or the fewest bytes whose output SQNR reaches ``min_sqnr_db``
        (the model output's with ``sample_inputs``, else each module's own on synthetic
        activations), or whose output keeps a cosine to float of ``min_cosine`` or more
        (all the samples' outputs taken as one vector; needs ``sample_inputs``). The modules
        considered are those ``qconfig_spec`` and ``exclude`` select; their options give the
        granularity and int8's ``per_channel``. The plan chosen is :func:`dynaq.torch.plan` of
        the result, with what was measured.
    sample_inputs : list, optional
        Inputs to run the model on, as :func:`compare` takes them (tensors, tuples of
        arguments, dicts of keyword arguments; a dict's ``attention_mask`` keeps padding out).
        They calibrate every 4-bit searched weight of an ``nn.Linear`` or ``Conv1D`` (each
        input feature weighted by its mean square over the samples: ``pack_weight``'s
        ``importance``), with or without a budget; with a budget, they measure each module's
        effect on the model's output, and the chosen plan is confirmed on the mixed model.
    formats : list, optional
        A budget's candidates: names (``"int4"``, ``"int4-g64"``, ``"int4-g128"``,
        ``"int4-channel"``, ``"int8"``, ``"float"``), dicts of options or
        :class:`dynaq.mixed.Format`; by default all of these.
    plan : dynaq.mixed.Plan or dict, optional
        Apply a plan chosen before (a :class:`dynaq.mixed.Plan`, its ``to_dict()``, or a dict
        of module names to format names); modules it does not name stay float. With the
        ``sample_inputs`` it was chosen with, the same weights bit for bit.
    progress : bool, optional
        A progress bar on stderr while a budget measures (default: when stderr is a
        terminal).

    Returns
    -------
    torch.nn.Module
        The quantized model (``model`` itself when ``inplace``).

    Raises
    ------
    TypeError
        ``qconfig_spec`` names a type other than those, or a module that is not one of them
        and contains none; malformed arguments.
    ValueError
        A name in ``qconfig_spec`` or ``exclude`` is not in the model; a module cannot be
        quantized (``proj_size``, NaN or infinite weights), naming the module. Two budgets, a
        budget below the smallest plan (saying what that takes), ``formats`` without a budget,
        ``plan`` with one, a plan naming a module the model does not quantize, a budget on a
        meta-device model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if dtype is not None and dtype is not torch.qint8:
        raise ValueError(
            f"dtype={dtype}: dynaq quantizes weights to int8 (or 4 bits with bits=4) with "
            "dynamically quantized int8 activations (dtype=torch.qint8, the default); other "
            "dtypes are not supported"
        )
    if mapping is not None:
        raise ValueError(
            "mapping: dynaq swaps modules for its own (dynaq.torch.Linear, LSTM, GRU); choose "
            "what to quantize with qconfig_spec and exclude instead"
        )
    default = {"per_channel": per_channel, "granularity": granularity,
               **_common.weight_options(bits, group_size, symmetric, method)}  # fmt: skip
    _check_options(default, "quantize_dynamic")
    selection = _selection(model, qconfig_spec, exclude, default)
    budget = check_budget(max_bits_per_weight, max_bytes, min_sqnr_db, min_cosine)
    if "min_cosine" in budget and sample_inputs is None:
        raise ValueError("min_cosine is a target on the model's output: it needs sample_inputs")
    if plan is not None and budget:
        raise ValueError("plan applies a plan already chosen: give no budget")
    if formats is not None and not budget:
        raise ValueError("formats are the candidates of a budget: give one too")
    candidates = parse_formats(formats)
    samples = _budget.samples_list(sample_inputs)
    _budget.progress_mode(progress)
    if plan is not None:
        plan = _as_plan(plan)
    if not inplace:
        model = copy.deepcopy(model)
    slots, left = _slots.find_slots(model, *selection)
    swapper = _slots.swapper(model, slots)
    outputs = None
    if samples is not None and (budget or _any_calibrated(slots, plan)):
        outputs = _calibrate(model, slots, samples)
    chosen = None
    if plan is not None:
        _slots.apply_plan(slots, left, plan)
    elif budget:
        chosen = _budget.choose_plan(
            [(s.name, s.mod, s.base) for s in slots.values()], candidates, budget, outputs,
            swapper, progress,
        )  # fmt: skip
        _slots.set_formats(slots, chosen.formats())
    converted = _slots.apply_slots(model, slots, left, {})
    swapped = {id(s.new): s.new for s in slots.values() if s.opts is not None}
    _warn_unhandled(converted, left, swapped)
    if chosen is not None:
        setattr(converted, _budget.PLAN_ATTR, chosen.to_json())
    return converted


def sensitivity(
    model: nn.Module,
    sample_inputs: Optional[Iterable[Any]] = None,
    *,
    formats: Optional[Iterable[Any]] = None,
    qconfig_spec: Optional[Spec] = None,
    exclude: Iterable[str] = (),
    per_channel: bool = True,
    granularity: str = "row",
    progress: Optional[bool] = None,
) -> Sensitivity:
    """What each candidate format would cost each layer :func:`quantize_dynamic` swaps: the
    table a budget's plan is chosen from (``quantize_dynamic(max_bits_per_weight=...)`` measures
    it the same way).

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left as it is: the measurement swaps layers in a copy).
    sample_inputs : list, optional
        Inputs as :func:`compare` takes them (tensors, tuples of arguments, dicts of keyword
        arguments; a dict's ``attention_mask`` keeps padding out of the errors); they also
        calibrate the 4-bit formats measured, as :func:`quantize_dynamic` will. Without them,
        the weights alone: each layer's error on synthetic activations.
    formats : list, optional
        The candidates (names such as ``"int4-g64"``, dicts of options, or
        :class:`dynaq.mixed.Format`); by default every 4-bit group size, int8 and float.
    qconfig_spec, exclude, per_channel, granularity
        Which layers, as :func:`quantize_dynamic` takes them.
    progress : bool, optional
        A progress bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    dynaq.mixed.Sensitivity
        One row per layer: each format's stored bytes, the layer's own output SQNR and the
        noise it adds to the model output (with samples) or to the mean layer (without).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    default = {"per_channel": per_channel, "granularity": granularity,
               **_common.weight_options()}  # fmt: skip
    _check_options(default, "sensitivity")
    selection = _selection(model, qconfig_spec, exclude, default)
    candidates = parse_formats(formats)
    samples = _budget.samples_list(sample_inputs)
    mode = _budget.progress_mode(progress)
    if samples is not None:
        model = copy.deepcopy(model)
    slots, _ = _slots.find_slots(model, *selection)
    targets = [(s.name, s.mod, s.base) for s in slots.values()]
    swapper = _slots.swapper(model, slots)
    outputs = None if samples is None else _calibrate(model, slots, samples)
    bar = Progress(len(targets), mode)
    try:
        table = _budget.measure(targets, candidates, outputs, swapper, bar)
    finally:
        bar.close()
    return table


def _any_calibrated(slots: dict[int, _slots.Slot], plan: Optional[Plan]) -> bool:
    """Whether the samples would calibrate a weight: a 4-bit searched linear module (in the
    plan's formats when there is one). If not, the float pass they cost is skipped."""
    linear = [s for s in slots.values() if _slots.swap_target(s.mod) is Linear]
    if plan is not None:
        formats = plan.formats()
        return any(
            s.name in formats and _slots.calibrates(formats[s.name].options() or {}) for s in linear
        )
    return any(_slots.calibrates(s.base) for s in linear)


def _calibrate(
    model: nn.Module, slots: dict[int, _slots.Slot], samples: list[Any]
) -> _budget.Outputs:
    """One pass of the float model (nothing swapped yet) over the samples: its outputs (the
    reference of every measurement) and each linear module's importance of its input
    features."""
    _budget.require_weights([s.mod for s in slots.values()], "sample_inputs")
    linear = {s.name: s.mod for s in slots.values() if _slots.swap_target(s.mod) is Linear}
    outputs, importance = _budget.float_pass(model, linear, samples)
    for slot in slots.values():
        slot.importance = importance.get(slot.name)
        slot.new = None
    return outputs


def _selection(
    model: nn.Module, qconfig_spec: Optional[Spec], exclude: Iterable[str], default: dict[str, Any]
) -> tuple[Any, ...]:
    """What ``qconfig_spec`` and ``exclude`` select, checked against the model: the arguments
    of :func:`_slots.find_slots` after the model."""
    types, names = _parse_spec(qconfig_spec, default)
    modules = dict(model.named_modules())
    is_excluded = _excluder(exclude, list(modules))
    for name in names:
        if name not in modules:
            raise ValueError(f"qconfig_spec names module {name!r}, which is not in the model")
        mod = modules[name]
        if names[name] is not None and not any(_slots.swap_target(m) for m in mod.modules()):
            raise TypeError(
                f"qconfig_spec names module {name!r} ({type(mod).__name__}), which is not one "
                f"of {_SUPPORTED} and contains none"
            )
    conv1d_default = dict(default) if qconfig_spec is None else None
    return types, names, is_excluded, conv1d_default


def _as_plan(plan: Any) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Mapping):
        return Plan.from_dict(plan)
    raise TypeError(f"plan must be a dynaq.mixed.Plan or a dict, got {type(plan).__name__}")


#: Parameter names of tables that are looked up or added, not multiplied: position and token
#: embeddings held as raw parameters (ViT's ``position_embeddings``, ``cls_token``, CLIP's
#: ``positional_embedding``), masks.
_NOT_MATMUL = ("embed", "pos", "cls", "token", "mask", "bias")


def _looks_like_matmul_weight(name: str, p: torch.Tensor) -> bool:
    """A float parameter of 2 or more dimensions that is not a lookup table or an additive
    term; for 3 or more dimensions, a stack (experts) rather than a leading axis of 1."""
    if not p.dtype.is_floating_point or p.dim() < 2 or (p.dim() >= 3 and p.shape[0] == 1):
        return False
    return not any(word in name.lower() for word in _NOT_MATMUL)


def _warn_unhandled(model: nn.Module, left: dict[str, nn.Module], swapped: dict[int, Any]) -> None:
    """One warning naming the modules that hold matmul weights dynaq cannot take (3-D expert
    weights, ``MultiheadAttention``'s packed projections, subclasses of the swapped types, ...)
    with the share of matmul weight bytes they leave in float; never silence."""
    kept_on_purpose = {id(m) for m in left.values()}
    skip = (nn.Embedding, nn.EmbeddingBag, nn.modules.conv._ConvNd)
    found: list[tuple[str, str, int]] = []
    for name, mod in model.named_modules():
        if id(mod) in kept_on_purpose or isinstance(mod, (*skip, Linear, LSTM, GRU)):
            continue
        if any(id(mod) == id(m) or name.startswith(n + ".") for n, m in left.items() if n):
            continue
        shapes = [
            (pn, tuple(p.shape), p.numel() * p.element_size())
            for pn, p in mod._parameters.items()
            if p is not None and _looks_like_matmul_weight(pn, p)
        ]
        for pn, shape, nbytes in shapes:
            found.append((f"{name}.{pn}" if name else pn, f"{type(mod).__name__} {shape}", nbytes))
    if not found:
        return
    float_bytes = sum(b for _, _, b in found)
    done = sum(4 * n * k for m in swapped.values() for n, k in m._weight_shapes().values())
    share = float_bytes / max(1, float_bytes + done)
    listed = ", ".join(f"{n} ({what})" for n, what, _ in found[:8])
    more = f", and {len(found) - 8} more" if len(found) > 8 else ""
    warnings.warn(
        f"dynaq.torch.quantize_dynamic left {len(found)} matmul weight(s) in float that it "
        f"cannot quantize: {listed}{more}; they hold {100 * share:.1f}% of the model's matmul "
        "weight bytes (as float32)",
        stacklevel=3,
    )
