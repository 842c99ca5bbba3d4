"""PyTorch integration: dynamic int8 quantization of ``torch.nn`` models on dynaq's kernels.

:func:`quantize_dynamic` swaps a model's ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU`` modules for
:class:`Linear`, :class:`LSTM` and :class:`GRU`, which hold int8 weights (per output channel by
default) and quantize their activations at run time (per row by default) with dynaq's exact int8
kernels. They take and return CPU torch tensors; float32 passes through numpy without a copy.
:func:`compare` measures what the quantization costs, layer by layer.

The swapped modules are for inference only: they run as under ``torch.no_grad()`` (their outputs
carry no autograd history, so gradients do not flow through them), and training-time behaviour
such as the dropout between LSTM layers is not applied. They call dynaq through numpy, so run
them eagerly: ``torch.jit`` / ``torch.compile`` / ``torch.export`` cannot trace into them.

Quantized models save and load with ``torch.save`` / ``torch.load(..., weights_only=False)`` and
through ``state_dict()`` / ``load_state_dict()`` into a model quantized the same way: each module
stores its serialized int8 state as a ``uint8`` tensor (``<name>.dynaq_packed``) next to a format
version (``<name>.dynaq_version``). Both routes reproduce the outputs bit for bit.

Threads: dynaq uses :func:`dynaq.set_num_threads` threads, torch ``torch.set_num_threads``;
set both. Two thread pools on the same cores fight: after each parallel torch op, torch's OpenMP
threads busy-wait for a while (GNU OpenMP's default) and would take the cores that dynaq's next
layer needs. So once ``dynaq.torch`` is imported, dynaq's multi-threaded GEMMs run on torch's
OpenMP threads themselves (:func:`share_torch_threads`; a BERT-base-sized encoder on 2 cores
ran 15-25% faster than with two pools). ``DYNAQ_TORCH_THREADS=0`` in the environment, or
``share_torch_threads(False)``, keeps dynaq on its own pool.

PyTorch is an optional dependency of dynaq (``pip install "dynaq[torch]"``); ``import dynaq``
never imports it, and ``import dynaq.torch`` without it raises ``ImportError``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dynaq.torch needs PyTorch, which is not installed (or failed to import: "
        f'{_e}). Install it with `pip install torch` or `pip install "dynaq[torch]"`; the rest '
        "of dynaq works without it."
    ) from _e

from . import _dynaq
from . import layers as _layers
from ._dynaq import check_granularity as _check_granularity

__all__ = [
    "GRU",
    "LSTM",
    "Comparison",
    "Linear",
    "compare",
    "quantize_dynamic",
    "share_torch_threads",
]

#: Version of the state-dict entries written by the modules here (``<name>.dynaq_version``).
STATE_VERSION = 1

_PACKED_KEY = "dynaq_packed"
_VERSION_KEY = "dynaq_version"
_CONVERTED_DTYPES = (torch.float64, torch.float16, torch.bfloat16)

Spec = Union[Iterable[Union[type, str]], Mapping[Union[type, str], Any]]


# ---------------------------------------------------------------------------------------------
# Threads.
# ---------------------------------------------------------------------------------------------

_OPENMP_NAMES = ("libgomp", "libiomp5", "libomp")


def _torch_openmp_library() -> Optional[str]:
    """Path of the OpenMP runtime torch's parallel ops run on, when it is loaded (Linux)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(maxsplit=5) for line in f]
        paths = {x[5].strip() for x in fields if len(x) == 6}
    except OSError:
        return None
    found = [p for p in paths if os.path.basename(p).startswith(_OPENMP_NAMES) and ".so" in p]
    torch_dir = os.path.realpath(os.path.dirname(torch.__file__))
    # torch's wheels bundle their own runtime; prefer it over any other one loaded.
    found.sort(key=lambda p: (not os.path.realpath(p).startswith(torch_dir), p))
    return found[0] if found else None


