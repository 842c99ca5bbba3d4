"""``DynaqConfig`` and ``DynaqHfQuantizer``: the hooks transformers (5.x) calls while it loads a
model, and what they do. Design notes: ``README.md`` beside this file."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

try:
    import torch
    from torch import nn
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers import HfQuantizer
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )
    from transformers.quantizers.quantizers_utils import get_module_from_name, should_convert_module
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dynaq.transformers needs torch and transformers >= 5 (pip install 'dynaq[transformers]'); "
        f"importing them failed: {e}"
    ) from e

from .. import _dynaq
from .. import layers as _layers
from ..mixed import Format, Plan, parse_formats
from ..mixed.select import check_budget
from ..torch import Linear
from ..torch._bridge import is_conv1d, param_numpy
from ..torch.budget import PLAN_ATTR
from ._checkpoint import checkpoint_header, module_name
from ._mixed import plan_formats

__all__ = ["DynaqConfig", "DynaqHfQuantizer", "register"]

METHOD = "dynaq"
_FLOAT = Format(None)
#: The safetensors metadata written by save_pretrained: the format, and that Conv1D weights are
#: stored as dynaq stores every weight, ``(out, in)`` (the CLI keeps a file's own layout).
_META_FORMAT = "dynaq.format"
_META_LAYOUT = "dynaq.layout"
_LAYOUT = "out_in"
_SCALE = _dynaq.SCALE_SUFFIX  # "_scale"
#: The parts a stored weight may have besides ``weight``: ``weight_scale`` always; a 4-bit one
#: ``weight_min``, ``weight_gscale``, ``weight_gmin`` as its format needs them.
_PARTS = tuple(_dynaq.WEIGHT_PART_SUFFIXES)
_OPTIONAL = ("input_scale", "input_zero_point")
#: Where a module keeps its packed weight between the moment it is read and the end of loading.
#: On the module: transformers hands each tensor a copy of the quantizer, not the quantizer.
_PENDING = "_dynaq_pending"


class DynaqConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a dynaq model (``quant_method: "dynaq"`` in config.json).

    Parameters
    ----------
    per_channel : bool
        int8: one weight scale per output channel (default) or one per tensor.
    granularity : {"row", "tensor"}
        Activation scales per row (default) or one per call.
    bits : int
        8 (default) or 4: the weights' bits (activations are int8 either way).
    group_size : int or None
        4-bit weights: 32 (default), 64 or 128 input features per scale and minimum, or None for
        one per output channel. Must divide the ``in_features`` of every module converted (keep
        others float with ``modules_to_not_convert``).
    symmetric : bool
        4-bit weights: levels symmetric about zero instead of a minimum per group.
    method : {"search", "rtn"}
        4-bit weights: least-squares search of each group's scale and minimum (default), or
        round-to-nearest.
    modules_to_not_convert : list of str, optional
        Modules kept in float (names, prefixes or regular expressions, as transformers matches
        them), in addition to those transformers keeps by default (tied weights and the output
        embedding, which a quantized model must not duplicate).
    max_bits_per_weight, max_bytes, min_sqnr_db : float, optional
        Automatic mixed precision (one of them): a format per module (4-bit at each group
        size, int8, or float) chosen from the checkpoint's weights alone, as
        ``python -m dynaq quantize --max-bits`` does: the least mean output error within the
        size, or each module's smallest format whose output SQNR on synthetic activations
        reaches ``min_sqnr_db``. The plan chosen is stored as ``plan``.
    formats : list of str, optional
        A budget's candidates (``["int4-g128", "int8", "float"]``; every one by default).
    plan : dict, optional
        Each module's format (a :class:`dynaq.mixed.Plan`'s ``to_dict()``, or a mapping of
        module names to format names); modules it does not name stay float. ``save_pretrained``
        writes the plan a budget chose here, and ``dynaq.torch.plan(model)`` gives it.
    format_version : int, optional
        The version of dynaq's on-disk form a saved model uses (written by dynaq: 2 for int8
        weights, 3 for 4-bit; a folder from a newer dynaq is refused rather than misread).
    """

    def __init__(
        self,
        per_channel: bool = True,
        granularity: str = "row",
        modules_to_not_convert: Optional[list[str]] = None,
        format_version: Optional[int] = None,
        bits: int = 8,
        group_size: Optional[int] = ...,  # type: ignore[assignment]
        symmetric: Optional[bool] = None,
        method: Optional[str] = None,
        max_bits_per_weight: Optional[float] = None,
        max_bytes: Optional[int] = None,
        min_sqnr_db: Optional[float] = None,
        formats: Optional[list[str]] = None,
        plan: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        quant_method = kwargs.pop("quant_method", METHOD)
        if quant_method != METHOD:
            raise ValueError(f"DynaqConfig: quant_method must be {METHOD!r}, got {quant_method!r}")
        if kwargs:
            raise TypeError(f"DynaqConfig got unknown option(s): {', '.join(sorted(kwargs))}")
        self.quant_method = METHOD
        self.per_channel = per_channel
        self.granularity = granularity
        self.modules_to_not_convert = modules_to_not_convert
        self.bits = bits
        # Resolved, so that config.json says what was used: 32 unless given for 4 bits.
        self.group_size = (32 if bits == 4 else None) if group_size is ... else group_size
        self.symmetric = symmetric
        self.method = method
        self.max_bits_per_weight = max_bits_per_weight
        self.max_bytes = max_bytes
        self.min_sqnr_db = min_sqnr_db
        self.formats = formats
        self.plan = plan.to_dict() if isinstance(plan, Plan) else plan
        if format_version is None:
            four = bits == 4
            format_version = _dynaq.FORMAT_VERSION_INT4 if four else _dynaq.FORMAT_VERSION
        self.format_version = format_version
        self.post_init()

    def weight_options(self) -> dict[str, Any]:
        """The options :func:`dynaq.pack_weight` takes for these weights."""
        if self.bits == 8:
            return {"per_channel": self.per_channel}
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "method": self.method}  # fmt: skip

    def budget(self) -> dict[str, float]:
        """The size or accuracy budget asked for (empty when none)."""
        return check_budget(self.max_bits_per_weight, self.max_bytes, self.min_sqnr_db)

    def post_init(self) -> None:
        """Check every option (transformers calls it with the values of config.json too)."""
        if not isinstance(self.per_channel, bool):
            raise TypeError(
                f"DynaqConfig: per_channel must be a bool, got {type(self.per_channel).__name__}"
            )
        if not isinstance(self.granularity, str):
            raise TypeError(
                f"DynaqConfig: granularity must be 'row' or 'tensor', got "
                f"{type(self.granularity).__name__}"
            )
        try:
            _dynaq.check_granularity(self.granularity)
        except ValueError as e:
            raise ValueError(f"DynaqConfig: {e}") from None
        skip = self.modules_to_not_convert
        if skip is not None and (
            isinstance(skip, str)
            or not isinstance(skip, (list, tuple))
            or not all(isinstance(s, str) for s in skip)
        ):
            raise TypeError("DynaqConfig: modules_to_not_convert must be a list of module names")
        if skip is not None:
            self.modules_to_not_convert = list(skip)
        # Options read from an older config.json are absent: int8.
        for name, default in (("bits", 8), ("group_size", None), ("symmetric", None),
                              ("method", None)):  # fmt: skip
            if not hasattr(self, name):
                setattr(self, name, default)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"DynaqConfig: bits must be 8 or 4, got {self.bits!r}")
        options = {"bits": self.bits, "symmetric": self.symmetric, "method": self.method}
        if self.bits == 4 or self.group_size is not None:
            options["group_size"] = self.group_size
        try:
            # 128 columns: every group size divides it (a module it does not fit is named when
            # the model is converted).
            _dynaq.weight_format(128, per_channel=self.per_channel, **options)
        except (TypeError, ValueError) as e:
            raise type(e)(f"DynaqConfig: {e}") from None
        for name in ("max_bits_per_weight", "max_bytes", "min_sqnr_db", "formats", "plan"):
            if not hasattr(self, name):
                setattr(self, name, None)
        try:
            budget = self.budget()
            if self.plan is not None:
                Plan.from_dict(self.plan)
            if self.formats is not None:
                # Kept as names, so that config.json reads plainly.
                self.formats = [f.name for f in parse_formats(self.formats)]
        except (TypeError, ValueError) as e:
            raise type(e)(f"DynaqConfig: {e}") from None
        if self.formats is not None and not budget:
            raise ValueError("DynaqConfig: formats are the candidates of a budget: give one too")
        v = self.format_version
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"DynaqConfig: format_version must be an int, got {type(v).__name__}")
        newest = max(_dynaq.FORMAT_VERSION, _dynaq.FORMAT_VERSION_INT4)
        if not 1 <= v <= newest:
            raise ValueError(
                f"DynaqConfig: format_version {v} is not one this dynaq reads (1 to "
                f"{newest}); the model was saved by a newer dynaq: upgrade dynaq"
            )


