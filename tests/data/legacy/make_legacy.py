"""Writes the files in this folder with the release before format version 2 (commit 60cb2a0, the
last that wrote DYNAQPW weights, DYNAQLY layers, version-1 torch state dicts and version-1
quantized safetensors files), and what that release computed with them.

Kept to document how the fixtures were made; run it only with that release installed:

    git worktree add /tmp/old 60cb2a0 && pip install /tmp/old
    python tests/data/legacy/make_legacy.py tests/data/legacy

tests/test_formats.py loads every file with the current release and checks the outputs
against expected.npz, bit for bit.
"""

from __future__ import annotations

import os
import sys

import dynaq
import numpy as np
from dynaq import safetensors as ds
from dynaq.layers import GRU, LSTM, GRUCell, Linear, LSTMCell


def main(out: str) -> None:
    rng = np.random.default_rng(2026)
    f32 = np.float32
    x = rng.standard_normal((3, 12), dtype=f32)
    seq = rng.standard_normal((4, 2, 12), dtype=f32)
    expected: dict[str, np.ndarray] = {"x": x, "seq": seq}

    w = rng.standard_normal((10, 12), dtype=f32)
    b = rng.standard_normal(10, dtype=f32)
    for per_channel in (True, False):
        tag = "per_channel" if per_channel else "per_tensor"
        pw = dynaq.pack_weight(w, per_channel=per_channel)
        _write(out, f"packed_weight_{tag}.v1.bin", pw.to_bytes())
        expected[f"packed_weight_{tag}"] = dynaq.linear(x, pw, b)

    lin = Linear.from_float(w, b)
    _write(out, "linear.v1.bin", lin.to_bytes())
    expected["linear"] = lin(x)
    static = Linear.from_float(w, b, per_channel=False, granularity="tensor")
    static.calibrate(rng.standard_normal((8, 12), dtype=f32))
    _write(out, "linear_static.v1.bin", static.to_bytes())
    expected["linear_static"] = static(x)

    h = 5
    lstm_p = {}
    for layer, inp in ((0, 12), (1, 2 * h)):
        for sfx in ("", "_reverse"):
            lstm_p[f"weight_ih_l{layer}{sfx}"] = rng.standard_normal((4 * h, inp), dtype=f32)
            lstm_p[f"weight_hh_l{layer}{sfx}"] = rng.standard_normal((4 * h, h), dtype=f32)
            lstm_p[f"bias_ih_l{layer}{sfx}"] = rng.standard_normal(4 * h, dtype=f32)
            lstm_p[f"bias_hh_l{layer}{sfx}"] = rng.standard_normal(4 * h, dtype=f32)
    lstm = LSTM(lstm_p, num_layers=2, bidirectional=True)
    _write(out, "lstm.v1.bin", lstm.to_bytes())
    y, (hn, cn) = lstm(seq)
    expected.update(lstm=y, lstm_h=hn, lstm_c=cn)

    gru_p = {
        "weight_ih_l0": rng.standard_normal((3 * h, 12), dtype=f32),
        "weight_hh_l0": rng.standard_normal((3 * h, h), dtype=f32),
    }
    gru = GRU(gru_p, batch_first=True, per_channel=False)
    _write(out, "gru.v1.bin", gru.to_bytes())
    y, hn = gru(seq)
    expected.update(gru=y, gru_h=hn)

    lcell = LSTMCell(lstm_p["weight_ih_l0"], lstm_p["weight_hh_l0"], lstm_p["bias_ih_l0"])
    _write(out, "lstmcell.v1.bin", lcell.to_bytes())
    expected["lstmcell_h"], expected["lstmcell_c"] = lcell(x)
    gcell = GRUCell(gru_p["weight_ih_l0"], gru_p["weight_hh_l0"], granularity="tensor")
    _write(out, "grucell.v1.bin", gcell.to_bytes())
    expected["grucell"] = gcell(x)

    src = os.path.join(out, "float.safetensors.tmp")
    embed = rng.standard_normal((6, 4), dtype=f32)
    ds.write(src, {"dense.weight": w, "dense.bias": b, "embed": embed})
    for per_channel in (True, False):
        tag = "per_channel" if per_channel else "per_tensor"
        dst = os.path.join(out, f"quantized_{tag}.v1.safetensors")
        ds.quantize_file(src, dst, per_channel=per_channel)
        tensors = ds.load_quantized(dst)
        expected[f"file_{tag}"] = dynaq.linear(x, tensors["dense.weight"], tensors["dense.bias"])
    os.unlink(src)

    try:
        import dynaq.torch as dt
        import torch
    except ImportError:
        print("torch not installed: no state dict written", file=sys.stderr)
    else:
        torch.manual_seed(0)
        model = torch.nn.ModuleDict(
            {
                "fc": torch.nn.Linear(12, 7),
                "lstm": torch.nn.LSTM(12, 5, num_layers=2, bidirectional=True),
                "gru": torch.nn.GRU(12, 6, batch_first=True, bias=False),
            }
        )
        q = dt.quantize_dynamic(model)
        torch.save(q.state_dict(), os.path.join(out, "torch_state_dict.v1.pt"))
        with torch.no_grad():
            tx, ts = torch.from_numpy(x), torch.from_numpy(seq)
            expected["torch_fc"] = q["fc"](tx).numpy()
            expected["torch_lstm"] = q["lstm"](ts)[0].numpy()
            expected["torch_gru"] = q["gru"](ts)[0].numpy()
    np.savez(os.path.join(out, "expected.npz"), **expected)


def _write(out: str, name: str, data: bytes) -> None:
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
