"""Custom numpy inference with dynaq layers: an LSTM text classifier in int8.

The model is a small text classifier (embedding -> 2-layer bidirectional LSTM -> mean over time
-> Linear -> ReLU -> Linear) written in plain numpy, with random weights in PyTorch's parameter
format; put your own trained weights in their place. The script

1. runs it in float32 with a plain numpy LSTM (the reference),
2. builds the same model from ``dynaq.layers`` (int8 weights per output channel, activations
   quantized per row at run time) and compares logits and predictions,
3. compares dynamic with calibrated static activation quantization on the classifier head,
4. saves the int8 layers (bytes and pickle), loads them back and checks the outputs are
   bit-identical,
5. writes the float weights to a safetensors file, quantizes the file
   (``dynaq.safetensors.quantize_file``, the same as ``python -m dynaq quantize``), builds the
   model from the int8 file and checks it computes the same as step 2,
6. times the float and the int8 model on one thread.

Run it with ``python examples/numpy_inference.py``; it needs only numpy and dynaq.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from typing import Callable, TypeVar

import dynaq
import dynaq.safetensors
import numpy as np
from dynaq.layers import LSTM, Linear

F32 = np.float32
T = TypeVar("T")


def random_weights(
    rng: np.random.Generator, vocab: int, emb: int, hidden: int, classes: int
) -> dict[str, np.ndarray]:
    """PyTorch-style initialization (uniform in +-1/sqrt(fan)), PyTorch parameter names."""

    def uniform(shape: tuple[int, ...], fan: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan)
        return rng.uniform(-bound, bound, shape).astype(F32)

    w: dict[str, np.ndarray] = {"embed.weight": rng.standard_normal((vocab, emb)).astype(F32)}
    for layer in range(2):
        inp = emb if layer == 0 else 2 * hidden
        for sfx in (f"_l{layer}", f"_l{layer}_reverse"):
            w[f"lstm.weight_ih{sfx}"] = uniform((4 * hidden, inp), hidden)
            w[f"lstm.weight_hh{sfx}"] = uniform((4 * hidden, hidden), hidden)
            w[f"lstm.bias_ih{sfx}"] = uniform((4 * hidden,), hidden)
            w[f"lstm.bias_hh{sfx}"] = uniform((4 * hidden,), hidden)
    w["fc.weight"] = uniform((hidden, 2 * hidden), 2 * hidden)
    w["fc.bias"] = uniform((hidden,), 2 * hidden)
    w["out.weight"] = uniform((classes, hidden), hidden)
    w["out.bias"] = uniform((classes,), hidden)
    return w


def lstm_params(weights: Mapping[str, T]) -> dict[str, T]:
    """The ``lstm.*`` entries without their prefix: what ``dynaq.layers.LSTM`` takes."""
    return {k[len("lstm.") :]: v for k, v in weights.items() if k.startswith("lstm.")}


# --------------------------------------------------------------------------------------------
# The float32 reference: plain numpy.
# --------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * (F32(1.0) + np.tanh(F32(0.5) * x))


def float_lstm_direction(
    x: np.ndarray, p: dict[str, np.ndarray], sfx: str, reverse: bool
) -> np.ndarray:
    """One direction of one LSTM layer over x (batch, seq, features), PyTorch's equations."""
    batch, seq, _ = x.shape
    hidden = p[f"weight_hh{sfx}"].shape[1]
    xp = x @ p[f"weight_ih{sfx}"].T + p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"]
    h = np.zeros((batch, hidden), F32)
    c = np.zeros((batch, hidden), F32)
    out = np.empty((batch, seq, hidden), F32)
    for t in range(seq - 1, -1, -1) if reverse else range(seq):
        g = xp[:, t] + h @ p[f"weight_hh{sfx}"].T
        i, f = sigmoid(g[:, :hidden]), sigmoid(g[:, hidden : 2 * hidden])
        cand, o = np.tanh(g[:, 2 * hidden : 3 * hidden]), sigmoid(g[:, 3 * hidden :])
        c = f * c + i * cand
        h = o * np.tanh(c)
        out[:, t] = h
    return out


