"""Mixed precision for torch models: measure each layer's sensitivity (from the weights alone,
or on the model with sample inputs), choose a format per layer for a budget, confirm it on the
whole mixed model, and read a quantized model's plan back (:func:`plan`).

With sample inputs, one pass per layer measures everything for that layer: the layer is swapped
for its smallest format (the probe) while every other layer stays float, so the layer sees
exactly the activations of the float model; a hook on it runs every candidate format (and the
float layer) on those activations, giving each format's own output error, while the model's
output gives the probe's effect on the model. The other formats' effect on the model is the
probe's scaled by their own output error (errors this small pass through the layers above
linearly; the final measurement of the mixed model checks the sum). The blocks that ran before
the layer are replayed from a recording (``_replay.py``). The samples' float pass also gives
each linear layer's importance of its input features, which calibrates its 4-bit weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .._text import Progress
from ..mixed import plan as _plan
from ..mixed.formats import FLOAT, Format
from ..mixed.select import Frontier, allowed_noise, choose
from ..mixed.sensitivity import LayerCosts, Sensitivity, measure_weights, sqnr_db
from . import _bridge
from ._replay import Replay
from .compare import _call, _first_tensor, _real
from .modules import GRU, LSTM, Linear

__all__ = ["plan"]

#: The attribute of a quantized model's root module that holds its :class:`~dynaq.mixed.Plan`,
#: as JSON (a string pickles with ``torch.load(weights_only=True)``; a Plan would not).
PLAN_ATTR = "_dynaq_plan"
#: Retries of an accuracy budget whose measurement falls short of the prediction: each one
#: tightens the noise allowed by the shortfall (and moves at least one point along the front);
#: after these, the front's last point (float wherever float is a candidate), which holds.
RETRIES = 6

Target = tuple[str, nn.Module, dict[str, Any]]
#: The sample inputs, their attention masks and the float model's outputs on them.
Outputs = tuple[list[Any], list[Optional[torch.Tensor]], list[torch.Tensor]]


def plan(model: nn.Module) -> _plan.Plan:
    """The plan of a model that :func:`dynaq.torch.quantize_dynamic` quantized: the one it
    chose for a budget (with what it measured), else one read from the model's modules (each
    dynaq module's format and bytes; the layers kept float are not listed).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    dynaq.mixed.Plan
        Reusable: ``quantize_dynamic(other_copy, plan=p)``; ``p.save(path)`` writes it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    stored = getattr(model, PLAN_ATTR, None)
    if isinstance(stored, str):
        return _plan.Plan.from_json(stored)
    layers = []
    for name, mod in model.named_modules():
        if isinstance(mod, (Linear, LSTM, GRU)):
            fmt = Format(8) if mod.bits == 8 else Format(4, mod.group_size, mod.symmetric)
            layers.append(_plan.PlanLayer(
                name=name, kind=type(mod).__name__, shapes=tuple(mod._weight_shapes().values()),
                format=fmt, nbytes=module_nbytes(mod),
            ))  # fmt: skip
    return _plan.Plan(layers)


def module_nbytes(mod: nn.Module) -> int:
    """Stored bytes of a module's weights (its state dict without the biases)."""
    return sum(
        t.numel() * t.element_size()
        for k, t in mod.state_dict().items()
        if not k.rsplit(".", 1)[-1].startswith("bias")
    )


def float_matrices(mod: nn.Module) -> list[np.ndarray]:
    """A float module's weight matrices, each ``(out, in)`` float32."""
    if _bridge.is_conv1d(mod):
        return [_bridge.param_numpy(mod.weight.t(), "weight")]
    if isinstance(mod, nn.Linear):
        return [_bridge.param_numpy(mod.weight, "weight")]
    return [
        _bridge.param_numpy(getattr(mod, n), n)
        for n in mod._flat_weights_names
        if n.startswith("weight")
    ]


def format_options(fmt: Format, opts: dict[str, Any]) -> dict[str, Any]:
    """A target's options with its weight format replaced by ``fmt``'s."""
    return {"granularity": opts["granularity"], **(fmt.layer_options(opts["per_channel"]) or {})}


def fits(fmt: Format, mod: nn.Module) -> bool:
    """Whether every weight of a float module can take ``fmt``."""
    return all(fmt.fits(k) for _, k in _shapes(mod))


