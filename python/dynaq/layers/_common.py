"""What the layers share: weight and bias conversion, the sigmoid, and their serialized form
(dynaq's one on-disk form: a sealed safetensors blob of plain named tensors, with the layer's
configuration in its metadata; the DYNAQLY bytes of format version 1 still load)."""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from .. import _dynaq, _legacy
from .._dynaq import PackedWeight, as_float32, as_packed_weight

F32 = np.float32
#: The metadata key of a layer's configuration (a JSON object) in its bytes.
CONFIG_KEY = "dynaq.config"

Weights = dict[str, PackedWeight]
Tensors = dict[str, np.ndarray]


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow for large |x| (1 / (1 + exp(-x)) overflows exp below -88).
    return F32(0.5) * (F32(1.0) + np.tanh(F32(0.5) * x))


def weight_options(
    bits: int = 8, group_size: Any = ..., symmetric: Any = None, method: Any = None
) -> dict[str, Any]:
    """A layer's weight options as :func:`dynaq.pack_weight` takes them (``group_size`` only
    when given: absent means groups of 32 for 4 bits, ``None`` one scale per channel)."""
    opts: dict[str, Any] = {"bits": bits, "symmetric": symmetric, "method": method}
    if group_size is not ...:
        opts["group_size"] = group_size
    return opts


def pack(
    weight: Any, name: str, per_channel: bool, options: Optional[dict[str, Any]] = None
) -> PackedWeight:
    """A layer's weight parameter ``name``: a PackedWeight as it is, a float one quantized
    (``options`` from :func:`weight_options`; checked either way)."""
    return as_packed_weight(weight, name, per_channel, **(options or {}))


def bias_array(bias: Any, name: str, n: int) -> Optional[np.ndarray]:
    """A layer's bias parameter ``name``, ``(n,)`` float32 and finite, or None."""
    return None if bias is None else finite(as_float32(bias, name, (n,)), name)


def finite(a: np.ndarray, name: str) -> np.ndarray:
    """``a``, or ``ValueError`` naming it when it holds NaN or infinity: a layer's parameters,
    inputs and states must be finite (docs/CONTRACT.md)."""
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name} contains NaN or infinity; a layer's parameters, inputs and "
            "states must be finite"
        )
    return a


def int_arg(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) of at least ``minimum``, else
    ``TypeError``/``ValueError`` naming the argument ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def bool_arg(value: Any, name: str) -> bool:
    """``value`` as a bool when it is one (numpy's included), else ``TypeError`` naming it:
    ``bool("no")`` would silently be True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


class Serialized:
    """``to_bytes``/``from_bytes``/pickling for a layer that says what it is made of.

    A subclass names its blob kind (``_kind``) and gives its weights, other tensors and
    configuration (``_tensors``), and builds itself from them (``_from_tensors``); the same three
    make its torch module's state dict.
    """

    _kind = ""

    def _tensors(self) -> tuple[Weights, Tensors, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _from_tensors(
        cls, weights: Weights, tensors: Tensors, config: dict[str, Any]
    ) -> Any:  # pragma: no cover
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The serialized form (weights stay int8): a sealed safetensors blob of plain tensors
        with PyTorch's names, format version ``dynaq._dynaq.FORMAT_VERSION``."""
        weights, tensors, config = self._tensors()
        extra = {CONFIG_KEY: json.dumps(config, sort_keys=True)}
        return bytes(_dynaq.write_blob(self._kind, weights, tensors, extra))

    @classmethod
    def from_bytes(cls, data: Any) -> Any:
        """Read bytes written by :meth:`to_bytes` (or by the release before format version 2).

        Raises ``TypeError`` for anything but bytes-like data and ``ValueError``
        (``"<kind> bytes: ..."``) for bytes that are truncated, altered, of another kind or of
        an unknown version."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if data.startswith(_legacy.LAYER_MAGIC):
            weights, tensors, config = _legacy.layer_tensors(data, cls._kind)
        else:
            weights, tensors, meta = _dynaq.read_blob(data, cls._kind)
            try:
                config = json.loads(meta.get(CONFIG_KEY, "{}"))
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                config = None
            if not isinstance(config, dict):
                raise ValueError(f"{cls._kind} bytes: bad {CONFIG_KEY} metadata (a JSON object)")
        try:
            return cls._from_tensors(weights, tensors, config)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cls._kind} bytes: {e}") from None

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (type(self).from_bytes, (self.to_bytes(),))


def expect_names(
    what: str, given: Any, allowed: set[str], required: set[str] = frozenset()
) -> None:
    """``ValueError`` unless the names in ``given`` are among ``allowed`` and include
    ``required``."""
    names = set(given)
    unknown, missing = sorted(names - allowed), sorted(set(required) - names)
    if unknown:
        raise ValueError(f"{what} not understood: {unknown}")
    if missing:
        raise ValueError(f"{what} missing: {missing}")


def expect_config(config: dict[str, Any], keys: set[str]) -> None:
    """``ValueError`` for a configuration entry the layer does not have."""
    unknown = sorted(set(config) - keys)
    if unknown:
        raise ValueError(f"configuration not understood: {unknown}")


def config_value(config: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``config[key]`` of type ``kind`` (``default`` when absent and a default is given)."""
    if key not in config:
        if default is None:
            raise ValueError(f"configuration lacks {key!r}")
        return default
    v = config[key]
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise ValueError(f"configuration {key!r} must be a {kind.__name__}, got {v!r}")
    return v