def float_model(weights: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    p = lstm_params(weights)
    x = weights["embed.weight"][ids]  # (batch, seq, emb)
    for layer in range(2):
        fwd = float_lstm_direction(x, p, f"_l{layer}", reverse=False)
        bwd = float_lstm_direction(x, p, f"_l{layer}_reverse", reverse=True)
        x = np.concatenate([fwd, bwd], axis=-1)
    pooled = x.mean(axis=1)
    hidden = np.maximum(pooled @ weights["fc.weight"].T + weights["fc.bias"], 0)
    return hidden @ weights["out.weight"].T + weights["out.bias"]


# --------------------------------------------------------------------------------------------
# The int8 model: dynaq layers, same structure.
# --------------------------------------------------------------------------------------------


class Int8Classifier:
    """Embedding lookup in float (it is a gather, not a matmul), everything else int8."""

    def __init__(self, embed: np.ndarray, lstm: LSTM, fc: Linear, out: Linear) -> None:
        self.embed, self.lstm, self.fc, self.out = embed, lstm, fc, out

    @classmethod
    def from_weights(cls, weights: Mapping[str, object]) -> Int8Classifier:
        """From float weights, or from ``dynaq.safetensors.load_quantized``'s PackedWeights."""
        lstm = LSTM(lstm_params(weights), num_layers=2, bidirectional=True, batch_first=True)
        fc = dynaq.safetensors.load_linear(weights, "fc.weight", "fc.bias")
        out = dynaq.safetensors.load_linear(weights, "out.weight", "out.bias")
        return cls(np.asarray(weights["embed.weight"], F32), lstm, fc, out)

    def features(self, ids: np.ndarray) -> np.ndarray:
        y, _ = self.lstm(self.embed[ids])
        return np.maximum(self.fc(y.mean(axis=1)), 0)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.out(self.features(ids))

    def to_bytes(self) -> bytes:
        """Every layer's own versioned bytes, in one pickle."""
        return pickle.dumps(
            {
                "embed": self.embed,
                "lstm": self.lstm.to_bytes(),
                "fc": self.fc.to_bytes(),
                "out": self.out.to_bytes(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Int8Classifier:
        d = pickle.loads(data)
        return cls(
            d["embed"],
            LSTM.from_bytes(d["lstm"]),
            Linear.from_bytes(d["fc"]),
            Linear.from_bytes(d["out"]),
        )


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return (
        float("inf")
        if noise == 0
        else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)
    )


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vocab, emb, classes = 2000, 64, 5
    weights = random_weights(rng, vocab, emb, args.hidden, classes)
    ids = rng.integers(0, vocab, size=(args.batch, args.seq))

    # 1-2. float reference and int8 model
    ref = float_model(weights, ids)
    model = Int8Classifier.from_weights(weights)
    logits = model(ids)
    agree = float(np.mean(ref.argmax(-1) == logits.argmax(-1)))
    rel = float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))
    print(f"model: {model.lstm!r}\n       {model.fc!r}\n       {model.out!r}")
    print(
        f"int8 vs float32 logits: relative error {rel:.2e}, SQNR {sqnr_db(ref, logits):.1f} dB, "
        f"same prediction for {agree:.0%} of {args.batch} inputs"
    )
    assert rel < 0.05 and agree >= 0.75, "int8 model disagrees with the float model"

    # 3. static vs dynamic activation quantization on the head, on the head's own inputs
    calib_ids = rng.integers(0, vocab, size=(64, args.seq))
    head_in = model.features(calib_ids)
    test_in = model.features(ids)
    float_head = test_in @ weights["out.weight"].T + weights["out.bias"]
    dynamic_err = np.abs(model.out(test_in) - float_head).max()
    model.out.calibrate(head_in)
    static_err = np.abs(model.out(test_in) - float_head).max()
    print(
        f"classifier head, max abs error: dynamic per-row {dynamic_err:.2e}, static "
        f"(calibrated on 64 other inputs, {model.out.activation_scale:.3g} per step) "
        f"{static_err:.2e}"
    )
    model.out.reset_calibration()

    # 4. save and load: bit-identical
    blob = model.to_bytes()
    again = Int8Classifier.from_bytes(blob)
    assert np.array_equal(again(ids), logits), "reloaded model differs"
    assert np.array_equal(pickle.loads(pickle.dumps(model.lstm))(model.embed[ids])[0],
                          model.lstm(model.embed[ids])[0])  # fmt: skip
    print(f"saved to {len(blob) / 2**20:.2f} MiB of bytes and reloaded: outputs bit-identical")

    # 5. the model-file route: float safetensors -> int8 safetensors -> layers
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model.safetensors")
        dst = os.path.join(tmp, "model.int8.safetensors")
        dynaq.safetensors.write(src, weights, {"note": "random weights"})
        report = dynaq.safetensors.quantize_file(src, dst, exclude=["embed.*"])
        print(report.totals())
        from_file = Int8Classifier.from_weights(dynaq.safetensors.load_quantized(dst))
        assert np.array_equal(from_file(ids), logits), "model from the int8 file differs"
        print(
            f"int8 file: {os.path.getsize(dst) / 2**20:.2f} MiB (float32: "
            f"{os.path.getsize(src) / 2**20:.2f} MiB); outputs bit-identical"
        )

    # 6. timing, one thread each (numpy's BLAS limited with threadpoolctl when it is installed)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        threadpool_limits = None
    threads = dynaq.get_num_threads()
    dynaq.set_num_threads(1)
    try:
        if threadpool_limits is not None:
            with threadpool_limits(1):
                t_float = median_ms(lambda: float_model(weights, ids))
        else:
            t_float = median_ms(lambda: float_model(weights, ids))
        t_int8 = median_ms(lambda: model(ids))
    finally:
        dynaq.set_num_threads(threads)
    blas = "1 thread" if threadpool_limits is not None else "default threads"
    print(
        f"forward of {args.batch} x {args.seq} tokens: float32 numpy ({blas}) {t_float:.1f} ms, "
        f"dynaq int8 (1 thread) {t_int8:.1f} ms"
    )


if __name__ == "__main__":
    main()