class Swapper:
    """How the measurement reaches into the model: ``swap(chosen)`` puts each named layer in
    its format (a :class:`Format`, or a module to use as it is; float for the rest) and
    returns the model's root; ``quantize(module, name, options)`` makes one dynaq module."""

    def __init__(
        self,
        swap: Callable[[Mapping[str, Any]], nn.Module],
        quantize: Callable[[nn.Module, str, dict[str, Any]], nn.Module],
    ) -> None:
        self.swap = swap
        self.quantize = quantize


def measure(
    targets: Sequence[Target],
    formats: tuple[Format, ...],
    outputs: Optional[Outputs],
    model: Swapper,
    bar: Progress,
) -> Sensitivity:
    """The sensitivity table of ``targets`` (name, float module, options): from the weights
    alone, or measured on the model with the samples of ``outputs`` (from :func:`float_pass`)."""
    require_weights([m for _, m, _ in targets], "a budget")
    if outputs is not None:
        return _measure_samples(targets, formats, outputs, model, bar)
    return _measure_weights(targets, formats, bar)


def require_weights(modules: Iterable[nn.Module], what: str) -> None:
    """``ValueError`` when a module is on the meta device: ``what`` needs its weights."""
    if any(p.device.type == "meta" for m in modules for p in m.parameters()):
        raise ValueError(
            f"{what} needs the weights, and the model is on the meta device: choose the plan "
            "on a model with its weights, then pass plan=dynaq.torch.plan(quantized) here"
        )


def choose_plan(
    targets: Sequence[Target],
    formats: tuple[Format, ...],
    budget: dict[str, float],
    outputs: Optional[Outputs],
    model: Swapper,
    progress: Any,
) -> _plan.Plan:
    """Measures ``targets``, chooses a format each for ``budget`` and, with samples, confirms
    it on the mixed model (see :func:`measure`)."""
    bar = Progress(len(targets) + (1 if outputs else 0), progress_mode(progress))
    try:
        table = measure(targets, formats, outputs, model, bar)
        choice, front = choose(table, budget)
        result = _plan.build(table, choice, budget=budget, front=front)
        if outputs is not None:
            bar.step("the mixed model")
            result = _confirm(result, table, front, budget, outputs, model.swap)
    finally:
        bar.close()
    return result


def progress_mode(progress: Any) -> str:
    """The :class:`~dynaq._text.Progress` mode of a ``progress`` argument: None for a bar
    when stderr is a terminal, True for a bar, False for none."""
    if progress is None:
        return "auto"
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    return "bar" if progress else "off"


def samples_list(sample_inputs: Optional[Iterable[Any]]) -> Optional[list[Any]]:
    """``sample_inputs`` as a list, checked: each entry is what ``compare`` takes."""
    if sample_inputs is None:
        return None
    if isinstance(sample_inputs, (torch.Tensor, Mapping, str, bytes)) or not isinstance(
        sample_inputs, Iterable
    ):
        raise TypeError(
            "sample_inputs must be a list of model inputs (each a tensor, a tuple of arguments "
            f"or a dict of keyword arguments), got {type(sample_inputs).__name__}"
        )
    out = list(sample_inputs)
    if not out:
        raise ValueError("sample_inputs is empty")
    return out


def _measure_weights(
    targets: Sequence[Target], fmts: Sequence[Format], bar: Progress
) -> Sensitivity:
    layers = []
    for name, mod, opts in targets:
        bar.step(name)
        try:
            matrices = float_matrices(mod)
            itemsize = next(p for p in mod.parameters()).element_size()
            layers.append(measure_weights(
                name, type(mod).__name__, matrices, [f for f in fmts if fits(f, mod)],
                float_itemsize=itemsize, per_channel=opts["per_channel"],
                granularity=opts["granularity"],
            ))  # fmt: skip
        except (TypeError, ValueError) as e:
            raise type(e)(f"cannot measure module {name!r}: {e}") from e
    return Sensitivity(layers, signal=float(len(layers)), calibrated=False)