def share_torch_threads(enabled: bool = True) -> bool:
    """Runs dynaq's multi-threaded GEMMs on torch's OpenMP threads (``True``, the default once
    ``dynaq.torch`` is imported) or on dynaq's own thread pool (``False``).

    With one set of threads for both libraries, the OpenMP threads that torch leaves spinning
    after each op do dynaq's next GEMM instead of competing with dynaq's workers for the cores.
    Results are bit-identical either way. GEMMs of 16M multiply-adds or more and quantizations
    of 512K values or more run on the team; smaller ones on the calling thread alone (dynaq's
    own workers stay asleep: a third busy thread is what sharing avoids). When the team keeps a
    call waiting without helping (more threads than free cores), the next 64 calls run on the
    calling thread alone. Only this process shares (a forked child uses dynaq's pool), and the
    thread count stays :func:`dynaq.get_num_threads`.

    Returns whether the threads are now shared: ``False`` also when torch does not run on an
    OpenMP runtime that dynaq can find (for example off Linux).
    """
    if not enabled:
        _dynaq.share_openmp_team(None)
        return False
    path = _torch_openmp_library()
    if path is None:
        return False
    try:
        _dynaq.share_openmp_team(path)
    except OSError:
        return False
    return bool(_dynaq.sharing_openmp_team())


if os.environ.get("DYNAQ_TORCH_THREADS", "1").strip() != "0":
    share_torch_threads(True)


