"""The input contract of docs/CONTRACT.md at the model level: layers, their bytes, torch
modules and their state dicts, and the ``quantize`` command.

Each case is a hostile input of one class: a recurrent layer whose directions or layers
disagree, NaN in a parameter or state (whatever the sequence length), a malformed ``hx``, layer
bytes with one field wrong and a valid checksum (format versions 2 and 1), a torch module or
state dict with the same faults, and the command-line tool writing where it cannot. Each must
get the documented exception naming the parameter, the entry or the file as the user wrote it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from dynaq import safetensors as ds
from dynaq.layers import GRU, LSTM, GRUCell, Linear, LSTMCell
from util import reseal

F32 = np.float32
_rng = np.random.default_rng(11)
IN, H = 5, 3  # input and hidden size of the layers below


def _w(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(F32)


def _params(gates: int, layers: int = 1, bidirectional: bool = False, bias: bool = True):
    dirs = 2 if bidirectional else 1
    p = {}
    for layer in range(layers):
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = _w(gates * H, IN if layer == 0 else H * dirs)
            p["weight_hh" + sfx] = _w(gates * H, H)
            if bias:
                p["bias_ih" + sfx], p["bias_hh" + sfx] = _w(gates * H), _w(gates * H)
    return p


def _edit(p: dict, name: str, value) -> dict:
    return {**p, name: value}


def _nan(a: np.ndarray, value=np.nan) -> np.ndarray:
    a = np.array(a, dtype=F32)
    a.flat[a.size // 2] = value
    return a


LSTM2B = _params(4, 2, True)  # two layers, bidirectional
GRU2B = _params(3, 2, True)
LSTM_L = LSTM(LSTM2B, num_layers=2, bidirectional=True)
GRU_L = GRU(GRU2B, num_layers=2, bidirectional=True)
LSTMCELL = LSTMCell(_w(4 * H, IN), _w(4 * H, H), _w(4 * H), _w(4 * H))
GRUCELL = GRUCell(_w(3 * H, IN), _w(3 * H, H), _w(3 * H), _w(3 * H))
LINEAR = Linear.from_float(_w(4, IN), _w(4))
STATIC = Linear.from_float(_w(4, IN), _w(4)).calibrate(_w(8, IN))
LAYERS = {"Linear": LINEAR, "LSTM": LSTM_L, "GRU": GRU_L, "LSTMCell": LSTMCELL, "GRUCell": GRUCELL}


def _seq(n: int) -> np.ndarray:
    return _w(n, 2, IN)


def _state(n_layers_dirs: int = 4, value=np.nan) -> np.ndarray:
    return _nan(np.zeros((n_layers_dirs, 2, H), F32), value)


# --- layer bytes (format version 2): decode to plain tensors, edit one field, reseal --------


def _decode(blob: bytes) -> tuple[dict, dict]:
    """The tensors (name -> (dtype, shape, bytes)) and metadata of a safetensors blob."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = blob[8 + n :]
    tensors = {
        k: (v["dtype"], v["shape"], data[v["data_offsets"][0] : v["data_offsets"][1]])
        for k, v in header.items()
    }
    return tensors, meta