class _Energy:
    """Sums of ``|ref|^2`` and ``|ref - got|^2`` (on the real positions) and of ``ref . got``,
    ``|got|^2`` for the cosine."""

    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.got = 0.0

    def add(self, ref: torch.Tensor, got: torch.Tensor) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"outputs of shapes {tuple(ref.shape)} and {tuple(got.shape)}")
        a = ref.detach().to(torch.float64).reshape(-1)
        b = got.detach().to(torch.float64).reshape(-1)
        d = a - b
        self.signal += float(torch.dot(a, a))
        self.noise += float(torch.dot(d, d))
        self.dot += float(torch.dot(a, b))
        self.got += float(torch.dot(b, b))

    @property
    def cosine(self) -> float:
        if self.signal == 0.0 or self.got == 0.0:
            return 1.0 if self.signal == self.got else 0.0
        return self.dot / math.sqrt(self.signal * self.got)


def _mask(sample: Any) -> Optional[torch.Tensor]:
    mask = sample.get("attention_mask") if isinstance(sample, Mapping) else None
    return None if mask is None else mask.detach().cpu() != 0


def _output(model: nn.Module, sample: Any, mask: Optional[torch.Tensor]) -> torch.Tensor:
    out = _first_tensor(_call(model, sample))
    if out is None:
        raise TypeError("the model's output holds no tensor to measure")
    return _real(out.detach().cpu(), mask)


def _measure_samples(
    targets: Sequence[Target],
    fmts: Sequence[Format],
    outputs: Outputs,
    model: Swapper,
    bar: Progress,
) -> Sensitivity:
    refs = outputs[2]
    signal = sum(float(torch.dot(r.reshape(-1).double(), r.reshape(-1).double())) for r in refs)
    replay = _replayer(model.swap({}), targets, outputs, bar)
    layers = []
    for name, mod, opts in targets:
        bar.step(name)
        made = {f: model.quantize(mod, name, format_options(f, opts)) for f in fmts
                if not f.is_float and fits(f, mod)}  # fmt: skip
        layers.append(_measure_layer(name, mod, made, FLOAT in fmts, outputs, model.swap,
                                     replay))  # fmt: skip
    return Sensitivity(layers, signal=signal, calibrated=True)


def _replayer(
    root: nn.Module, targets: Sequence[Target], outputs: Outputs, bar: Progress
) -> Replay:
    """The float model's blocks recorded, and their replay proven on this model (see
    ``_replay.py``)."""
    samples, masks, refs = outputs
    replay = Replay(root, {name: mod for name, mod, _ in targets})

    def run() -> bool:
        same = True
        with torch.no_grad():
            for i, (s, m, ref) in enumerate(zip(samples, masks, refs)):
                replay.begin_sample(i)
                same = torch.equal(_output(root, s, m), ref) and same
        return same

    if replay.ok:
        bar.note("recording the float model's blocks")
        replay.record(len(samples), run)
        replay.prove(run)
    return replay


def float_pass(
    root: nn.Module, linear: Mapping[str, nn.Module], samples: list[Any]
) -> tuple[Outputs, dict[str, np.ndarray]]:
    """The float model over the samples: its outputs (on the real positions) and, for each of
    the ``linear`` modules (name -> float module), the mean square of each input feature over
    the real positions: the importance that calibrates its 4-bit search (None-free: a module
    that never ran, or whose inputs were all zero, is left out)."""
    masks = [_mask(s) for s in samples]
    sums: dict[str, list[Any]] = {}
    current: dict[str, Optional[torch.Tensor]] = {"mask": None}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = _real(args[0].detach().cpu(), current["mask"]).double()
            x = x.reshape(-1, x.shape[-1])
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] = acc[0] + (x * x).sum(0)
            acc[1] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in linear.items()]
    try:
        with torch.no_grad():
            refs = []
            for s, m in zip(samples, masks):
                current["mask"] = m
                refs.append(_output(root, s, m))
    finally:
        for h in handles:
            h.remove()
    importance = {}
    for name, (total, count) in sums.items():
        if count and isinstance(total, torch.Tensor) and float(total.max()) > 0.0:
            importance[name] = (total / count).float().numpy()
    return (samples, masks, refs), importance