class _Op(ConversionOps):
    """What both of dynaq's loading operations share: the quantizer they serve (under the
    attribute name transformers looks for) and the signature transformers calls."""

    def __init__(self, hf_quantizer: DynaqHfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer


class _Quantize(_Op):
    """Quantize on load: one float weight as it is read, packed at once (the float copy is
    dropped); the module takes it when the whole model is loaded."""

    def convert(
        self,
        input_dict: dict[str, Any],
        model: Any = None,
        full_layer_name: Optional[str] = None,
        missing_keys: Any = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        q = self.hf_quantizer
        for key, value in input_dict.items():
            value = _one(value)
            module, _ = get_module_from_name(model, key)
            w = value.t() if getattr(module, "_dynaq_conv1d", False) else value
            try:
                options = getattr(module, "_dynaq_options", None)
                if options is None:
                    options = q.quantization_config.weight_options()
                module.__dict__[_PENDING] = _dynaq.pack_weight(param_numpy(w, key), **options)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
            _discard(missing_keys, key, *(key + p for p in _PARTS))
        return {}


class _Identity(ConversionOps):
    def convert(self, input_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return input_dict


class _Deserialize(_Op):
    """Load a dynaq checkpoint: each ``X.weight`` with its ``X.weight_scale`` (and a 4-bit
    weight's other parts). A dynaq module's weight is checked and packed; any other module gets
    float weights in its own dtype (the CLI also quantizes embeddings: they are dequantized)."""

    @property
    def reverse_op(self) -> ConversionOps:
        return _Identity()  # saving writes the state dict as it is

    def convert(
        self,
        input_dict: dict[str, Any],
        model: Any = None,
        full_layer_name: Optional[str] = None,
        missing_keys: Any = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        q = self.hf_quantizer
        w = _one(input_dict.get("weight"))
        s = _one(input_dict.get("weight" + _SCALE))
        parts = {p: _one(input_dict.get("weight" + p)) for p in _PARTS}
        parts = {p: t for p, t in parts.items() if t is not None}
        if w is None:
            found = ", ".join(f"{full_layer_name}{p}" for p in parts)
            raise ValueError(f"{found} in the checkpoint, {full_layer_name} is not")
        module, _ = get_module_from_name(model, full_layer_name)
        if isinstance(module, Linear):
            if s is None:
                raise ValueError(f"{full_layer_name}: a dynaq layer needs its {_SCALE[1:]}")
            module.__dict__[_PENDING] = q._load_weight(module, full_layer_name, w, parts)
            _discard(missing_keys, full_layer_name, *(full_layer_name + p for p in _PARTS))
            return {}
        target = module._parameters.get("weight")
        dtype = target.dtype if target is not None else torch.get_default_dtype()
        if s is not None and w.dtype == torch.uint8:  # a 4-bit weight that stays float
            pw = _dynaq.weight_from_tensors(_arrays(full_layer_name, w, parts), full_layer_name)
            w = torch.from_numpy(pw.dequantize())
        elif s is not None:  # quantized by the CLI, but this module stays float: dequantize
            if w.dtype != torch.int8:
                raise ValueError(f"{full_layer_name}: a scaled weight must be int8, got {w.dtype}")
            w = w.float() * (s.float().reshape(-1, *([1] * (w.dim() - 1))) if s.dim() else s)
        elif not w.dtype.is_floating_point:
            raise ValueError(
                f"{full_layer_name}: {w.dtype} with no {full_layer_name}{_SCALE}; a float module "
                "needs float weights"
            )
        return {"weight": w.to(dtype)}


def _arrays(key: str, w: torch.Tensor, parts: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A stored weight's tensors as ``weight_from_tensors`` takes them, named as stored."""
    tensors = {key: w, **{key + p: t for p, t in parts.items()}}
    return {k: t.detach().cpu().contiguous().numpy() for k, t in tensors.items()}


def _one(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _discard(missing_keys: Any, *keys: str) -> None:
    if missing_keys is not None:
        for k in keys:
            missing_keys.discard(k)


class DynaqHfQuantizer(HfQuantizer):
    """transformers' side of dynaq (registered as ``"dynaq"``). Quantize on load: the model's
    ``nn.Linear`` and ``Conv1D`` become meta :class:`dynaq.torch.Linear` skeletons before loading
    and each weight is quantized as it is read. A dynaq checkpoint (``config.json`` says
    ``quant_method: "dynaq"``, or its safetensors hold dynaq weights) loads as stored: the
    modules swapped are those the checkpoint quantized."""

    requires_calibration = False
    # Every name a stored weight may have; a checkpoint holds its own format's.
    serialized_names = {"weight": ["weight", *("weight" + p for p in _PARTS)]}

    def __init__(self, quantization_config: DynaqConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._converted: list[str] = []
        self._out_in = True

    # --- environment -------------------------------------------------------------------------

    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        where = set(map(str, device_map.values())) if isinstance(device_map, dict) else set()
        if isinstance(device_map, (str, torch.device)):
            where = {str(device_map)}
        if where - {"cpu"}:
            raise ValueError(
                f"dynaq runs on the CPU: device_map places modules on {sorted(where - {'cpu'})}"
            )

    def update_dtype(self, dtype: Any) -> Any:
        return dtype  # dynaq's scales and biases stay float32 whatever the model's dtype

    # --- loading -----------------------------------------------------------------------------

    def _process_model_before_weight_loading(
        self, model: Any, checkpoint_files: Optional[list[str]] = None, **kwargs: Any
    ) -> None:
        tensors, metadata = checkpoint_header(checkpoint_files)
        scaled = {k[: -len(_SCALE)] for k in tensors if k.endswith(_SCALE)}
        # A folder without a quantization_config whose weights are dynaq's (the CLI's file):
        # load it as stored, not as float weights to quantize again.
        if not self.pre_quantized and any(tensors.get(k, ("",))[0] in ("I8", "U8") for k in scaled):
            self.pre_quantized = True
        self._out_in = metadata.get(_META_LAYOUT) == _LAYOUT
        cfg = self.quantization_config
        swap: dict[str, Any] = {}
        chosen: Optional[dict[str, Format]] = None
        if self.pre_quantized:
            if tensors and not scaled:
                raise ValueError(
                    "config.json says quant_method 'dynaq' but the checkpoint holds no dynaq "
                    "weight (no *.weight_scale): it is not a dynaq model (was it saved from a "
                    "float load, without importing dynaq.transformers first?)"
                )
            modules = dict(model.named_modules())
            # Tied weights stay float and tied (a file that quantized them is dequantized).
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            tied_modules = {k.rsplit(".", 1)[0] for pair in tied.items() for k in pair}
            for key in scaled:
                name = module_name(key[: -len(".weight")], modules, model)
                mod = None if name is None or name in tied_modules else modules[name]
                if type(mod) is nn.Linear or is_conv1d(mod):
                    swap[name] = (key, tensors)
        else:
            skip = self.get_modules_to_not_convert(
                model, cfg.modules_to_not_convert, getattr(model, "_keep_in_fp32_modules", None),
                add_default_skips=True,
            )  # fmt: skip
            self.modules_to_not_convert = skip
            for name, mod in model.named_modules():
                if name and (type(mod) is nn.Linear or is_conv1d(mod)):
                    if should_convert_module(name, skip):
                        swap[name] = None
            chosen = plan_formats(self.quantization_config, model, list(swap), checkpoint_files)
            if chosen is not None:
                swap = {n: None for n in swap if not chosen.get(n, _FLOAT).is_float}
        for name, found in swap.items():
            mod = model.get_submodule(name)
            conv1d = is_conv1d(mod)
            in_f, out_f = (mod.nx, mod.nf) if conv1d else (mod.in_features, mod.out_features)
            options = cfg.weight_options()
            if found is None and chosen is not None:
                options = chosen[name].layer_options(cfg.per_channel) or {}
            if found is not None:  # as the checkpoint stores it
                options = _stored_options(*found)
                if conv1d and not self._out_in and options.get("bits") == 4:
                    # The CLI's (in, out) groups: requantized per the module when loaded.
                    options["group_size"] = None
            try:
                new = Linear(in_f, out_f, mod.bias is not None, granularity=cfg.granularity,
                             device="meta", **options)  # fmt: skip
            except ValueError as e:
                raise ValueError(
                    f"{name}.weight: {e} (keep the module float with modules_to_not_convert, or "
                    "choose a group size that divides it)"
                ) from None
            new._dynaq_conv1d = conv1d  # type: ignore[attr-defined]
            new._dynaq_options = options  # type: ignore[attr-defined]
            if found is not None:
                # A calibrated input scale in the checkpoint: the skeleton has a place for it.
                prefix = found[0][: -len("weight")]
                for opt in _OPTIONAL:
                    if prefix + opt in found[1]:
                        new.register_buffer(opt, torch.empty((), device="meta"))
            new.train(mod.training)
            model.set_submodule(name, new)
            self._converted.append(name)

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        if self.pre_quantized:
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, Linear) and tensor_name == "weight"

    def get_quantize_ops(self) -> ConversionOps:
        return _Quantize(self)

    def get_load_operations(self) -> dict[str, Any]:
        return {"deserialize": _Deserialize}

    def _load_weight(
        self, module: Linear, key: str, w: torch.Tensor, parts: dict[str, torch.Tensor]
    ) -> Any:
        """A stored weight and its parts (``_scale``, ...) as a PackedWeight, checked."""
        pw = _dynaq.weight_from_tensors(_arrays(key, w, parts), key)
        if getattr(module, "_dynaq_conv1d", False) and not self._out_in:
            # The CLI quantized a Conv1D weight as stored, (in, out), by rows: scales per input
            # feature. Dequantize it and quantize it per output channel (in the file's format),
            # as dynaq computes.
            options: dict[str, Any] = {"per_channel": pw.per_channel}
            if pw.bits == 4:
                k = pw.shape[0]  # the module's in_features
                group = pw.group_size if pw.group_size and k % pw.group_size == 0 else None
                options = {"bits": 4, "group_size": group, "symmetric": pw.symmetric}
            return _dynaq.pack_weight(np.ascontiguousarray(pw.dequantize().T), **options)
        return pw

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # transformers fills what the checkpoint lacked with uninitialised memory, and replaces
        # non-persistent buffers (the panels) with it: every dynaq module is built again here,
        # from its packed weight and the tensors that were loaded, or loading fails.
        problems = []
        for name in self._converted:
            module = model.get_submodule(name)
            pw = module.__dict__.pop(_PENDING, None)
            if pw is None:
                problems.append(f"{name}.weight is not in the checkpoint")
                continue
            tensors: dict[str, np.ndarray] = {}
            absent = [
                opt for opt in ("bias", *_OPTIONAL)
                if module._buffers.get(opt) is not None
                and (module._buffers[opt].device.type == "meta"
                     or not getattr(module._buffers[opt], "_is_hf_initialized", False))
            ]  # fmt: skip
            if absent:
                problems.extend(f"{name}.{opt} is not in the checkpoint" for opt in absent)
                continue
            for opt in ("bias", *_OPTIONAL):
                t = module._buffers.get(opt)
                if t is not None:
                    tensors[opt] = param_numpy(t, f"{name}.{opt}")
            try:
                layer = _layers.Linear._from_tensors(
                    {"weight": pw}, tensors, {"granularity": self.quantization_config.granularity}
                )
            except (TypeError, ValueError) as e:
                problems.append(f"{name}: {e}")
                continue
            if layer.weight.shape != (module.out_features, module.in_features):
                problems.append(
                    f"{name}: the checkpoint's weight is {layer.weight.shape}, the model's "
                    f"({module.out_features}, {module.in_features})"
                )
                continue
            module._adopt(layer)
        if problems:
            raise RuntimeError("dynaq could not load the model: " + "; ".join(problems))
        if self.quantization_config.plan is not None:
            setattr(model, PLAN_ATTR, Plan.from_dict(self.quantization_config.plan).to_json())
        return model

    # --- saving, dequantizing, flags ---------------------------------------------------------

    def get_state_dict_and_metadata(self, model: Any) -> tuple[None, dict[str, str]]:
        four = any(isinstance(m, Linear) and m.bits == 4 for m in model.modules())
        version = _dynaq.FORMAT_VERSION_INT4 if four else _dynaq.FORMAT_VERSION
        return None, {_META_FORMAT: str(version), _META_LAYOUT: _LAYOUT}

    def _dequantize(self, model: Any, dtype: Any = None) -> Any:
        dtype = dtype or torch.float32
        for name, mod in list(model.named_modules()):
            if not isinstance(mod, Linear):
                continue
            w = mod.dequantized_weight()
            b = None if mod.bias is None else mod.bias.detach().clone()
            if getattr(mod, "_dynaq_conv1d", False):
                from transformers.pytorch_utils import Conv1D

                new = Conv1D(mod.out_features, mod.in_features)
                new.weight = nn.Parameter(w.t().contiguous().to(dtype))
                new.bias = nn.Parameter(
                    (b if b is not None else torch.zeros(mod.out_features)).to(dtype)
                )
            else:
                new = nn.Linear(mod.in_features, mod.out_features, bias=b is not None,
                                dtype=dtype)  # fmt: skip
                with torch.no_grad():
                    new.weight.copy_(w)
                    if b is not None:
                        new.bias.copy_(b)
            model.set_submodule(name, new)
        return model

    def is_serializable(self, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def _stored_options(key: str, tensors: dict[str, tuple[str, list[int]]]) -> dict[str, Any]:
    """The options of the weight a checkpoint stores under ``key``, from its header: int8 with a
    scale per channel or per tensor; 4-bit with its group size (``K / groups``) and whether it
    is symmetric (no ``_min``)."""
    dtype, shape = tensors[key]
    if dtype != "U8":
        return {"per_channel": len(tensors[key + _SCALE][1]) == 1}
    gscale = tensors.get(key + "_gscale")
    k = shape[1] if len(shape) == 2 else 0
    groups = gscale[1][1] if gscale is not None and len(gscale[1]) == 2 else 0
    group = k // groups if groups else None
    return {"bits": 4, "group_size": group, "symmetric": key + "_min" not in tensors}


def register() -> None:
    """Register ``"dynaq"`` with transformers (once: a second import or a reload keeps the
    first registration)."""
    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(METHOD)(DynaqConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(METHOD)(DynaqHfQuantizer)