_NP = {"F32": "<f4", "I8": "|i1", "U8": "|u1", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def _encode(tensors: dict, meta: dict) -> bytes:
    """A sealed blob of ``tensors`` (stored back to back in name order) and ``meta``."""
    header, data = {}, b""
    for k in sorted(tensors):
        dtype, shape, raw = tensors[k]
        offsets = [len(data), len(data) + len(raw)]
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": offsets}
        data += raw
    header["__metadata__"] = {**meta, "dynaq.crc32": "00000000"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return reseal(struct.pack("<Q", len(h)) + h + data)


def _array(a: np.ndarray) -> tuple:
    dtype = {v: k for k, v in _NP.items()}[np.dtype(a.dtype).str]
    return (dtype, list(a.shape), np.ascontiguousarray(a).tobytes())


def _bytes_with(kind: str, *, config=None, meta=None, tensors=None, drop=()) -> bytes:
    """The bytes of the layer of ``kind`` above with fields replaced (``config``: the JSON
    text of its configuration; ``meta``: metadata entries; ``tensors``: name -> array)."""
    t, m = _decode(LAYERS[kind].to_bytes() if kind != "Static" else STATIC.to_bytes())
    if config is not None:
        m["dynaq.config"] = config
    m.update(meta or {})
    for name, a in (tensors or {}).items():
        t[name] = _array(a)
    for name in drop:
        del t[name]
    return _encode(t, m)


def _config_with(kind: str, **entries) -> str:
    _, m = _decode(LAYERS[kind].to_bytes())
    return json.dumps({**json.loads(m["dynaq.config"]), **entries})


def _tensor(kind: str, name: str) -> np.ndarray:
    t, _ = _decode(LAYERS[kind].to_bytes() if kind != "Static" else STATIC.to_bytes())
    dtype, shape, raw = t[name]
    return np.frombuffer(raw, _NP[dtype]).reshape(shape).copy()


def _class(kind: str):
    return {"Linear": Linear, "Static": Linear, "LSTM": LSTM, "GRU": GRU, "LSTMCell": LSTMCell,
            "GRUCell": GRUCell}[kind]  # fmt: skip


def _load(kind: str, blob: bytes):
    return lambda: _class(kind).from_bytes(blob)


DEEP = "[" * 100000 + "]" * 100000


# --- layer bytes (format version 1, DYNAQLY): edit the header, recompute the CRC ------------

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy")


def _legacy_with(name: str, edit) -> bytes:
    """The version-1 file ``name`` with its JSON header replaced by ``edit(header)`` (a dict or
    the raw text), the blobs as they were, the CRC recomputed."""
    with open(os.path.join(LEGACY, f"{name}.v1.bin"), "rb") as f:
        blob = f.read()
    version, hlen = struct.unpack("<II", blob[8:16])
    header = json.loads(blob[16 : 16 + hlen])
    new = edit(header)
    text = new.encode() if isinstance(new, str) else json.dumps(new).encode()
    body = blob[:8] + struct.pack("<II", version, len(text)) + text + blob[16 + hlen : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def _entry(index: int, value):
    def edit(h):
        h["blobs"][index] = value
        return h

    return edit


def _with_key(key, value):
    def edit(h):
        h[key] = value
        return h

    return edit


def _with_config(**entries):
    def edit(h):
        h["config"].update(entries)
        return h

    return edit


# (id, call, exception, message regex)
CASES = [
    # --- recurrent layers: every direction and layer checked at construction, named ---------
    ("lstm-reverse-hidden-size",
     lambda: LSTM(_edit(_edit(LSTM2B, "weight_hh_l0_reverse", _w(16, 4)), "weight_ih_l0_reverse",
                        _w(16, IN)), num_layers=2, bidirectional=True),
     ValueError, r"^weight_ih_l0_reverse has shape \(16, 5\).*hidden_size = 3 \(the hidden_size "
     r"of weight_hh_l0\)"),
    ("gru-layer-1-hidden-size",
     lambda: GRU(_edit(_edit(GRU2B, "weight_hh_l1", _w(12, 4)), "weight_ih_l1", _w(12, 6)),
                 num_layers=2, bidirectional=True),
     ValueError, r"^weight_ih_l1 has shape \(12, 6\)"),
    ("lstm-reverse-input-size",
     lambda: LSTM(_edit(LSTM2B, "weight_ih_l0_reverse", _w(12, IN + 1)), num_layers=2,
                  bidirectional=True),
     ValueError, r"^weight_ih_l0_reverse has shape \(12, 6\); expected input_size = 5 columns "
     r"\(the input size of weight_ih_l0\)"),
    ("gru-reverse-input-size",
     lambda: GRU(_edit(GRU2B, "weight_ih_l0_reverse", _w(9, 2)), num_layers=2, bidirectional=True),
     ValueError, r"^weight_ih_l0_reverse .*the input size of weight_ih_l0"),
    ("lstm-layer-1-input-size",
     lambda: LSTM(_edit(LSTM2B, "weight_ih_l1_reverse", _w(12, H)), num_layers=2,
                  bidirectional=True),
     ValueError, r"^weight_ih_l1_reverse .*expected input_size = 6 columns \(the outputs of "
     r"layer 0: 2 directions x hidden_size 3\)"),
    ("lstm-bias-l1-reverse-shape",
     lambda: LSTM(_edit(LSTM2B, "bias_ih_l1_reverse", _w(11)), num_layers=2, bidirectional=True),
     ValueError, r"^bias_ih_l1_reverse "),
    ("lstm-bias-hh-l0-nan",
     lambda: LSTM(_edit(LSTM2B, "bias_hh_l0", _nan(LSTM2B["bias_hh_l0"])), num_layers=2,
                  bidirectional=True),
     ValueError, r"^bias_hh_l0 contains NaN or infinity; a layer's parameters"),
    ("lstm-bias-ih-l1-reverse-inf",
     lambda: LSTM(_edit(LSTM2B, "bias_ih_l1_reverse", _nan(LSTM2B["bias_ih_l1_reverse"], np.inf)),
                  num_layers=2, bidirectional=True),
     ValueError, r"^bias_ih_l1_reverse contains NaN or infinity"),
    ("gru-bias-hh-l1-reverse-nan",
     lambda: GRU(_edit(GRU2B, "bias_hh_l1_reverse", _nan(GRU2B["bias_hh_l1_reverse"])),
                 num_layers=2, bidirectional=True),
     ValueError, r"^bias_hh_l1_reverse contains NaN or infinity"),
    ("gru-bias-ih-l0-inf",
     lambda: GRU(_edit(GRU2B, "bias_ih_l0", _nan(GRU2B["bias_ih_l0"], -np.inf)), num_layers=2,
                 bidirectional=True),
     ValueError, r"^bias_ih_l0 contains NaN or infinity"),
    ("lstmcell-bias-hh-nan",
     lambda: LSTMCell(_w(12, IN), _w(12, H), _w(12), _nan(_w(12))),
     ValueError, r"^bias_hh contains NaN or infinity"),
    ("grucell-bias-ih-inf",
     lambda: GRUCell(_w(9, IN), _w(9, H), _nan(_w(9), np.inf)),
     ValueError, r"^bias_ih contains NaN or infinity"),
    # --- constructor options: of their type, not truthy or truncated ----------------------------
    ("lstm-num_layers-float", lambda: LSTM(LSTM2B, num_layers=1.5, bidirectional=True),
     TypeError, r"^num_layers must be an int, got 1.5"),
    ("gru-num_layers-bool", lambda: GRU(_params(3), num_layers=True), TypeError,
     r"^num_layers must be an int, got True"),
    ("lstm-num_layers-str", lambda: LSTM(LSTM2B, num_layers="2", bidirectional=True), TypeError,
     r"^num_layers must be an int, got '2'"),
    ("lstm-bidirectional-str", lambda: LSTM(_params(4), bidirectional="no"), TypeError,
     r"^bidirectional must be a bool, got 'no'"),
    ("gru-batch_first-none", lambda: GRU(_params(3), batch_first=None), TypeError,
     r"^batch_first must be a bool, got None"),
    ("lstm-input_size-str", lambda: LSTM(_params(4), input_size="5"), TypeError,
     r"^input_size must be an int, got '5'"),
    ("gru-hidden_size-zero", lambda: GRU(_params(3), hidden_size=0), ValueError,
     r"^hidden_size must be at least 1, got 0"),
    ("lstm-no-hidden-units", lambda: LSTM({"weight_ih_l0": _w(0, IN), "weight_hh_l0": _w(0, 0)}),
     ValueError, r"^weight_ih_l0 has shape \(0, 5\): hidden_size must be at least 1"),
    ("lstmcell-hx-half-none", lambda: LSTMCELL(_w(2, IN), (None, np.zeros((2, H), F32))),
     TypeError, r"^hx for an LSTMCell must be \(h_0, c_0\), both arrays, or None"),
    ("linear-calibrate-none", lambda: Linear.from_float(_w(4, IN)).calibrate(None), TypeError,
     r"^samples must be an array"),
    ("quantize_file-exclude-int", lambda: ds.quantize_file("in", "out", exclude=5), TypeError,
     r"^exclude must be a pattern"),
    ("quantize_file-min_sqnr-str", lambda: ds.quantize_file("in", "out", min_sqnr="high"),
     TypeError, r"^min_sqnr must be a number of dB, got 'high'"),
    ("quantize_file-progress-int", lambda: ds.quantize_file("in", "out", progress=1), TypeError,
     r"^progress must be callable"),
    ("torch-linear-nested-input", lambda: _nested_input(), TypeError,
     r"^DynaqLinear: input must be a dense tensor, got a nested tensor"),
    # --- NaN/infinity in inputs and states: named, and the same whatever the length ---------
    *[
        (f"{k}-{what}-seq{n}", call, ValueError, rf"^{what} contains NaN or infinity")
        for n in (1, 3)
        for k, what, call in [
            ("lstm", "h_0", lambda n=n: LSTM_L(_seq(n), (_state(), np.zeros((4, 2, H), F32)))),
            ("lstm", "c_0", lambda n=n: LSTM_L(_seq(n), (np.zeros((4, 2, H), F32),
                                                         _state(value=np.inf)))),
            ("gru", "h_0", lambda n=n: GRU_L(_seq(n), _state(value=-np.inf))),
            ("lstm", "input", lambda n=n: LSTM_L(_nan(_seq(n)))),
        ]
    ],
    ("lstmcell-c_0-nan",
     lambda: LSTMCELL(_w(2, IN), (np.zeros((2, H), F32), _nan(np.zeros((2, H))))),
     ValueError, r"^c_0 contains NaN or infinity"),
    ("lstmcell-h_0-inf",
     lambda: LSTMCELL(_w(2, IN), (_nan(np.zeros((2, H)), np.inf), np.zeros((2, H), F32))),
     ValueError, r"^h_0 contains NaN or infinity"),
    ("grucell-hx-nan", lambda: GRUCELL(_w(2, IN), _nan(np.zeros((2, H)))), ValueError,
     r"^hx contains NaN or infinity"),
    ("grucell-input-nan", lambda: GRUCELL(_nan(_w(2, IN))), ValueError,
     r"^input contains NaN or infinity"),
    # A state that overflows float32 is refused by name, also at the last step.
    *[
        (f"{kind.__name__.lower()}-overflow-seq{n}", (lambda kind=kind, n=n: _overflow(kind, n)),
         ValueError, r"^the (cell|hidden) state of layer 0 at step 0 \(float32 overflow")
        for kind in (LSTM, GRU)
        for n in (1, 3)
    ],
    # --- hx structure --------------------------------------------------------------------------
    ("lstmcell-hx-stacked", lambda: LSTMCELL(_w(2, IN), np.zeros((2, 2, H), F32)), TypeError,
     r"^hx for an LSTMCell must be a tuple \(h_0, c_0\), got ndarray"),
    ("lstmcell-hx-list", lambda: LSTMCELL(_w(2, IN), [np.zeros((2, H), F32)] * 2), TypeError,
     r"^hx for an LSTMCell must be a tuple"),
    # --- layer bytes, version 2: one field wrong, checksum valid --------------------------------
    *[(f"v2-{k}-config-deep", _load(k, _bytes_with(k, config=DEEP)), ValueError,
       rf"^{k} bytes: bad dynaq.config") for k in LAYERS],
    *[(f"v2-{k}-config-unknown-key", _load(k, _bytes_with(k, config=_config_with(k, scale=2))),
       ValueError, rf"^{k} bytes: configuration not understood: \['scale'\]") for k in LAYERS],
    ("v2-LSTM-num_layers-str", _load("LSTM", _bytes_with("LSTM", config=_config_with(
        "LSTM", num_layers="2"))), ValueError, r"^LSTM bytes: configuration 'num_layers' must be"),
    ("v2-GRU-num_layers-huge", _load("GRU", _bytes_with("GRU", config=_config_with(
        "GRU", num_layers=10**30))), ValueError, r"^GRU bytes: "),
    ("v2-LSTM-bidirectional-int", _load("LSTM", _bytes_with("LSTM", config=_config_with(
        "LSTM", bidirectional=1))), ValueError, r"^LSTM bytes: configuration 'bidirectional'"),
    ("v2-Static-input_scale-nan",
     _load("Static", _bytes_with("Static", tensors={"input_scale": np.array(np.nan, F32)})),
     ValueError, r"^Linear bytes: input_scale must be finite and positive"),
    ("v2-Static-input_scale-zero",
     _load("Static", _bytes_with("Static", tensors={"input_scale": np.array(0, F32)})),
     ValueError, r"^Linear bytes: input_scale must be finite and positive"),
    ("v2-Static-input_zero_point-int8",
     _load("Static", _bytes_with("Static", tensors={"input_zero_point": np.array(-3, np.int8)})),
     ValueError, r"^Linear bytes: input_zero_point must be a uint8 scalar"),
    ("v2-Static-zero-point-alone",
     _load("Static", _bytes_with("Static", drop=["input_scale"])),
     ValueError, r"^Linear bytes: tensors missing: \['input_scale'\]"),
    ("v2-Linear-bias-nan",
     _load("Linear", _bytes_with("Linear", tensors={"bias": _nan(_tensor("Linear", "bias"))})),
     ValueError, r"^Linear bytes: bias contains NaN or infinity"),
    ("v2-LSTM-bias-reverse-inf",
     _load("LSTM", _bytes_with("LSTM", tensors={
         "bias_hh_l1_reverse": _nan(_tensor("LSTM", "bias_hh_l1_reverse"), np.inf)})),
     ValueError, r"^LSTM bytes: bias_hh_l1_reverse contains NaN or infinity"),
    ("v2-GRUCell-bias-nan",
     _load("GRUCell", _bytes_with("GRUCell", tensors={
         "bias_ih": _nan(_tensor("GRUCell", "bias_ih"))})),
     ValueError, r"^GRUCell bytes: bias_ih contains NaN or infinity"),
    ("v2-LSTM-reverse-hidden-size",
     _load("LSTM", _bytes_with("LSTM", tensors={
         "weight_hh_l0_reverse": np.ones((16, 4), np.int8),
         "weight_hh_l0_reverse_scale": np.ones(16, F32),
         "weight_ih_l0_reverse": np.ones((16, IN), np.int8),
         "weight_ih_l0_reverse_scale": np.ones(16, F32),
         "bias_ih_l0_reverse": np.ones(16, F32), "bias_hh_l0_reverse": np.ones(16, F32)})),
     ValueError, r"^LSTM bytes: weight_ih_l0_reverse has shape \(16, 5\)"),
    ("v2-GRU-reverse-input-size",
     _load("GRU", _bytes_with("GRU", tensors={
         "weight_ih_l0_reverse": np.ones((9, 2), np.int8)})),
     ValueError, r"^GRU bytes: weight_ih_l0_reverse has shape \(9, 2\); expected input_size = 5"),
    # --- layer bytes, version 1 (DYNAQLY): one field wrong, CRC valid --------------------------
    ("v1-LSTM-header-deep", _load("LSTM", _legacy_with("lstm", lambda h: DEEP)), ValueError,
     r"^LSTM bytes: unreadable header"),
    ("v1-GRU-header-list", _load("GRU", _legacy_with("gru", lambda h: [h])), ValueError,
     r"^GRU bytes: malformed header"),
    ("v1-Linear-header-extra-key", _load("Linear", _legacy_with("linear", _with_key("x", 1))),
     ValueError, r"^Linear bytes: malformed header"),
    ("v1-LSTM-entry-size-bool",
     _load("LSTM", _legacy_with("lstm", _entry(2, ["l0.bias_ih", "<f4", [20], True]))),
     ValueError, r"^LSTM bytes: bad blob entry"),
    ("v1-LSTM-entry-size-float",
     _load("LSTM", _legacy_with("lstm", _entry(2, ["l0.bias_ih", "<f4", [20], 80.0]))),
     ValueError, r"^LSTM bytes: bad blob entry"),
    ("v1-GRUCell-entry-name-int",
     _load("GRUCell", _legacy_with("grucell", _entry(0, [7, "bytes", [1], 1]))),
     ValueError, r"^GRUCell bytes: bad blob entry"),
    ("v1-LSTM-entry-duplicate",
     _load("LSTM", _legacy_with("lstm", _entry(3, ["l0.bias_ih", "<f4", [20], 80]))),
     ValueError, r"^LSTM bytes: bad blob entry"),
    ("v1-LSTMCell-entry-dtype-list",
     _load("LSTMCell", _legacy_with("lstmcell", _entry(0, ["weight_ih", ["bytes"], [1], 1]))),
     ValueError, r"^LSTMCell bytes: bad blob entry"),
    ("v1-Linear-activation-scale-nan",
     _load("Linear", _legacy_with("linear_static", _with_config(activation_scale=float("nan")))),
     ValueError, r"^Linear bytes: input_scale must be finite and positive"),
    ("v1-Linear-activation-zero-point-300",
     _load("Linear", _legacy_with("linear_static", _with_config(activation_zero_point=300))),
     ValueError, r"^Linear bytes: activation_zero_point"),
    ("v1-Linear-activation-zero-point-str",
     _load("Linear", _legacy_with("linear_static", _with_config(activation_zero_point="1"))),
     ValueError, r"^Linear bytes: activation_zero_point"),
    ("v1-GRU-config-unknown-key",
     _load("GRU", _legacy_with("gru", _with_config(dropout=0.5))),
     ValueError, r"^GRU bytes: configuration not understood: \['dropout'\]"),
]  # fmt: skip


def _nested_input():
    torch, dt = _torch()
    with warnings.catch_warnings():  # torch: nested tensors are "in prototype stage"
        warnings.simplefilter("ignore")
        x = torch.nested.nested_tensor([torch.ones(2, IN), torch.ones(3, IN)])
    return dt.Linear.from_float(torch.nn.Linear(IN, 4))(x)


def _overflow(kind, n):
    """A state that overflows float32 in the first step: x W_ih = +inf, h_0 W_hh = -inf."""
    g = 4 if kind is LSTM else 3
    w_ih, w_hh = np.full((g, 1), 2, F32), np.full((g, 1), -2, F32)
    layer = kind({"weight_ih_l0": w_ih, "weight_hh_l0": w_hh})
    x, h0 = np.full((n, 1, 1), 3e38, F32), np.full((1, 1, 1), 3e38, F32)
    return layer(x, (h0, np.zeros_like(h0)) if kind is LSTM else h0)


@pytest.mark.parametrize("call, exc, match", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_model_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- torch modules and their state dicts ------------------------------------------------------


def _torch():
    torch = pytest.importorskip("torch")
    import dynaq.torch as dt

    return torch, dt


def _modules():
    torch, dt = _torch()
    torch.manual_seed(0)
    return {
        "Linear": dt.Linear.from_float(torch.nn.Linear(IN, 4)),
        "LSTM": dt.LSTM.from_float(torch.nn.LSTM(IN, H, num_layers=2, bidirectional=True)),
        "GRU": dt.GRU.from_float(torch.nn.GRU(IN, H, num_layers=2, bidirectional=True)),
    }


MODULE_CALLS = [
    ("Linear", "input", lambda t: (_t(t, _nan(_w(2, IN))),)),
    ("LSTM", "input", lambda t: (_t(t, _nan(_seq(3))),)),
    ("LSTM", "h_0", lambda t: (_t(t, _seq(1)), (_t(t, _state()), _t(t, _state(value=0.0))))),
    ("LSTM", "c_0", lambda t: (_t(t, _seq(3)), (_t(t, _state(value=0.0)), _t(t, _state())))),
    ("GRU", "h_0", lambda t: (_t(t, _seq(1)), _t(t, _state(value=np.inf)))),
    ("GRU", "input", lambda t: (_t(t, _nan(_seq(1), -np.inf)),)),
]


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=F32))


@pytest.mark.parametrize("kind, name, args", [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in
                                              MODULE_CALLS])  # fmt: skip
def test_torch_module_names_its_argument(kind, name, args):
    torch, _ = _torch()
    module = _modules()[kind]
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinity"):
        module(*args(torch))


def _state_dict_case(edit):
    """Loads a state dict of a Sequential holding a DynaqLinear (at "0") and a DynaqLSTM (at
    "1") after ``edit(state_dict)``; returns the RuntimeError's text."""
    torch, dt = _torch()
    m = _modules()

    def model():
        return torch.nn.Sequential(m["Linear"], m["LSTM"])

    sd = model().state_dict()
    edit(sd, torch)
    target = torch.nn.Sequential(_modules()["Linear"], _modules()["LSTM"])
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(RuntimeError) as e:
        target.load_state_dict(sd)
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("1."))
    return str(e.value)


def _put(key, make):
    def edit(sd, torch):
        sd[key] = make(sd, torch)

    return edit


def _metadata(value):
    def edit(sd, torch):
        sd._metadata["1"] = value

    return edit


STATE_DICTS = [
    ("metadata-not-dict", _metadata(5),
     r"DynaqLSTM at '1': its state-dict metadata must be a dict"),
    ("config-unknown-key", _metadata({"dynaq": {"granularity": "row", "dropout": 0.1}}),
     r"DynaqLSTM at '1': configuration not understood: \['dropout'\]"),
    ("config-num_layers-str", _metadata({"dynaq": {"num_layers": "2"}}),
     r"DynaqLSTM at '1': configuration 'num_layers' must be"),
    ("bias-nan", _put("1.bias_hh_l1_reverse", lambda sd, t: t.full_like(sd["1.bias_hh_l1_reverse"],
                                                                           float("nan"))),
     r"DynaqLSTM at '1': bias_hh_l1_reverse contains NaN or infinity"),
    ("reverse-hidden-size",
     _put("1.weight_ih_l0_reverse", lambda sd, t: t.ones((12, 4), dtype=t.int8)),
     r"weight_ih_l0_reverse"),
]  # fmt: skip


@pytest.mark.parametrize("edit, match", [pytest.param(e, m, id=i) for i, e, m in STATE_DICTS])
def test_state_dict_field(edit, match):
    text = _state_dict_case(edit)
    assert __import__("re").search(match, text), text


# A version-1 state dict (tests/data/legacy: one uint8 tensor per module) with a bad version or
# an unreadable tensor.
LEGACY_STATE_DICTS = [
    ("version-inf", "dynaq_version", lambda t, v: t.tensor(float("inf")),
     r"fc.dynaq_version must be an integer, got tensor\(inf\)"),
    ("version-float", "dynaq_version", lambda t, v: 1.5,
     r"fc.dynaq_version must be an integer, got 1.5"),
    ("version-str", "dynaq_version", lambda t, v: "1",
     r"fc.dynaq_version must be an integer, got '1'"),
    ("version-bool", "dynaq_version", lambda t, v: True,
     r"fc.dynaq_version must be an integer, got True"),
    ("version-float-tensor", "dynaq_version", lambda t, v: t.tensor(1.0),
     r"fc.dynaq_version must be an integer, got tensor\(1.\)"),
    ("packed-meta-tensor", "dynaq_packed", lambda t, v: t.empty(v.shape, dtype=t.uint8,
                                                               device="meta"),
     r"fc.dynaq_packed cannot be read: .*meta"),
]  # fmt: skip


@pytest.mark.parametrize(
    "entry, make, match", [pytest.param(*c[1:], id=c[0]) for c in LEGACY_STATE_DICTS]
)
def test_version_1_state_dict_field(entry, make, match):
    torch, dt = _torch()
    sd = torch.load(os.path.join(LEGACY, "torch_state_dict.v1.pt"), weights_only=True)
    fc = {k: v for k, v in sd.items() if k.startswith("fc.")}
    fc["fc." + entry] = make(torch, fc["fc." + entry])
    fresh = dt.quantize_dynamic(torch.nn.ModuleDict({"fc": torch.nn.Linear(12, 7)}))
    with pytest.raises(RuntimeError, match=match):
        fresh.load_state_dict(fc)


# --- the quantize command: every failure one line naming the user's path, nothing left ----


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    ds.write(path, {"layer.weight": _w(8, 6), "layer.bias": _w(8)})
    return path


def _cli(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "dynaq", "quantize", *map(str, args)],
                       capture_output=True, text=True, timeout=120, cwd=cwd)  # fmt: skip
    return r.returncode, r.stderr