def _measure_layer(
    name: str,
    mod: nn.Module,
    made: dict[Format, nn.Module],
    with_float: bool,
    outputs: Outputs,
    swap: Callable[[Mapping[str, Any]], nn.Module],
    replay: Replay,
) -> LayerCosts:
    """One pass of the samples with ``name`` alone in its smallest format of ``made`` (the
    blocks that ran before it replayed)."""
    nbytes = {f: module_nbytes(q) for f, q in made.items()}
    probe = min(made, key=lambda f: nbytes[f])
    energy = {f: _Energy() for f in made}
    current: dict[str, Optional[torch.Tensor]] = {"mask": None}

    def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        # The float layer and every format on the activations the float model gives it.
        mask = current["mask"]
        ref = _first_tensor(mod(*args, **kwargs))
        if ref is None:
            return
        ref = _real(ref.detach().cpu(), mask)
        for f, q in made.items():
            got = _first_tensor(output if f == probe else q(*args, **kwargs))
            if got is None:  # pragma: no cover - dynaq's modules return what torch's do
                raise TypeError(f"{name}: the {f.name} module's output holds no tensor")
            energy[f].add(ref, _real(got.detach().cpu(), mask))

    samples, masks, refs = outputs
    whole = _Energy()
    root = swap({name: made[probe]})
    handle = made[probe].register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), replay.replaying(replay.before(name)):
            for i, (s, m, ref) in enumerate(zip(samples, masks, refs)):
                current["mask"] = m
                replay.begin_sample(i)
                whole.add(ref, _output(root, s, m))
    finally:
        handle.remove()
        swap({})
    gain = whole.noise / energy[probe].noise if energy[probe].noise > 0 else 0.0
    taken = list(made) + ([FLOAT] if with_float else [])
    row_nbytes = [nbytes.get(f, 0) for f in made]
    row_db = [sqnr_db(energy[f].signal, energy[f].noise) for f in made]
    row_noise = [whole.noise if f == probe else gain * energy[f].noise for f in made]
    if with_float:
        itemsize = next(p for p in mod.parameters()).element_size()
        row_nbytes.append(sum(p.numel() for _, p in _weights(mod)) * itemsize)
        row_db.append(math.inf)
        row_noise.append(0.0)
    return LayerCosts(
        name=name, kind=type(mod).__name__, shapes=_shapes(mod), formats=tuple(taken),
        nbytes=np.asarray(row_nbytes, dtype=np.int64), layer_sqnr_db=np.asarray(row_db),
        weight_sqnr_db=np.full(len(taken), np.nan), noise=np.asarray(row_noise, dtype=np.float64),
    )  # fmt: skip


def _shapes(mod: nn.Module) -> list[tuple[int, int]]:
    """A float module's weight matrices' ``(out, in)`` shapes."""
    if _bridge.is_conv1d(mod):
        return [(int(mod.nf), int(mod.nx))]
    return [(int(p.shape[0]), int(p.shape[1])) for _, p in _weights(mod)]


def _weights(mod: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in mod.named_parameters(recurse=False) if n.startswith("weight")]


def _holds(energy: _Energy, budget: dict[str, float]) -> bool:
    """Whether a measurement meets an accuracy budget (a size budget always holds)."""
    if "min_sqnr_db" in budget:
        return sqnr_db(energy.signal, energy.noise) >= budget["min_sqnr_db"]
    if "min_cosine" in budget:
        return energy.cosine >= budget["min_cosine"]
    return True


def _confirm(
    result: _plan.Plan,
    table: Sensitivity,
    front: Frontier,
    budget: dict[str, float],
    outputs: Outputs,
    swap: Callable[[Mapping[str, Any]], nn.Module],
) -> _plan.Plan:
    """Measures the mixed model on the samples. An accuracy budget it misses moves along the
    front: the noise allowed shrinks by the shortfall (:data:`RETRIES` times), then all the
    way to the front's last point (every layer float where float is a candidate)."""
    samples, masks, refs = outputs

    def measure(p: _plan.Plan) -> _Energy:
        root = swap(p.formats())
        e = _Energy()
        with torch.no_grad():
            for s, m, ref in zip(samples, masks, refs):
                e.add(ref, _output(root, s, m))
        return e

    energy = measure(result)
    allowed = allowed_noise(table, budget)
    if allowed is not None:
        point, last, tries = front.within_noise(allowed), len(front.nbytes) - 1, 0
        while not _holds(energy, budget) and point < last:
            if tries < RETRIES:
                allowed *= min(0.9, float(front.noise[point]) / energy.noise)
                point = max(front.within_noise(allowed), point + 1)
            else:
                point = last
            tries += 1
            result = _plan.build(table, front.choice(point), budget=budget, front=front)
            energy = measure(result)
    result.measured = {"sqnr_db": sqnr_db(energy.signal, energy.noise), "cosine": energy.cosine}
    return result
