"""Fuzz target: the layers' deserializers (``from_bytes`` of ``dynaq.layers.Linear``, ``LSTM``,
``GRU``, ``LSTMCell``, ``GRUCell``) and, when torch is installed, ``load_state_dict`` of the
dynaq torch modules.

The first byte picks the layer class (``byte // 4 % 5``) and a mode (``byte % 4``):

0. the rest is the layer's bytes, as stored;
1. the same with the checksum recomputed (the ``dynaq.crc32`` of a version-2 blob, the CRC of a
   version-1 ``DYNAQLY`` container), so that mutations reach the field checks;
2. structure-aware: the rest chooses a small valid layer, then up to eight edits of what its
   bytes hold (configuration entries, metadata keys, a tensor's dtype, shape, a value such as
   NaN or -128, a tensor removed, added or renamed); the blob is rebuilt and resealed, so every
   edit reaches the check for that field;
3. the same edits made to a torch module's state dict (tensors and the per-module metadata),
   loaded with ``load_state_dict`` (without torch: mode 2).

Documented outcomes: a layer, or ``ValueError`` (``"<kind> bytes: ..."``) or ``MemoryError``
from ``from_bytes``; a loaded module, or ``RuntimeError`` from ``load_state_dict``. Anything else
escaping is a finding, and so is a layer that loads but then does not work: one that changes
through ``to_bytes()``/``from_bytes()``, fails on a finite input of its size (other than
the documented float32 overflow of a recurrent state), or gives different results on two paths.

    python fuzz/fuzz_layers.py WORKDIR fuzz/corpus/layers -max_total_time=60
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import (
    Consumer,
    fix_checksum,
    instrument,
    instrumented_imports,
    main,
    same_on_every_path,
)

with instrumented_imports():
    from dynaq import _dynaq
    from dynaq import layers as L

import numpy as np

try:
    with instrumented_imports():
        import dynaq.torch as dt
        import torch
except ImportError:  # torch is optional: mode 3 falls back to mode 2
    torch = None  # type: ignore[assignment]

CLASSES = (L.Linear, L.LSTM, L.GRU, L.LSTMCell, L.GRUCell)
F32 = np.float32
DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "I8": np.int8,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}
VALUES = (np.nan, np.inf, -np.inf, 0.0, -1.0, 1e38, -1e38, 1e-45, -128, 127, 255, 3.5)
JSON_VALUES = (
    '"row"', '"tensor"', '"col"', "1", "-1", "0", "2", "3", "true", "false", "null", "1e400",
    "99999999999999999999999", "NaN", "[]", "{}", '["row"]', '{"a": 1}', "1.5", '""',
)  # fmt: skip
CONFIG_KEYS = ("granularity", "num_layers", "bidirectional", "batch_first", "hidden_size", "x")
CONFIG_TEXTS = ("", "[]", "1", "null", "NaN", "{", '"x"', "[" * 50000 + "]" * 50000)
META_KEYS = (_dynaq.KIND_KEY, _dynaq.FORMAT_KEY, _dynaq.QUANTIZED_KEY, "dynaq.config")
META_VALUES = ("", "[", "[]", '["weight"]', '["weight", "weight"]', "{}", "2", "1", "9", "LSTM")
EXTRA_NAMES = (
    "bias", "bias_ih_l0", "bias_hh_l1", "weight_ih_l1_reverse", "weight_ih_l0_reverse_scale",
    "input_scale", "input_zero_point", "weight_hr_l0", "junk",
)  # fmt: skip


# --- the seeds (structure-aware modes build their own from the fuzzer's choices) ------------


def make_layer(cls: type, c: Consumer) -> Any:
    """A small valid layer of ``cls`` as ``c`` chooses."""
    rng = np.random.default_rng(c.int(0, 255))
    per_channel, gran = c.bool(), ("row", "tensor")[c.int(0, 1)]

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(F32)

    if cls is L.Linear:
        n, k = c.int(1, 9), c.int(1, 9)
        layer = L.Linear.from_float(
            w(n, k), w(n) if c.bool() else None, per_channel=per_channel, granularity=gran
        )
        return layer.calibrate(w(3, k)) if c.bool() else layer
    gates = 4 if cls in (L.LSTM, L.LSTMCell) else 3
    i, h, bias = c.int(1, 5), c.int(1, 4), c.bool()
    if cls in (L.LSTMCell, L.GRUCell):
        b = (w(gates * h), w(gates * h)) if bias else (None, None)
        return cls(w(gates * h, i), w(gates * h, h), *b, per_channel=per_channel, granularity=gran)
    layers, bidir = c.int(1, 3), c.bool()
    dirs = 2 if bidir else 1
    params = {}
    for layer in range(layers):
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = w(gates * h, i if layer == 0 else h * dirs)
            params["weight_hh" + sfx] = w(gates * h, h)
            if bias:
                params["bias_ih" + sfx], params["bias_hh" + sfx] = w(gates * h), w(gates * h)
    return cls(
        params,
        num_layers=layers,
        bidirectional=bidir,
        batch_first=c.bool(),
        per_channel=per_channel,
        granularity=gran,
    )


# --- blobs: decode to plain tensors, encode, reseal ------------------------------------------


def decode(blob: bytes, kind: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    weights, tensors, meta = _dynaq.read_blob(blob, kind)
    flat: dict[str, np.ndarray] = {}
    for name, pw in weights.items():
        flat.update(_dynaq.weight_tensors(pw, name))
    flat.update(tensors)
    return flat, {k: v for k, v in meta.items() if k != "dynaq.crc32"}


def encode(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    dtype_of = {np.dtype(v): k for k, v in DTYPES.items()}
    names = [(n, dtype_of[a.dtype]) for n, a in tensors.items()]
    order = _dynaq.safetensors_data_order(names)
    items = [
        (n, dtype_of[tensors[n].dtype], list(tensors[n].shape), tensors[n].nbytes) for n in order
    ]
    meta = {**meta, "dynaq.crc32": "00000000"}
    head = bytes(_dynaq.encode_safetensors_header(items, list(meta.items())))
    return fix_checksum(head + b"".join(np.ascontiguousarray(tensors[n]).tobytes() for n in order))


# --- edits --------------------------------------------------------------------------------------


@instrument
def edit(c: Consumer, tensors: dict[str, Any], config: Any, meta: dict[str, Any]) -> Any:
    """One edit of a layer's tensors (in place), configuration (returned) or metadata."""
    names = sorted(tensors)
    op = c.int(0, 9)
    if op == 0 and isinstance(config, dict):  # a configuration entry gets a value
        config[CONFIG_KEYS[c.int(0, len(CONFIG_KEYS) - 1)]] = json.loads(
            JSON_VALUES[c.int(0, len(JSON_VALUES) - 1)]
        )
    elif op == 1 and isinstance(config, dict) and config:  # a configuration entry goes
        del config[sorted(config)[c.int(0, len(config) - 1)]]
    elif op == 2:  # the configuration is not an object, or not JSON
        return CONFIG_TEXTS[c.int(0, len(CONFIG_TEXTS) - 1)]
    elif op == 3:  # a metadata entry changes or goes
        key = META_KEYS[c.int(0, len(META_KEYS) - 1)]
        if c.bool():
            meta.pop(key, None)
        else:
            meta[key] = META_VALUES[c.int(0, len(META_VALUES) - 1)]
    elif not names:
        return config
    elif op == 4:  # a tensor changes dtype
        n = names[c.int(0, len(names) - 1)]
        with np.errstate(all="ignore"):
            tensors[n] = tensors[n].astype(list(DTYPES.values())[c.int(0, len(DTYPES) - 1)])
    elif op == 5:  # a tensor changes shape
        n = names[c.int(0, len(names) - 1)]
        shape = tuple(c.int(0, 5) for _ in range(c.int(0, 3)))
        tensors[n] = np.resize(tensors[n], shape).astype(tensors[n].dtype)
    elif op == 6:  # a tensor holds a special value
        n = names[c.int(0, len(names) - 1)]
        a = np.array(tensors[n])
        if a.size:
            with np.errstate(all="ignore"):
                v = np.array(VALUES[c.int(0, len(VALUES) - 1)]).astype(a.dtype)
            a.flat[c.int(0, a.size - 1)] = v
        tensors[n] = a
    elif op == 7:  # a tensor goes
        del tensors[names[c.int(0, len(names) - 1)]]
    elif op == 8:  # a tensor is added
        n = EXTRA_NAMES[c.int(0, len(EXTRA_NAMES) - 1)]
        if n not in tensors:
            tensors[n] = np.ones(c.int(0, 12), dtype=F32)
    else:  # two tensors swap names
        a, b = names[c.int(0, len(names) - 1)], names[c.int(0, len(names) - 1)]
        tensors[a], tensors[b] = tensors[b], tensors[a]
    return config


