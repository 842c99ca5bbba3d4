"""PyTorch integration: dynamic int8 quantization of ``torch.nn`` models on dynaq's kernels.

:func:`quantize_dynamic` swaps a model's ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU`` modules for
:class:`Linear`, :class:`LSTM` and :class:`GRU`, which hold int8 weights (per output channel by
default) and quantize their activations at run time (per row by default) with dynaq's exact int8
kernels. They take and return CPU torch tensors; float32 passes through numpy without a copy.
:func:`compare` measures what the quantization costs, layer by layer. With a budget
(``max_bits_per_weight=``, ``min_sqnr_db=``), :func:`quantize_dynamic` picks int4, int8 or
float per layer (:func:`plan` gives the choice; :func:`sensitivity` the table it came from).

The modules call dynaq's operators, registered with ``torch.library`` (:mod:`dynaq.torch.ops`:
``torch.ops.dynaq.linear``, ``.lstm``, ``.gru``), so ``torch.compile`` (``fullgraph=True``
included, any backend, under ``no_grad`` and ``inference_mode`` too) compiles them without a
graph break and computes the same bits as eager; ``torch.export`` gives a program whose graph
names them; ``torch.jit.trace`` records them; the TorchScript ONNX exporter writes them as nodes
of the custom domain ``dynaq``. Called eagerly on a plain float32 tensor, a module skips the
dispatcher and calls dynaq directly (the same bits, less overhead). The modules are for
inference only: a backward through them raises (rather than leaving the layers before them
silently without a gradient), and training-time behaviour such as the dropout between LSTM
layers is not applied.

Each weight is held once, in the layout the kernels read (buffers ``W_panels`` and
``W_scale``). A model can be quantized on the ``meta`` device (``quantize_dynamic`` of a model
built under ``torch.device("meta")``) into a skeleton that ``load_state_dict`` fills. Casting a
model (``model.half()``) leaves the scales and biases float32.

Quantized models save and load with ``torch.save`` / ``torch.load`` (``weights_only=True`` with
``torch.serialization.safe_globals([..., *dynaq.torch.safe_globals()])``: the modules pickle as
plain tensors) and through ``state_dict()`` / ``load_state_dict()`` into a model quantized the
same way (or a meta skeleton). A module's
state dict holds what it is made of as ordinary tensors, under PyTorch's names: ``weight``
(int8), ``weight_scale`` (float32, one per output channel or a scalar) and ``bias`` for
:class:`Linear`; ``weight_ih_l0``, ``weight_ih_l0_scale``, ..., ``bias_hh_l0`` for the recurrent
modules (dynaq's one on-disk form, format version ``dynaq._dynaq.FORMAT_VERSION``), so
``torch.load(weights_only=True)``, ``safetensors.torch`` and any inspector read it. State dicts
of the release before (one ``uint8`` tensor ``<name>.dynaq_packed`` per module) still load. Both
routes reproduce the outputs bit for bit.

Threads: dynaq uses :func:`dynaq.set_num_threads` threads, torch ``torch.set_num_threads``;
set both. Two thread pools on the same cores can fight: after each parallel torch op, torch's
OpenMP threads busy-wait for a while (GNU OpenMP's default) and take the cores that dynaq's next
layer needs. :func:`share_torch_threads` runs dynaq's multi-threaded GEMMs on torch's OpenMP
threads themselves (a BERT-base-sized encoder on 2 cores ran 15-25% faster than with two pools);
it is off unless called.

The package: ``ops.py`` (the registered operators), ``_prepared.py`` (the tensors a weight
travels as, and the cache of native layers behind them), ``_onnx.py`` (the operators' ONNX
symbolics), ``modules.py`` (the module base and :class:`Linear`), ``recurrent.py``
(:class:`LSTM`, :class:`GRU`), ``_state.py`` (the modules' state dicts), ``quantize.py``
(:func:`quantize_dynamic`, :func:`sensitivity`), ``_slots.py`` (which modules it swaps, and
swapping them), ``budget.py`` (mixed precision: measuring a
model with sample inputs, calibration, confirming a plan; :func:`plan`), ``_replay.py``
(replaying the float model's blocks during the measurement), ``compare.py``
(:func:`compare`), ``threads.py`` (:func:`share_torch_threads`), ``_bridge.py`` (tensors to
numpy and back).

PyTorch is an optional dependency of dynaq (``pip install "dynaq[torch]"``); ``import dynaq``
never imports it, and ``import dynaq.torch`` without it raises ``ImportError``.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dynaq.torch needs PyTorch, which is not installed (or failed to import: "
        f'{_e}). Install it with `pip install torch` or `pip install "dynaq[torch]"`; the rest '
        "of dynaq works without it."
    ) from _e

from .budget import plan
from .compare import Comparison, compare
from .modules import GRU, LSTM, Linear, safe_globals
from .quantize import quantize_dynamic, sensitivity
from .threads import share_torch_threads

__all__ = [
    "GRU",
    "LSTM",
    "Comparison",
    "Linear",
    "compare",
    "plan",
    "quantize_dynamic",
    "safe_globals",
    "sensitivity",
    "share_torch_threads",
]