def _one_line_error(rc, err, path):
    assert rc == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"dynaq quantize: error: {path}: "), err


def _left(directory):
    return sorted(p.name for p in directory.iterdir())


def test_cli_out_is_a_directory(model_file, tmp_path):
    (tmp_path / "d").mkdir()
    rc, err = _cli("model.safetensors", "d", cwd=tmp_path)
    _one_line_error(rc, err, "d")
    assert "is a directory" in err
    assert _left(tmp_path) == ["d", "model.safetensors"] and _left(tmp_path / "d") == []


def test_cli_out_is_a_fifo_not_replaced(model_file, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, err = _cli(model_file, fifo)
    _one_line_error(rc, err, fifo)
    assert "not a regular file" in err
    assert __import__("stat").S_ISFIFO(os.lstat(fifo).st_mode)
    assert _left(tmp_path) == ["model.safetensors", "pipe"]


def test_cli_out_through_a_missing_directory(model_file, tmp_path):
    # The system resolves "missing/../out" (no such directory), not string arithmetic.
    rc, err = _cli("model.safetensors", "missing/../out.safetensors", cwd=tmp_path)
    _one_line_error(rc, err, "missing/../out.safetensors")
    assert "its directory does not exist" in err
    assert _left(tmp_path) == ["model.safetensors"]


def test_cli_empty_out(model_file, tmp_path):
    rc, err = _cli(model_file, "")
    _one_line_error(rc, err, "''")
    assert _left(tmp_path) == ["model.safetensors"]


def test_cli_out_symlink_replaces_its_target(model_file, tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.safetensors"
    link.symlink_to("real/q.safetensors")
    rc, err = _cli(model_file, link)
    assert rc == 0, err
    assert link.is_symlink() and ds.read_metadata(tmp_path / "real" / "q.safetensors")
    assert _left(tmp_path / "real") == ["q.safetensors"]


def test_cli_out_is_in_through_a_symlink(tmp_path):
    ds.write(tmp_path / "model.safetensors", {"w": _w(8, 6)})
    (tmp_path / "current").symlink_to("model.safetensors")
    rc, err = _cli("current", "current", cwd=tmp_path)
    assert rc == 0, err
    assert (tmp_path / "current").is_symlink()
    assert "dynaq.format" in ds.read_metadata(tmp_path / "model.safetensors")
    assert _left(tmp_path) == ["current", "model.safetensors"]


def _run_in_process(args, monkeypatch_target=None):
    """Runs the command in this process (so that a fault can be injected) and returns its exit
    status and stderr."""
    import argparse

    from dynaq import _quantize_cli

    parser = argparse.ArgumentParser()
    _quantize_cli.add_arguments(parser)
    err = io.StringIO()
    rc = _quantize_cli.run(parser.parse_args([str(a) for a in args]), stderr=err)
    return rc, err.getvalue()


def test_cli_disk_full_while_writing(model_file, tmp_path, monkeypatch):
    # The output is written through a temporary file in OUT's directory: make writes to it hit
    # ENOSPC, as on a full disk (/dev/full fails every write that reaches it that way).
    import tempfile

    real = tempfile.mkstemp

    def full_mkstemp(*a, **k):
        fd, name = real(*a, **k)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)
    out = tmp_path / "q.safetensors"
    rc, err = _run_in_process([model_file, out])
    _one_line_error(rc, err, out)
    assert "No space left on device" in err
    assert _left(tmp_path) == ["model.safetensors"]


def test_cli_disk_full_while_spooling(model_file, tmp_path, monkeypatch):
    import tempfile

    def full_spool(*a, **k):
        return open("/dev/full", "w+b", buffering=0)

    monkeypatch.setattr(tempfile, "TemporaryFile", full_spool)
    out = tmp_path / "q.safetensors"
    rc, err = _run_in_process([model_file, out])
    _one_line_error(rc, err, out)
    assert "No space left on device" in err
    assert _left(tmp_path) == ["model.safetensors"]


def test_cli_permission_denied(model_file, tmp_path, monkeypatch):
    # As root a read-only directory is still writable: inject the EACCES that creating the
    # temporary file would get.
    import tempfile

    def denied(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".tmpXYZ"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    out = tmp_path / "q.safetensors"
    rc, err = _run_in_process([model_file, out])
    _one_line_error(rc, err, out)
    assert "Permission denied" in err and ".tmpXYZ" not in err
    assert _left(tmp_path) == ["model.safetensors"]


# Cases that already held before the model-level checks were tightened (they stay, as
# regression tests, but are not counted as new): NaN input to the numpy layers, config values
# of the wrong type, a calibrated scale or zero point of the wrong kind in version-2 bytes, and
# header faults that were already a ValueError (if with a vaguer message).
ALREADY_HELD = {
    "lstm-input-seq1", "lstm-input-seq3", "grucell-input-nan", "v2-LSTM-num_layers-str",
    "v2-GRU-num_layers-huge", "v2-LSTM-bidirectional-int", "v2-Static-input_scale-nan",
    "v2-Static-input_scale-zero", "v2-Static-input_zero_point-int8", "v2-Static-zero-point-alone",
    "v1-Linear-activation-scale-nan", "v1-GRU-header-list", "v1-LSTM-entry-size-bool",
    "v1-GRUCell-entry-name-int", "module-LSTM-input", "module-GRU-input",
    "state-config-num_layers-str", "test_cli_permission_denied",
}  # fmt: skip


def test_case_count():
    ids = [c[0] for c in CASES]
    ids += [f"module-{kind}-{name}" for kind, name, _ in MODULE_CALLS]
    ids += [f"state-{c[0]}" for c in STATE_DICTS]
    ids += [f"legacy-state-{c[0]}" for c in LEGACY_STATE_DICTS]
    ids += [name for name in globals() if name.startswith("test_cli_")]
    assert len(set(ids)) == len(ids) and ALREADY_HELD <= set(ids)
    assert len(set(ids) - ALREADY_HELD) >= 60


def test_write_refuses_a_fifo_and_follows_a_symlink(tmp_path):
    # safetensors.write shares the CLI's atomic writer: the same rules, as exceptions.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file") as e:
        ds.write(fifo, {"w": _w(2, 2)})
    assert e.value.filename == fifo.as_posix() or e.value.filename == str(fifo)
    link = tmp_path / "link"
    link.symlink_to("target.safetensors")
    ds.write(link, {"w": _w(2, 2)})
    assert link.is_symlink() and (tmp_path / "target.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "pipe", "target.safetensors"]