def edits(c: Consumer, tensors: dict[str, Any], config: Any, meta: dict[str, Any]) -> Any:
    for _ in range(c.int(1, 8)):
        config = edit(c, tensors, config, meta)
    return config


# --- outcomes -------------------------------------------------------------------------------


@instrument
def classify(message: str, kind: str) -> None:
    """Branches on the stage of a refusal (coverage feedback from the native reader)."""
    if not message.startswith(f"{kind} bytes: ") and "cannot allocate" not in message:
        raise AssertionError(f"from_bytes error without its prefix: {message}")
    for stage in ("checksum", "config", "metadata", "missing", "not understood", "must be"):
        if stage in message:
            return


def check_works(layer: Any) -> None:
    """A loaded layer survives its own serialized form and computes on finite input, the same
    on every path."""
    cls = type(layer)
    again = layer.to_bytes()
    if cls.from_bytes(again).to_bytes() != again:
        raise AssertionError(f"{cls.__name__} changed through to_bytes()/from_bytes()")
    if cls is L.Linear:
        shape: tuple[int, ...] = (2, layer.in_features)
    elif cls in (L.LSTMCell, L.GRUCell):
        shape = (2, layer.input_size)
    else:
        shape = (3, 2, layer.input_size)
    if int(np.prod(shape)) > 1 << 16:
        return
    x = np.linspace(-2.0, 3.0, int(np.prod(shape)), dtype=F32).reshape(shape)

    def call() -> np.ndarray:
        out = layer(x)
        while isinstance(out, tuple):  # (output, state) and (h, c): the first array
            out = out[0]
        return np.asarray(out)

    try:
        same_on_every_path(call, f"{cls.__name__} call")
    except ValueError as e:
        if "float32 overflow" not in str(e):  # large weight scales may overflow a state
            raise AssertionError(f"a loaded {cls.__name__} fails on finite input: {e}") from e


