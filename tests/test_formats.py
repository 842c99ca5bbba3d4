"""What the release before format version 2 wrote still loads, and computes what it computed.

The files in tests/data/legacy were written by that release (tests/data/legacy/make_legacy.py
says how): DYNAQPW weights, DYNAQLY layers, a version-1 torch state dict (one uint8 tensor per
module) and version-1 quantized safetensors files (``.dynaq_scale`` tensors). expected.npz holds
the outputs that release computed with them; the current release must give the same bits, and
what it writes again is format version 2.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import dynaq
import numpy as np
import pytest
from dynaq import safetensors as ds
from dynaq.layers import GRU, LSTM, GRUCell, Linear, LSTMCell
from util import blob_header

DATA = Path(__file__).parent / "data" / "legacy"
EXPECTED = dict(np.load(DATA / "expected.npz"))
X, SEQ = EXPECTED["x"], EXPECTED["seq"]
V2 = str(dynaq._dynaq.FORMAT_VERSION)


def _same(got, name):
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), EXPECTED[name].view(np.uint32))


def _is_v2(blob: bytes, kind: str) -> None:
    meta = blob_header(blob)["__metadata__"]
    assert meta["dynaq.format"] == V2 and meta["dynaq.kind"] == kind


@pytest.mark.parametrize("tag", ["per_channel", "per_tensor"])
def test_version_1_packed_weight(tag):
    blob = (DATA / f"packed_weight_{tag}.v1.bin").read_bytes()
    assert blob.startswith(b"DYNAQPW\0")
    pw = dynaq.PackedWeight.from_bytes(blob)
    assert pw.per_channel is (tag == "per_channel")
    assert pw.shape == (10, 12)
    again = pw.to_bytes()
    _is_v2(again, "PackedWeight")
    assert dynaq.PackedWeight.from_bytes(again) == pw
    assert pickle.loads(pickle.dumps(pw)) == pw


def test_version_1_packed_weight_outputs():
    # make_legacy.py used the same weight and bias for these and for the Linear layer's file.
    lin = Linear.from_bytes((DATA / "linear.v1.bin").read_bytes())
    for tag in ("per_channel", "per_tensor"):
        pw = dynaq.PackedWeight.from_bytes((DATA / f"packed_weight_{tag}.v1.bin").read_bytes())
        _same(dynaq.linear(X, pw, lin.bias), f"packed_weight_{tag}")


@pytest.mark.parametrize(
    "cls, name, outputs",
    [
        (Linear, "linear", ["linear"]),
        (Linear, "linear_static", ["linear_static"]),
        (LSTM, "lstm", ["lstm", "lstm_h", "lstm_c"]),
        (GRU, "gru", ["gru", "gru_h"]),
        (LSTMCell, "lstmcell", ["lstmcell_h", "lstmcell_c"]),
        (GRUCell, "grucell", ["grucell"]),
    ],
)
def test_version_1_layers(cls, name, outputs):
    blob = (DATA / f"{name}.v1.bin").read_bytes()
    assert blob.startswith(b"DYNAQLY\0")
    layer = cls.from_bytes(blob)
    if cls in (LSTM, GRU):
        y, state = layer(SEQ)
        got = [y, *(state if isinstance(state, tuple) else (state,))]
    elif cls is LSTMCell:
        got = list(layer(X))
    else:
        got = [layer(X)]
    for g, n in zip(got, outputs):
        _same(g, n)
    # Written again, it is format version 2, and computes the same.
    again = layer.to_bytes()
    _is_v2(again, cls._kind)
    copy = cls.from_bytes(again)
    assert repr(copy) == repr(layer)
    if name == "linear_static":
        assert copy.static and copy.activation_scale == layer.activation_scale
        _same(copy(X), "linear_static")


def test_version_1_layer_bytes_are_still_checked():
    blob = (DATA / "lstm.v1.bin").read_bytes()
    for bad in (blob[:-1], blob[:20], blob + b"\0"):
        with pytest.raises(ValueError, match="^LSTM bytes: "):
            LSTM.from_bytes(bad)
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        LSTM.from_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="holds a 'LSTM', not a 'GRU'"):
        GRU.from_bytes(blob)


@pytest.mark.parametrize("tag", ["per_channel", "per_tensor"])
def test_version_1_quantized_files(tag, tmp_path):
    path = DATA / f"quantized_{tag}.v1.safetensors"
    assert ds.read_metadata(path)["dynaq.format"] == "1"
    tensors = ds.load_quantized(path)
    assert set(tensors) == {"dense.weight", "dense.bias", "embed"}
    assert tensors["dense.weight"].per_channel is (tag == "per_channel")
    _same(dynaq.linear(X, tensors["dense.weight"], tensors["dense.bias"]), f"file_{tag}")
    layer = ds.load_linear(path, "dense.weight", "dense.bias")
    _same(layer(X), f"file_{tag}")


def test_version_1_torch_state_dict():
    torch = pytest.importorskip("torch")
    import dynaq.torch as dt

    sd = torch.load(DATA / "torch_state_dict.v1.pt", weights_only=True)
    assert sd["fc.dynaq_packed"].dtype == torch.uint8
    torch.manual_seed(1)  # other float weights than the ones quantized there
    model = torch.nn.ModuleDict(
        {
            "fc": torch.nn.Linear(12, 7),
            "lstm": torch.nn.LSTM(12, 5, num_layers=2, bidirectional=True),
            "gru": torch.nn.GRU(12, 6, batch_first=True, bias=False),
        }
    )
    q = dt.quantize_dynamic(model)
    q.load_state_dict(sd)
    with torch.no_grad():
        x, seq = torch.from_numpy(X), torch.from_numpy(SEQ)
        _same(q["fc"](x).numpy(), "torch_fc")
        _same(q["lstm"](seq)[0].numpy(), "torch_lstm")
        _same(q["gru"](seq)[0].numpy(), "torch_gru")
    # Saved again: plain tensors of format version 2.
    again = q.state_dict()
    assert "fc.dynaq_packed" not in again and again["fc.weight"].dtype == torch.int8
    assert again._metadata["fc"]["version"] == dynaq._dynaq.FORMAT_VERSION
    fresh = dt.quantize_dynamic(model)
    fresh.load_state_dict(again)
    with torch.no_grad():
        _same(fresh["fc"](torch.from_numpy(X)).numpy(), "torch_fc")


def test_version_1_torch_state_dict_is_still_checked():
    torch = pytest.importorskip("torch")
    import dynaq.torch as dt

    sd = torch.load(DATA / "torch_state_dict.v1.pt", weights_only=True)
    fresh = dt.quantize_dynamic(torch.nn.ModuleDict({"fc": torch.nn.Linear(12, 7)}))
    only_fc = {k: v for k, v in sd.items() if k.startswith("fc.")}
    bad = {**only_fc, "fc.dynaq_packed": only_fc["fc.dynaq_packed"][:-10]}
    with pytest.raises(RuntimeError, match=r"fc.dynaq_packed cannot be read"):
        fresh.load_state_dict(bad)
    bad = {**only_fc, "fc.dynaq_version": torch.tensor(99)}
    with pytest.raises(RuntimeError, match=r"fc.dynaq_version = 99 is not a version"):
        fresh.load_state_dict(bad)
    bad = {**only_fc, "fc.dynaq_packed": only_fc["fc.dynaq_packed"].float()}
    with pytest.raises(RuntimeError, match="must be a 1-D uint8 tensor"):
        fresh.load_state_dict(bad)
    wrong = dt.quantize_dynamic(torch.nn.ModuleDict({"fc": torch.nn.Linear(12, 8)}))
    with pytest.raises(RuntimeError, match="size mismatch for fc.dynaq_packed.*out_features=7"):
        wrong.load_state_dict(only_fc)