# ---------------------------------------------------------------------------------------------
# Tensor <-> numpy.
# ---------------------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str, owner: str) -> np.ndarray:
    """A CPU float tensor as float32 numpy, without a copy when it already is float32."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(
            f"{owner}: {name} is on device {str(x.device)!r}; dynaq runs on the CPU (move the "
            "input with .cpu(), or keep this module in float on the accelerator)"
        )
    if x.dtype != torch.float32:
        if x.dtype not in _CONVERTED_DTYPES:
            raise TypeError(
                f"{owner}: {name} must be a floating-point tensor (float32; float64, float16 and "
                f"bfloat16 are converted), got {x.dtype}"
            )
        x = x.float()
    if x.layout != torch.strided:
        raise TypeError(f"{owner}: {name} must be a dense tensor, got layout {x.layout}")
    return x.detach().numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t if dtype == torch.float32 else t.to(dtype)


def _state_tensor(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


# ---------------------------------------------------------------------------------------------
# Modules.
# ---------------------------------------------------------------------------------------------


class _DynaqModule(nn.Module):
    """State-dict plumbing shared by the dynaq modules: one serialized blob and a version."""

    _version = STATE_VERSION
    _layer: Any

    def _check_loaded(self, layer: Any) -> Optional[str]:  # pragma: no cover - overridden
        """None when ``layer`` fits this module, else the reason it does not."""
        raise NotImplementedError

    def _adopt(self, layer: Any) -> None:
        self._layer = layer

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + _PACKED_KEY] = _state_tensor(self._layer.to_bytes())
        destination[prefix + _VERSION_KEY] = torch.tensor(STATE_VERSION, dtype=torch.int64)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key, vkey = prefix + _PACKED_KEY, prefix + _VERSION_KEY
        if strict:
            for k in state_dict:
                if k.startswith(prefix) and k not in (key, vkey):
                    unexpected_keys.append(k)
        if key not in state_dict or vkey not in state_dict:
            if strict:
                missing_keys.extend(k for k in (key, vkey) if k not in state_dict)
            return
        where = f"{self._get_name()} at {prefix[:-1] or '<root>'!r}"
        version, blob = state_dict[vkey], state_dict[key]
        try:
            v = int(version)
        except (TypeError, ValueError, RuntimeError):
            error_msgs.append(f"{where}: {vkey} must be an integer, got {version!r}")
            return
        if v != STATE_VERSION:
            error_msgs.append(
                f"{where}: {vkey} = {v} is not a version this dynaq reads ({STATE_VERSION})"
            )
            return
        if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1):
            desc = (
                f"{blob.dtype} tensor of shape {tuple(blob.shape)}"
                if isinstance(blob, torch.Tensor)
                else type(blob).__name__
            )
            error_msgs.append(f"{where}: {key} must be a 1-D uint8 tensor, got a {desc}")
            return
        try:
            layer = type(self._layer).from_bytes(blob.detach().cpu().contiguous().numpy().tobytes())
        except ValueError as e:
            error_msgs.append(f"{where}: {key} cannot be read: {e}")
            return
        problem = self._check_loaded(layer)
        if problem is not None:
            error_msgs.append(f"size mismatch for {key}: {problem}")
            return
        self._adopt(layer)

    def _get_name(self) -> str:
        return "Dynaq" + type(self).__name__


class Linear(_DynaqModule):
    """``nn.Linear`` on int8 weights with dynamically quantized activations (dynaq).

    Parameters
    ----------
    in_features, out_features : int
        The layer's shape; the weight starts at zero (load a state dict into it, or build the
        layer with :meth:`from_float` / :meth:`from_layer`).
    bias : bool
        Whether the layer adds a bias.
    per_channel : bool
        One weight scale per output channel (default) or one per tensor.
    granularity : {"row", "tensor"}
        Activation scales per row (default: a row's result never depends on the rest of the
        batch) or one per call.

    Notes
    -----
    Called on a CPU tensor of shape (..., in_features), it returns (..., out_features) in the
    input's dtype. float32 passes through numpy without a copy; float64, float16 and bfloat16
    are computed in float32 and converted back; other dtypes raise ``TypeError``, tensors on
    other devices ``ValueError``. Inference only: no gradient flows through the layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        per_channel: bool = True,
        granularity: str = "row",
    ) -> None:
        super().__init__()
        _check_granularity(granularity)
        w = np.zeros((int(out_features), int(in_features)), dtype=np.float32)
        b = np.zeros(int(out_features), dtype=np.float32) if bias else None
        self._layer = _layers.Linear.from_float(
            w, b, per_channel=per_channel, granularity=granularity
        )

    @classmethod
    def from_layer(cls, layer: _layers.Linear) -> Linear:
        """Wrap a numpy :class:`dynaq.layers.Linear` (shared, not copied)."""
        if not isinstance(layer, _layers.Linear):
            raise TypeError(f"layer must be a dynaq.layers.Linear, got {type(layer).__name__}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._layer = layer
        return mod

    @classmethod
    def from_float(
        cls, mod: nn.Linear, *, per_channel: bool = True, granularity: str = "row"
    ) -> Linear:
        """Quantize the weight of a float ``nn.Linear`` (any float dtype, any device).

        Parameters
        ----------
        mod : torch.nn.Linear
        per_channel : bool
            Per-output-channel weight scales (default) or one scale for the tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.

        Returns
        -------
        Linear
        """
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"from_float needs a torch.nn.Linear, got {type(mod).__name__}")
        w = _param_numpy(mod.weight, "weight")
        b = None if mod.bias is None else _param_numpy(mod.bias, "bias")
        layer = _layers.Linear.from_float(w, b, per_channel=per_channel, granularity=granularity)
        out = cls.from_layer(layer)
        out.train(mod.training)
        return out

    @property
    def layer(self) -> _layers.Linear:
        """The underlying numpy :class:`dynaq.layers.Linear`."""
        return self._layer

    @property
    def in_features(self) -> int:
        """Size of each input row."""
        return self._layer.in_features

    @property
    def out_features(self) -> int:
        """Size of each output row."""
        return self._layer.out_features

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return bool(self._layer.weight.per_channel)

    @property
    def granularity(self) -> str:
        """Activation scales per ``"row"`` or per ``"tensor"`` (one per call)."""
        return str(self._layer.granularity)

    def weight(self) -> torch.Tensor:
        """The dequantized weight (out_features, in_features), float32 (a new tensor)."""
        return torch.from_numpy(np.ascontiguousarray(self._layer.weight.dequantize()))

    def weight_int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight values (out_features, in_features) and their float32 scales."""
        values, scales = self._layer.weight.unpack()
        return (
            torch.from_numpy(np.array(values, dtype=np.int8)),
            torch.from_numpy(np.array(scales, dtype=np.float32)),
        )

    def bias(self) -> Optional[torch.Tensor]:
        """The float32 bias (out_features,) as a new tensor, or None."""
        b = self._layer.bias
        return None if b is None else torch.from_numpy(np.array(b, dtype=np.float32))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = _to_numpy(input, "input", self._get_name())
        return _from_numpy(self._layer(x), input.dtype)

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (layer.out_features, layer.in_features, layer.bias is not None)
        want = (self.out_features, self.in_features, self._layer.bias is not None)
        if have != want:
            return (
                f"the checkpoint holds a dynaq Linear with out_features={have[0]}, "
                f"in_features={have[1]}, bias={have[2]}; this module has out_features={want[0]}, "
                f"in_features={want[1]}, bias={want[2]}"
            )
        return None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self._layer.bias is not None}, dtype=int8, per_channel={self.per_channel}, "
            f"granularity={self.granularity!r}"
        )


class _Recurrent(_DynaqModule):
    _float_type: type[nn.Module] = nn.LSTM
    _layer_type: Any = _layers.LSTM

    def __init__(self, layer: Any) -> None:
        super().__init__()
        if not isinstance(layer, self._layer_type):
            raise TypeError(
                f"layer must be a dynaq.layers.{self._layer_type.__name__}, got "
                f"{type(layer).__name__} (use {type(self).__name__}.from_float for a torch module)"
            )
        self._layer = layer

    @classmethod
    def from_float(
        cls, mod: nn.Module, *, per_channel: bool = True, granularity: str = "row"
    ) -> Any:
        """Quantize a float ``nn.LSTM`` / ``nn.GRU`` (its configuration and weights).

        Parameters
        ----------
        mod : torch.nn.LSTM or torch.nn.GRU
            As the class wraps; ``proj_size`` is not supported.
        per_channel : bool
            Per-output-channel weight scales (default) or one scale per weight tensor.
        granularity : {"row", "tensor"}
            Activation scales per row (default) or per call.
        """
        if not isinstance(mod, cls._float_type):
            raise TypeError(
                f"from_float needs a torch.nn.{cls._float_type.__name__}, got {type(mod).__name__}"
            )
        if getattr(mod, "proj_size", 0):
            raise ValueError(f"{cls._float_type.__name__} with proj_size is not supported")
        params = {k: _param_numpy(v, k) for k, v in mod.named_parameters()}
        layer = cls._layer_type(
            params,
            num_layers=mod.num_layers,
            bidirectional=mod.bidirectional,
            batch_first=mod.batch_first,
            input_size=mod.input_size,
            hidden_size=mod.hidden_size,
            per_channel=per_channel,
            granularity=granularity,
        )
        out = cls(layer)
        out.train(mod.training)
        return out

    @property
    def layer(self) -> Any:
        """The underlying numpy :mod:`dynaq.layers` recurrent layer."""
        return self._layer

    @property
    def input_size(self) -> int:
        """Features of each input step."""
        return int(self._layer.input_size)

    @property
    def hidden_size(self) -> int:
        """Features of the hidden state."""
        return int(self._layer.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of stacked layers."""
        return int(self._layer.num_layers)

    @property
    def bidirectional(self) -> bool:
        """Whether each layer runs both directions."""
        return bool(self._layer.bidirectional)

    @property
    def batch_first(self) -> bool:
        """Whether input and output are (batch, seq, features)."""
        return bool(self._layer.batch_first)

    @property
    def bias(self) -> bool:
        """Whether the layer has biases."""
        return self._layer.cells[0][0].b_ih is not None

    @property
    def proj_size(self) -> int:
        """Always 0 (projections are not supported)."""
        return 0

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return bool(self._layer.cells[0][0].w_ih.per_channel)

    @property
    def granularity(self) -> str:
        """Activation scales per ``"row"`` or per ``"tensor"`` (one per call)."""
        return str(self._layer.granularity)

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` / ``nn.GRU`` (the weights are packed)."""

    def _input(self, input: Any) -> np.ndarray:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(
                f"{self._get_name()} does not take a PackedSequence; pass a padded tensor "
                "(torch.nn.utils.rnn.pad_packed_sequence) or keep this module in float "
                "(exclude it in quantize_dynamic)"
            )
        return _to_numpy(input, "input", self._get_name())

    def _config(self) -> tuple[Any, ...]:
        return (
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bidirectional,
            self.bias,
        )

    def _check_loaded(self, layer: Any) -> Optional[str]:
        have = (
            int(layer.input_size),
            int(layer.hidden_size),
            int(layer.num_layers),
            bool(layer.bidirectional),
            layer.cells[0][0].b_ih is not None,
        )
        want = self._config()
        if have != want:
            names = ("input_size", "hidden_size", "num_layers", "bidirectional", "bias")
            fmt = ", ".join
            return (
                f"the checkpoint holds a dynaq {layer.kind} with "
                f"{fmt(f'{n}={v}' for n, v in zip(names, have))}; this module has "
                f"{fmt(f'{n}={v}' for n, v in zip(names, want))}"
            )
        return None

    def _adopt(self, layer: Any) -> None:
        # batch_first belongs to the calling code, not to the weights.
        layer.batch_first = self.batch_first
        self._layer = layer

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", dtype=int8, per_channel={self.per_channel}, granularity={self.granularity!r}"


class LSTM(_Recurrent):
    """``nn.LSTM`` with int8 input and hidden projections (wraps :class:`dynaq.layers.LSTM`).

    Parameters
    ----------
    layer : dynaq.layers.LSTM
        The numpy layer to wrap; use :meth:`from_float` to quantize an ``nn.LSTM``.

    Notes
    -----
    ``forward(input, hx=None)`` follows ``nn.LSTM``: ``input`` of shape (seq, batch,
    input_size), (batch, seq, input_size) with ``batch_first``, or (seq, input_size) unbatched;
    ``hx = (h_0, c_0)`` of shape (num_layers * directions, batch, hidden_size); returns
    ``(output, (h_n, c_n))`` in the input's dtype. ``PackedSequence`` input raises
    ``TypeError``. Inference only: no gradient flows, and dropout between layers is not applied.
    """

    _float_type = nn.LSTM
    _layer_type = _layers.LSTM

    def forward(
        self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        name = self._get_name()
        x = self._input(input)
        state = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            state = (_to_numpy(hx[0], "h_0", name), _to_numpy(hx[1], "c_0", name))
        out, (h, c) = self._layer(x, state)
        dt = input.dtype
        return _from_numpy(out, dt), (_from_numpy(h, dt), _from_numpy(c, dt))


class GRU(_Recurrent):
    """``nn.GRU`` with int8 input and hidden projections (wraps :class:`dynaq.layers.GRU`).

    Parameters
    ----------
    layer : dynaq.layers.GRU
        The numpy layer to wrap; use :meth:`from_float` to quantize an ``nn.GRU``.

    Notes
    -----
    ``forward(input, hx=None)`` follows ``nn.GRU`` and returns ``(output, h_n)``; otherwise as
    :class:`LSTM`.
    """

    _float_type = nn.GRU
    _layer_type = _layers.GRU

    def forward(
        self, input: torch.Tensor, hx: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._input(input)
        state = None if hx is None else _to_numpy(hx, "h_0", self._get_name())
        out, h = self._layer(x, state)
        return _from_numpy(out, input.dtype), _from_numpy(h, input.dtype)


def _param_numpy(p: torch.Tensor, name: str) -> np.ndarray:
    if not p.dtype.is_floating_point:
        raise TypeError(f"parameter {name} must be floating point, got {p.dtype}")
    if p.device.type == "meta":
        raise ValueError(f"parameter {name} is on the meta device (it has no values to quantize)")
    return p.detach().to("cpu", torch.float32).contiguous().numpy()


# ---------------------------------------------------------------------------------------------
# quantize_dynamic.
# ---------------------------------------------------------------------------------------------

_SWAPS: dict[type, Any] = {nn.Linear: Linear, nn.LSTM: LSTM, nn.GRU: GRU}
_SUPPORTED = "torch.nn.Linear, torch.nn.LSTM and torch.nn.GRU"
_OPTION_KEYS = ("per_channel", "granularity")


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
        _check_granularity(opts["granularity"])
        opts["per_channel"] = bool(opts["per_channel"])
        return opts
    return dict(default)  # True, a torch QConfig, ...: quantize with the defaults.


def _parse_spec(
    spec: Optional[Spec], default: dict[str, Any]
) -> tuple[dict[type, Optional[dict[str, Any]]], dict[str, Optional[dict[str, Any]]]]:
    if spec is None:
        return {t: dict(default) for t in _SWAPS}, {}
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
            if key not in _SWAPS:
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
    *,
    inplace: bool = False,
    per_channel: bool = True,
    granularity: str = "row",
    exclude: Iterable[str] = (),
) -> nn.Module:
    """Swap a model's ``nn.Linear`` / ``nn.LSTM`` / ``nn.GRU`` modules for dynaq int8 ones.

    Like ``torch.ao.quantization.quantize_dynamic``, with dynaq's kernels: int8 weights with
    per-output-channel scales and per-row activation scales by default, exact int32
    accumulation, and modules that save and load with ``torch.save`` and ``state_dict``.

    Parameters
    ----------
    model : torch.nn.Module
        The float model; it is deep-copied first unless ``inplace``.
    qconfig_spec : set, list or dict, optional
        What to quantize. None (default): every ``nn.Linear``, ``nn.LSTM`` and ``nn.GRU``.
        Otherwise module types (exactly those three; subclasses such as MultiheadAttention's
        ``out_proj`` are never swapped) and/or module names as ``named_modules()`` gives them;
        a name selects that module and, for a container, every supported module inside it. A
        dict maps each entry to None or False (do not quantize), a dict of options
        (``{"per_channel": bool, "granularity": "row" | "tensor"}``), or anything else (a
        torch ``QConfig``, True) for the defaults. A name's entry applies to
        that module and everything inside it and takes precedence over type entries (the
        closest named ancestor wins). dynaq always quantizes to int8, whatever a ``QConfig``
        says.
    inplace : bool
        Modify ``model`` itself instead of a copy (a root ``nn.Linear``/``LSTM``/``GRU`` is
        still returned as a new module).
    per_channel : bool
        Default weight scales: per output channel (True) or per tensor.
    granularity : {"row", "tensor"}
        Default activation scales: per row (a row's result never depends on the batch) or one
        per call.
    exclude : iterable of str
        Module names to keep in float, with everything inside them. An entry matches a name
        exactly or as a dotted prefix (``"encoder.layer.0"`` covers
        ``"encoder.layer.0.output.dense"``, not ``"encoder.layer.01"``), or as an
        ``fnmatch`` pattern when it contains ``*``, ``?`` or ``[`` (``"*.pooler.*"``). An entry
        that matches no module raises ``ValueError`` (a likely typo). Exclusion beats
        ``qconfig_spec``.

    Returns
    -------
    torch.nn.Module
        The quantized model (``model`` itself when ``inplace``).

    Raises
    ------
    TypeError
        ``qconfig_spec`` names a type other than the three, or a module that is not one of them
        and contains none; malformed arguments.
    ValueError
        A name in ``qconfig_spec`` or ``exclude`` is not in the model; a module cannot be
        quantized (``proj_size``, NaN or infinite weights), naming the module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_granularity(granularity)
    default = {"per_channel": bool(per_channel), "granularity": granularity}
    types, names = _parse_spec(qconfig_spec, default)
    modules = dict(model.named_modules())
    is_excluded = _excluder(exclude, list(modules))
    for name in names:
        if name not in modules:
            raise ValueError(f"qconfig_spec names module {name!r}, which is not in the model")
        mod = modules[name]
        if names[name] is not None and not any(type(m) in _SWAPS for m in mod.modules()):
            raise TypeError(
                f"qconfig_spec names module {name!r} ({type(mod).__name__}), which is not one "
                f"of {_SUPPORTED} and contains none"
            )
    if not inplace:
        model = copy.deepcopy(model)
    memo: dict[int, nn.Module] = {}
    unset: Any = object()

    def convert(mod: nn.Module, name: str, named: Any) -> nn.Module:
        # ``named``: the entry of the closest named ancestor (or this module), else ``unset``.
        named = names.get(name, named)
        if is_excluded(name):
            return mod
        if type(mod) in _SWAPS:
            opts = types.get(type(mod)) if named is unset else named
            if opts is None:
                return mod
            if id(mod) not in memo:
                memo[id(mod)] = _swap(mod, name, opts)
            return memo[id(mod)]
        # Not named_children(): it skips a module's second appearance, which must be swapped too.
        for child_name, child in list(mod._modules.items()):
            if child is None:
                continue
            new = convert(child, f"{name}.{child_name}" if name else child_name, named)
            if new is not child:
                setattr(mod, child_name, new)
        return mod

    return convert(model, "", unset)


def _swap(mod: nn.Module, name: str, opts: dict[str, Any]) -> nn.Module:
    try:
        new = _SWAPS[type(mod)].from_float(mod, **opts)
    except (TypeError, ValueError) as e:
        raise type(e)(f"cannot quantize module {name or '<root>'!r} ({mod!r}): {e}") from e
    # As torch's swap_module does: keep the user's hooks.
    for hook in mod._forward_pre_hooks.values():
        new.register_forward_pre_hook(hook)
    for hook in mod._forward_hooks.values():
        new.register_forward_hook(hook)
    return new


# ---------------------------------------------------------------------------------------------
# compare.
# ---------------------------------------------------------------------------------------------


def _first_tensor(out: Any) -> Optional[torch.Tensor]:
    """The tensor that stands for a module's output: itself, ``last_hidden_state`` /
    ``logits`` of a mapping (Hugging Face ``ModelOutput``), or the first tensor inside."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("last_hidden_state", "logits"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _error_stats(name: str, kind: str, ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    if ref.shape != got.shape:
        raise ValueError(
            f"{name}: the float output has shape {tuple(ref.shape)} and the quantized one "
            f"{tuple(got.shape)}"
        )
    a = ref.detach().to("cpu", torch.float64).reshape(-1)
    b = got.detach().to("cpu", torch.float64).reshape(-1)
    err = a - b
    signal = float(torch.dot(a, a))
    noise = float(torch.dot(err, err))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    na, nb = math.sqrt(signal), float(torch.linalg.vector_norm(b))
    if na == 0.0 or nb == 0.0:
        cosine = 1.0 if na == nb else 0.0
    else:
        cosine = float(torch.dot(a, b)) / (na * nb)
    return {
        "name": name,
        "kind": kind,
        "shape": tuple(ref.shape),
        "sqnr_db": sqnr,
        "cosine": cosine,
        "max_abs_error": float(err.abs().max()) if err.numel() else 0.0,
        "rel_error": math.sqrt(noise / signal) if signal else (0.0 if noise == 0 else math.inf),
    }


class Comparison:
    """What :func:`compare` found: per-layer and model-output error of a quantized model.

    Attributes
    ----------
    rows : list of dict
        One per swapped module, in the order they first ran, with keys ``name``, ``kind`` (the
        quantized module's type), ``shape`` (its output's), ``sqnr_db`` (``10 log10(|ref|^2 /
        |ref - q|^2)``, inf when exact), ``cosine``, ``max_abs_error`` and ``rel_error``
        (``|ref - q| / |ref|``), and ``calls`` (how often the module ran). Recurrent modules are
        measured on their ``output``.
    output : dict
        The same keys for the model's output (``name`` is ``"<output>"``).
    """

    def __init__(self, rows: list[dict[str, Any]], output: dict[str, Any]) -> None:
        self.rows = rows
        self.output = output

    def table(self) -> str:
        """The rows and the model output as a text table."""
        head = ("layer", "kind", "shape", "SQNR dB", "cosine", "max abs err")
        body = [self._cells(r) for r in self.rows]
        out = self._cells(self.output)
        widths = [max(len(r[i]) for r in [head, out, *body]) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            parts = [
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ]
            return "  ".join(parts).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(head), rule, *(line(r) for r in body), rule, line(out)])

    @staticmethod
    def _cells(row: dict[str, Any]) -> tuple[str, ...]:
        return (
            str(row["name"]),
            str(row["kind"]),
            "x".join(str(d) for d in row["shape"]),
            f"{row['sqnr_db']:.2f}",
            f"{row['cosine']:.6f}",
            f"{row['max_abs_error']:.3g}",
        )

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"Comparison({len(self.rows)} layers, output SQNR {self.output['sqnr_db']:.2f} dB, "
            f"cosine {self.output['cosine']:.6f})"
        )


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def compare(model_fp32: nn.Module, model_q: nn.Module, inputs: Any) -> Comparison:
    """Run a float model and its quantized version on the same inputs and measure the error.

    The layers compared are the modules of ``model_q`` whose type differs from the module of
    the same name in ``model_fp32`` (the swapped ones, from this module's
    :func:`quantize_dynamic` or from ``torch.ao.quantization.quantize_dynamic``); forward
    hooks capture their outputs in both models for one call of each.

    Parameters
    ----------
    model_fp32, model_q : torch.nn.Module
        Put both in eval mode first (dropout would make the comparison random).
    inputs : torch.Tensor, tuple or dict
        One tensor (``model(inputs)``), a tuple or list of positional arguments
        (``model(*inputs)``) or a dict of keyword arguments (``model(**inputs)``).

    Returns
    -------
    Comparison
        ``.rows`` (per layer), ``.output`` (the model output), ``.table()`` / ``str()``. Model
        outputs that are tuples or Hugging Face ``ModelOutput`` objects are measured on
        ``last_hidden_state`` (or ``logits``) when present, else on their first tensor.
    """
    for arg, m in (("model_fp32", model_fp32), ("model_q", model_q)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(m).__name__}")
    fp_mods = dict(model_fp32.named_modules())
    swapped = [
        (n, m)
        for n, m in model_q.named_modules()
        if n and n in fp_mods and type(m) is not type(fp_mods[n])
    ]
    names = {n for n, _ in swapped}
    swapped = [
        (n, m) for n, m in swapped if not any(n.startswith(p + ".") for p in names if p != n)
    ]
    captured: dict[str, dict[str, list[torch.Tensor]]] = {"fp": {}, "q": {}}
    order: list[str] = []

    def hook_for(side: str, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is None:
                return
            if side == "q" and name not in captured["q"]:
                order.append(name)
            captured[side].setdefault(name, []).append(t.detach().clone())

        return hook

    handles = []
    try:
        for name, qmod in swapped:
            handles.append(fp_mods[name].register_forward_hook(hook_for("fp", name)))
            handles.append(qmod.register_forward_hook(hook_for("q", name)))
        with torch.no_grad():
            ref = _first_tensor(_call(model_fp32, inputs))
            got = _first_tensor(_call(model_q, inputs))
    finally:
        for h in handles:
            h.remove()
    if ref is None or got is None:
        raise TypeError("the models' outputs hold no tensor to compare")
    kinds = {n: m._get_name() for n, m in swapped}
    rows = []
    for name in order:
        fp_list, q_list = captured["fp"].get(name, []), captured["q"][name]
        if len(fp_list) != len(q_list):
            raise ValueError(
                f"{name}: ran {len(fp_list)} times in model_fp32 and {len(q_list)} times in model_q"
            )
        if len(q_list) == 1:
            a, b = fp_list[0], q_list[0]
        else:
            a = torch.cat([t.reshape(-1) for t in fp_list])
            b = torch.cat([t.reshape(-1) for t in q_list])
        row = _error_stats(name, kinds[name], a, b)
        row["shape"] = tuple(q_list[0].shape)
        row["calls"] = len(q_list)
        rows.append(row)
    output = _error_stats("<output>", type(model_q).__name__, ref, got)
    output["calls"] = 1
    return Comparison(rows, output)