@instrument
def from_bytes(cls: type, data: bytes) -> None:
    try:
        layer = cls.from_bytes(data)
    except (ValueError, MemoryError) as e:
        classify(str(e), cls._kind)
        return
    check_works(layer)


TORCH_MODULES = {L.Linear: "Linear", L.LSTM: "LSTM", L.GRU: "GRU"}


@instrument
def load_state_dict(layer: Any, c: Consumer) -> None:
    module_type = getattr(dt, TORCH_MODULES[type(layer)])
    wrap = module_type.from_layer if module_type is dt.Linear else module_type
    source = torch.nn.Sequential(wrap(layer))
    state = source.state_dict()
    meta = state._metadata  # type: ignore[attr-defined]
    tensors = {k[2:]: v.numpy().copy() for k, v in state.items()}
    config: Any = dict(meta["0"].get("dynaq", {}))
    config = edits(c, tensors, config, meta)
    meta["0"] = {**meta["0"], "dynaq": config}
    edited = type(state)({f"0.{k}": torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    edited._metadata = meta  # type: ignore[attr-defined]
    target = torch.nn.Sequential(wrap(layer))
    try:
        target.load_state_dict(edited)
    except RuntimeError:
        return
    check_works(target[0].layer)


@instrument
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, cls = data[0] % 4, CLASSES[data[0] // 4 % len(CLASSES)]
    body = data[1:]
    if mode == 0:
        return from_bytes(cls, body)
    if mode == 1:
        return from_bytes(cls, fix_checksum(body))
    c = Consumer(body)
    layer = make_layer(cls, c)
    if mode == 3 and torch is not None and cls in TORCH_MODULES:
        return load_state_dict(layer, c)
    tensors, meta = decode(layer.to_bytes(), cls._kind)
    text = meta.get("dynaq.config", "{}")
    config = edits(c, tensors, json.loads(text), meta)
    meta["dynaq.config"] = config if isinstance(config, str) else json.dumps(config)
    from_bytes(cls, encode(tensors, meta))


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
