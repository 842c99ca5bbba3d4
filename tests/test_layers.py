"""dynaq.layers: Linear (dynamic and calibrated static), LSTM/GRU and their cells.

Linear is checked bit for bit against a numpy reference of the documented arithmetic, built from
``dynaq.quantize``'s parameters and the unpacked int8 weights. The recurrent layers are checked
against PyTorch's float modules within an error bound derived from the quantization scales (see
``_Bound``), over odd sizes, 1-3 layers, both directions, ``batch_first``, unbatched input, initial
states and bias-free modules.
"""

from __future__ import annotations

import itertools
import json
import pickle
import re

import dynaq
import numpy as np
import pytest
from dynaq.layers import GRU, LSTM, GRUCell, Linear, LSTMCell
from util import assert_bitwise_equal

try:  # pragma: no cover - depends on the environment
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (test extra)")

F32 = np.float32
F64 = np.float64


def _rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Linear: bit-exact references of the documented arithmetic.
# ---------------------------------------------------------------------------------------------


def _epilogue(xq, zp, sx, values, sw, bias):
    """``float32(acc - zp * colsum) * (sx * sw) + bias``, in float32, in that order."""
    v = values.astype(np.int64)
    acc = xq.astype(np.int64) @ v.T
    corrected = (acc - zp.astype(np.int64)[:, None] * v.sum(axis=1)[None, :]).astype(F32)
    y = corrected * (sx.astype(F32)[:, None] * sw.astype(F32)[None, :])
    return y if bias is None else y + bias.astype(F32)


def _quantize_rows(x2, scale, zp):
    """``clamp(round(x / scale), -zp, 255 - zp) + zp`` per row, float32, half to even."""
    s = scale.astype(F32)[:, None]
    z = zp.astype(F32)[:, None]
    q = np.minimum(np.maximum(x2.astype(F32) / s, -z), F32(255.0) - z)
    return np.rint(q).astype(np.int64) + zp.astype(np.int64)[:, None]


def _linear_dynamic_ref(x, pw, bias, granularity):
    x2 = np.asarray(x, F32).reshape(-1, pw.in_features)
    q = dynaq.quantize(x2, granularity=granularity)
    m = x2.shape[0]
    scale = np.broadcast_to(q.scale, (m,)).astype(F32)
    zp = np.broadcast_to(q.zero_point, (m,))
    # dynaq.quantize's values are the reference quantization itself; check them too
    xq = _quantize_rows(x2, scale, zp)
    np.testing.assert_array_equal(xq, q.values.astype(np.int64))
    values, sw = pw.unpack()
    y = _epilogue(xq, zp, scale, values, np.broadcast_to(sw, (pw.out_features,)), bias)
    return y.reshape(np.shape(x)[:-1] + (pw.out_features,))


def _linear_static_ref(x, pw, bias, scale, zp):
    x2 = np.asarray(x, F32).reshape(-1, pw.in_features)
    m = x2.shape[0]
    s = np.full(m, scale, F32)
    z = np.full(m, zp, np.int64)
    xq = _quantize_rows(x2, s, z)
    values, sw = pw.unpack()
    y = _epilogue(xq, z, s, values, np.broadcast_to(sw, (pw.out_features,)), bias)
    return y.reshape(np.shape(x)[:-1] + (pw.out_features,))


def _linear_bound(x, pw, bias, granularity):
    """|y - (x @ w.T + b)| <= sum_k |wq_nk| |x^_k - x_k| + sw_n / 2 sum_k |x_k| (+ rounding),
    with |x^ - x| <= sx / 2 for the activation scale sx of the row (or tensor)."""
    x2 = np.asarray(x, F64).reshape(-1, pw.in_features)
    q = _half_scale(x2, np.zeros_like(x2), granularity)
    wq = np.abs(pw.dequantize().astype(F64))
    half_sw = np.broadcast_to(pw.scales.astype(F64), (pw.out_features,)) / 2
    bound = q * wq.sum(1) + np.abs(x2).sum(1, keepdims=True) * half_sw
    mag = np.abs(x2) @ wq.T + (0 if bias is None else np.abs(bias))
    return (bound + 1e-6 * mag + 1e-30).reshape(np.shape(x)[:-1] + (pw.out_features,))


LINEAR_SHAPES = [((1, 1), (1,)), ((3, 5), (7, 5)), ((17, 33), (2, 4, 33)), ((64, 1), (5, 1))]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("wshape,xshape", LINEAR_SHAPES)
def test_linear_from_float_is_the_documented_arithmetic(wshape, xshape, granularity, per_channel):
    rng = _rng(sum(wshape) + len(xshape))
    w = (rng.standard_normal(wshape) * 0.3).astype(F32)
    b = rng.standard_normal(wshape[0]).astype(F32)
    x = (rng.standard_normal(xshape) * 2 + 0.5).astype(F32)
    layer = Linear.from_float(w, b, per_channel=per_channel, granularity=granularity)
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    assert layer.weight == pw
    assert (layer.in_features, layer.out_features) == (wshape[1], wshape[0])
    assert not layer.static
    y = layer(x)
    assert y.shape == xshape[:-1] + (wshape[0],) and y.dtype == F32
    assert_bitwise_equal(y, _linear_dynamic_ref(x, pw, b, granularity))
    assert_bitwise_equal(y, dynaq.linear(x, pw, b, granularity=granularity))
    # ... within the bound derived from the scales, of the float result
    ref = x.astype(F64) @ w.T.astype(F64) + b
    err = np.abs(y - ref)
    bound = _linear_bound(x, pw, b, granularity)
    assert np.all(err <= bound), float(np.max(err - bound))
    # bias-free, built from a PackedWeight, out=
    layer2 = Linear(pw, granularity=granularity)
    assert layer2.bias is None
    out = np.empty_like(y)
    assert layer2(x, out=out) is out
    assert_bitwise_equal(out, _linear_dynamic_ref(x, pw, None, granularity))
    assert_bitwise_equal(layer2.forward(x), out)


def test_linear_accepts_float64_float16_and_views():
    rng = _rng(1)
    w = rng.standard_normal((6, 8))  # float64
    layer = Linear.from_float(w, rng.standard_normal(6).astype(np.float16))
    x = rng.standard_normal((8, 4)).T  # a transposed (non-contiguous) float64 view
    assert_bitwise_equal(layer(x), layer(np.ascontiguousarray(x, F32)))
    assert_bitwise_equal(layer(x.astype(np.float16)), layer(x.astype(np.float16).astype(F32)))


@pytest.mark.parametrize("per_channel", [True, False])
def test_linear_calibrated_static_mode_matches_reference_bit_exactly(per_channel):
    rng = _rng(2)
    w = (rng.standard_normal((19, 23)) * 0.2).astype(F32)
    b = rng.standard_normal(19).astype(F32)
    layer = Linear.from_float(w, b, per_channel=per_channel)
    samples = [(rng.standard_normal((n, 23)) * 1.5 + 0.3).astype(F32) for n in (5, 1, 9)]
    samples.append(rng.standard_normal((2, 3, 23)))  # float64 and 3-D are fine too
    assert layer.calibrate(samples) is layer
    assert layer.static
    flat = np.concatenate([np.asarray(s, F32).ravel() for s in samples])
    q = dynaq.quantize(flat)  # the parameters of the whole calibration set
    assert layer.activation_scale == float(q.scale)
    assert layer.activation_zero_point == int(q.zero_point)
    # inside and outside the calibrated range (the latter saturates)
    x = (rng.standard_normal((4, 7, 23)) * 3).astype(F32)
    assert np.abs(x).max() > np.abs(flat).max()
    y = layer(x)
    ref = _linear_static_ref(x, layer.weight, b, layer.activation_scale, q.zero_point)
    assert_bitwise_equal(y, ref)
    # a row's result no longer depends on its own range: quantizing rows one at a time agrees
    assert_bitwise_equal(layer(x[0, :1]), y[0, :1])
    assert not np.array_equal(y, dynaq.linear(x, layer.weight, b))
    # one array as the calibration set; empty arrays are ignored
    layer2 = Linear.from_float(w, b, per_channel=per_channel)
    layer2.calibrate(samples[0])
    assert layer2.activation_scale == float(dynaq.quantize(samples[0]).scale)
    layer2.calibrate([samples[0], np.zeros((0, 23), F32)])
    assert layer2.activation_scale == float(dynaq.quantize(samples[0]).scale)
    # round trips keep the static parameters
    for copy in (Linear.from_bytes(layer.to_bytes()), pickle.loads(pickle.dumps(layer))):
        assert copy.static and copy.activation_scale == layer.activation_scale
        assert copy.activation_zero_point == layer.activation_zero_point
        assert_bitwise_equal(copy(x), y)
    assert "static(scale=" in repr(layer) and f"zero_point={q.zero_point}" in repr(layer)
    # back to dynamic
    assert layer.reset_calibration() is layer
    assert not layer.static and layer.activation_scale is None
    assert_bitwise_equal(layer(x), dynaq.linear(x, layer.weight, b))
    assert "dynamic(row)" in repr(layer)


def test_linear_calibration_on_zeros_and_static_vs_dynamic_error():
    rng = _rng(3)
    w = (rng.standard_normal((16, 32)) * 0.2).astype(F32)
    layer = Linear.from_float(w)
    layer.calibrate(np.zeros((3, 32), F32))
    assert (layer.activation_scale, layer.activation_zero_point) == (1.0, 0)
    # static quantization from the data's own range is as accurate as dynamic per-tensor
    x = (rng.standard_normal((8, 32))).astype(F32)
    layer.calibrate(x)
    tensor = Linear.from_float(w, granularity="tensor")
    assert_bitwise_equal(layer(x), tensor(x))


def test_linear_round_trips_and_repr():
    rng = _rng(4)
    x = rng.standard_normal((3, 11)).astype(F32)
    for layer in (
        Linear.from_float(rng.standard_normal((5, 11)), rng.standard_normal(5)),
        Linear.from_float(rng.standard_normal((5, 11)), per_channel=False, granularity="tensor"),
    ):
        blob = layer.to_bytes()
        assert isinstance(blob, bytes)
        for copy in (Linear.from_bytes(blob), pickle.loads(pickle.dumps(layer))):
            assert copy.weight == layer.weight
            assert copy.granularity == layer.granularity
            assert (copy.bias is None) == (layer.bias is None)
            assert_bitwise_equal(copy(x), layer(x))
            assert repr(copy) == repr(layer)
        assert Linear.from_bytes(bytearray(blob)).to_bytes() == blob
        assert Linear.from_bytes(memoryview(blob)).to_bytes() == blob
    assert repr(Linear.from_float(np.ones((5, 11)), np.ones(5))) == (
        "Linear(in_features=11, out_features=5, bias=True, per_channel=True, "
        "activations=dynamic(row))"
    )


def test_linear_bad_inputs():
    rng = _rng(5)
    w = rng.standard_normal((4, 6)).astype(F32)
    layer = Linear.from_float(w, np.zeros(4, F32))
    with pytest.raises(TypeError, match="PackedWeight"):
        Linear(w)
    with pytest.raises(ValueError, match="2-D"):
        Linear.from_float(np.ones(6, F32))
    with pytest.raises(ValueError, match="2-D"):
        Linear.from_float(np.ones((2, 3, 4), F32))
    with pytest.raises(TypeError, match="dtype int64"):
        Linear.from_float(np.ones((4, 6), np.int64))
    with pytest.raises(ValueError, match=re.escape("bias must have shape (4,), got (5,)")):
        Linear.from_float(w, np.zeros(5, F32))
    with pytest.raises(TypeError, match="bias"):
        Linear.from_float(w, np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="granularity"):
        Linear.from_float(w, granularity="column")
    with pytest.raises(ValueError, match="NaN"):
        Linear.from_float(np.full((2, 2), np.nan, F32))
    with pytest.raises(ValueError, match="in_features = 6"):
        layer(np.ones((3, 5), F32))
    with pytest.raises(ValueError, match="in_features = 6"):
        layer(np.float32(1.0))
    with pytest.raises(TypeError, match="dtype int64"):
        layer(np.ones((3, 6), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        layer(np.full((1, 6), np.inf, F32))
    with pytest.raises(ValueError, match="at least one sample"):
        layer.calibrate([])
    with pytest.raises(ValueError, match=r"samples\[1\] has shape \(2, 5\)"):
        layer.calibrate([np.ones((2, 6)), np.ones((2, 5))])
    with pytest.raises(ValueError, match=r"samples\[0\] contains NaN"):
        layer.calibrate(np.full((2, 6), np.nan))
    with pytest.raises(TypeError, match="samples"):
        layer.calibrate([np.ones((2, 6), np.int32)])
    assert not layer.static  # failed calibrations leave the layer dynamic


def test_linear_corrupt_bytes():
    layer = Linear.from_float(_rng(6).standard_normal((3, 4)), np.ones(3))
    blob = layer.to_bytes()
    with pytest.raises(TypeError, match="bytes"):
        Linear.from_bytes("not bytes")
    with pytest.raises(ValueError, match="Linear bytes: .*0 bytes"):
        Linear.from_bytes(b"")
    for cut in (1, 10, len(blob) // 2):
        with pytest.raises(ValueError, match="Linear bytes"):
            Linear.from_bytes(blob[:-cut])
    for pos in (0, 12, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(ValueError, match="Linear bytes"):
            Linear.from_bytes(bytes(bad))
    with pytest.raises(ValueError, match="holds a 'LSTMCell', not a 'Linear'"):
        Linear.from_bytes(LSTMCell(np.ones((4, 2)), np.ones((4, 1))).to_bytes())
    with pytest.raises(ValueError, match="Linear bytes"):
        Linear.from_bytes(b"DYNAQLY\0" + b"\xff" * 40)


# ---------------------------------------------------------------------------------------------
# Recurrent layers: a float64 reference of PyTorch's equations, and error bounds.
#
# Every projection dynaq computes is y^ = W^ x^' (+ b), where x' = x + d is its actual input
# (d: error carried from earlier steps or layers, |d| <= e), x^' the uint8 dequantization of x'
# (|x^' - x'| <= sx'/2, sx' the activation scale of its row, or of the tensor) and W^ the
# dequantized int8 weight (|W^ - W| <= sw_n/2 per output channel n). Hence, per output n,
#
#     |y^_n - y_n| <= sum_k |W^_nk| (sx'/2 + e_k) + (sw_n / 2) sum_k |x_k|            (*)
#
# plus float32 rounding (1e-6 of the magnitudes); sx' is bounded by widening the reference range
# by e. The gates then carry these bounds without linearizing: a sigmoid or tanh moves by at most
# (its input's change) x (its largest slope within that change of the reference input), a
# product a*b by |a| db + |b| da + da db. Nothing is estimated, so the bounds are rigorous.
#
# Two checks use them:
# - per step (tight, ~5-20x the actual error): each step of dynaq's layer, run one step at a
#   time, against the float step from the same inputs and state (e = 0 in (*));
# - whole sequences against torch.nn.LSTM/GRU (rigorous but loose: worst-case errors compound
#   through the recurrence), together with "the error is a small fraction of the signal".
# ---------------------------------------------------------------------------------------------


def _half_scale(x, e, granularity):
    """Bound on sx'/2 for dynaq's input x' in [x - e, x + e]: rows are the last axis."""
    hi = np.maximum(x + e, 0)
    lo = np.minimum(x - e, 0)
    if granularity == "row":
        width = hi.max(axis=-1, keepdims=True) - lo.min(axis=-1, keepdims=True)
    else:
        width = np.full(x.shape[:-1] + (1,), hi.max(initial=0) - lo.min(initial=0))
    return width / 255 / 2 * (1 + 1e-5)


def _sig(a):
    return 0.5 * (1 + np.tanh(0.5 * a))


def _sig_change(a, da):
    """Largest change of sigmoid(a) when a moves by at most da (slope is largest nearest 0)."""
    d = np.maximum(np.abs(a) - da, 0)
    s = _sig(d)
    return np.minimum(da * s * (1 - s), 1)


def _tanh_change(a, da):
    d = np.maximum(np.abs(a) - da, 0)
    return np.minimum(da * (1 - np.tanh(d) ** 2), 2)


def _mul_change(a, da, b, db):
    return np.abs(a) * db + np.abs(b) * da + da * db


class _Dir:
    """One direction of one layer: float64 weights, dequantized weights, half weight scales."""

    def __init__(self, kind, w_ih, w_hh, b_ih, b_hh, per_channel):
        self.kind = kind
        self.w_ih, self.w_hh = w_ih.astype(F64), w_hh.astype(F64)
        g = w_ih.shape[0]
        self.b_ih = np.zeros(g) if b_ih is None else b_ih.astype(F64)
        self.b_hh = np.zeros(g) if b_hh is None else b_hh.astype(F64)
        self.hidden = w_hh.shape[1]
        self.q = []
        for w in (w_ih, w_hh):
            pw = dynaq.pack_weight(w, per_channel=per_channel)
            wq = pw.dequantize().astype(F64)
            # sw/2, widened by float32's rounding of w / sw and of the dequantization
            half_sw = np.broadcast_to(pw.scales.astype(F64), (g,)) / 2 * (1 + 1e-4)
            assert np.all(np.abs(wq - w) <= half_sw[:, None])
            self.q.append((np.abs(wq), half_sw))

    def proj_error(self, which, x, e, granularity):
        """Bound (*) on a projection of x (rows, K) carrying error e, and its magnitude."""
        wq_abs, half_sw = self.q[which]
        q = _half_scale(x, e, granularity)
        bound = (q + e) @ wq_abs.T + np.abs(x).sum(-1, keepdims=True) * half_sw
        mag = (np.abs(x) + e + q) @ wq_abs.T
        return bound, mag

    def run(self, x, ex, h, c, reverse, granularity):
        """Reference outputs and bounds over the sequence x (T, B, I) with input bounds ex,
        from the exact initial state (h, c)."""
        seq, batch, _ = x.shape
        hs = self.hidden
        xp = x @ self.w_ih.T + self.b_ih
        e_xp, mag_x = self.proj_error(0, x.reshape(seq * batch, -1),
                                      ex.reshape(seq * batch, -1), granularity)  # fmt: skip
        e_xp, mag_x = e_xp.reshape(seq, batch, -1), mag_x.reshape(seq, batch, -1)
        eh = np.zeros_like(h)
        ec = np.zeros_like(h)
        out = np.empty((seq, batch, hs))
        e_out = np.empty((seq, batch, hs))
        bias_mag = np.abs(self.b_ih) + np.abs(self.b_hh)
        for t in range(seq - 1, -1, -1) if reverse else range(seq):
            hp = h @ self.w_hh.T + self.b_hh
            e_hp, mag_h = self.proj_error(1, h, eh, granularity)
            slack = 1e-6 * (mag_x[t] + mag_h + bias_mag) + 1e-7
            if self.kind == "LSTM":
                a = xp[t] + hp
                da = e_xp[t] + e_hp + slack
                ai, af, ag, ao = (a[:, k * hs : (k + 1) * hs] for k in range(4))
                di, df, dg, do = (da[:, k * hs : (k + 1) * hs] for k in range(4))
                i, f, g, o = _sig(ai), _sig(af), np.tanh(ag), _sig(ao)
                ei, ef, eg, eo = (
                    _sig_change(ai, di),
                    _sig_change(af, df),
                    _tanh_change(ag, dg),
                    _sig_change(ao, do),
                )
                c_new = f * c + i * g
                ec_new = _mul_change(f, ef, c, ec) + _mul_change(i, ei, g, eg)
                ec_new += 1e-6 * (np.abs(f * c) + np.abs(i * g)) + 1e-7
                tc = np.tanh(c_new)
                h_new = o * tc
                eh_new = _mul_change(o, eo, tc, _tanh_change(c_new, ec_new)) + 1e-6
                c, ec = c_new, ec_new
            else:
                xr, xz, xn = (xp[t][:, k * hs : (k + 1) * hs] for k in range(3))
                hr, hz, hn = (hp[:, k * hs : (k + 1) * hs] for k in range(3))
                dxr, dxz, dxn = (e_xp[t][:, k * hs : (k + 1) * hs] for k in range(3))
                dhr, dhz, dhn = ((e_hp + slack)[:, k * hs : (k + 1) * hs] for k in range(3))
                r, z = _sig(xr + hr), _sig(xz + hz)
                er, ez = _sig_change(xr + hr, dxr + dhr), _sig_change(xz + hz, dxz + dhz)
                an = xn + r * hn
                dan = dxn + _mul_change(r, er, hn, dhn) + 1e-6 * np.abs(r * hn)
                n = np.tanh(an)
                en = _tanh_change(an, dan)
                h_new = (1 - z) * n + z * h
                eh_new = _mul_change(1 - z, ez, n, en) + _mul_change(z, ez, h, eh) + 1e-6
            h, eh = h_new, eh_new
            out[t], e_out[t] = h, eh
        return out, e_out, h, eh, c, ec


def _direction_params(params, layer, reverse):
    """One direction of one layer, renamed to a 1-layer, forward module's parameters."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    return {k[: -len(sfx)] + "_l0": v for k, v in params.items() if k.endswith(sfx)}


def _reference(kind, params, num_layers, bidirectional, x, h0, c0, granularity, per_channel):
    """Float64 reference (seq, batch, features) of a whole LSTM/GRU, with the bounds carried
    through every step and layer."""
    dirs = 2 if bidirectional else 1
    layer_in, e_in = x.astype(F64), np.zeros(x.shape)
    h_n, eh_n = np.empty(h0.shape), np.empty(h0.shape)
    c_n, ec_n = np.empty(h0.shape), np.empty(h0.shape)
    for layer in range(num_layers):
        outs, errs = [], []
        for d in range(dirs):
            p = _direction_params(params, layer, d == 1)
            cell = _Dir(kind, p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"),
                        p.get("bias_hh_l0"), per_channel)  # fmt: skip
            idx = layer * dirs + d
            c_init = c0[idx].astype(F64) if c0 is not None else np.zeros(h0[idx].shape)
            out, e_out, h, eh, c, ec = cell.run(
                layer_in, e_in, h0[idx].astype(F64), c_init, d == 1, granularity
            )
            outs.append(out)
            errs.append(e_out)
            h_n[idx], eh_n[idx], c_n[idx], ec_n[idx] = h, eh, c, ec
        layer_in, e_in = np.concatenate(outs, axis=2), np.concatenate(errs, axis=2)
    return layer_in, e_in, h_n, eh_n, c_n, ec_n


def _step_by_step(kind, params, num_layers, bidirectional, x, h0, c0, per_channel, ratios):
    """Runs the layer one time step at a time on 1-layer, forward dynaq modules (the reverse
    direction on the reversed time order) and checks every step against the float step from the
    same inputs and state within the local bound (*). Appends (bound / error) of every step's
    worst element to ``ratios``; returns output, h_n, c_n (seq-first)."""
    lstm = kind == "LSTM"
    cls = LSTM if lstm else GRU
    dirs = 2 if bidirectional else 1
    seq, batch, _ = x.shape
    layer_in = x
    h_n, c_n = np.empty_like(h0), np.empty_like(h0)
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            p = _direction_params(params, layer, d == 1)
            module = cls(p, per_channel=per_channel)
            ref = _Dir(kind, p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"),
                       p.get("bias_hh_l0"), per_channel)  # fmt: skip
            idx = layer * dirs + d
            h = h0[idx]
            c = c0[idx] if lstm else np.zeros_like(h)
            out = np.empty((seq, batch, h.shape[-1]), F32)
            for t in range(seq - 1, -1, -1) if d else range(seq):
                xt = layer_in[t : t + 1]
                if lstm:
                    _, (h_new, c_new) = module(xt, (h[None], c[None]))
                    h_new, c_new = h_new[0], c_new[0]
                else:
                    h_new = module(xt, h[None])[1][0]
                _, _, r_h, r_eh, r_c, r_ec = ref.run(
                    xt.astype(F64), np.zeros(xt.shape), h.astype(F64), c.astype(F64), False, "row"
                )
                checks = [(h_new, r_h, r_eh)]
                if lstm:
                    checks.append((c_new, r_c, r_ec))
                for got, want, bound in checks:
                    err = np.abs(got - want)
                    excess = err - bound
                    assert np.all(excess <= 0), (
                        f"layer {layer} dir {d} step {t}: error exceeds the local bound by "
                        f"{excess.max():.3g} (error {err.max():.3g}, bound {bound.max():.3g})"
                    )
                    if err.max() > 1e-5:
                        ratios.append(bound.max() / err.max())
                h = h_new
                c = c_new if lstm else c
                out[t] = h
            outs.append(out)
            h_n[idx], c_n[idx] = h, c
        layer_in = np.concatenate(outs, axis=2)
    return layer_in, h_n, c_n


# Odd sizes, 1-3 layers, both directions, batch_first, unbatched, initial states, no bias, both
# granularities and weight scalings, all covered; every input size x hidden size pair once.
INPUT_SIZES = (1, 5, 17)
HIDDEN_SIZES = (1, 7, 16, 33)
RNN_CASES = []
for _i, (_inp, _hid) in enumerate(itertools.product(INPUT_SIZES, HIDDEN_SIZES)):
    RNN_CASES.append(
        dict(
            input_size=_inp,
            hidden_size=_hid,
            num_layers=1 + _i % 3,
            bidirectional=_i % 2 == 1,
            batch_first=_i % 4 in (1, 2),
            unbatched=_i % 5 == 4,
            init_state=_i % 3 != 1,
            bias=_i % 7 != 3,
            granularity="tensor" if _i % 6 == 5 else "row",
            per_channel=_i % 8 != 7,
        )
    )


def _case_id(case):
    return (
        f"in{case['input_size']}-h{case['hidden_size']}-l{case['num_layers']}"
        + ("-bi" if case["bidirectional"] else "")
        + ("-bf" if case["batch_first"] else "")
        + ("-unbatched" if case["unbatched"] else "")
        + ("-hx" if case["init_state"] else "")
        + ("" if case["bias"] else "-nobias")
        + ("-tensor" if case["granularity"] == "tensor" else "")
        + ("" if case["per_channel"] else "-pertensorw")
    )


# The largest error against torch, as a fraction of the largest output, over all cases: int8
# projections keep recurrent outputs within 2% (about 0.3% typically, 0.9% at worst here).
SIGNAL_FRACTION = 0.02


def _check_within_bound(name, actual, torch_out, ref, bound):
    actual, torch_out = np.asarray(actual, F64), np.asarray(torch_out, F64)
    # the float64 reference is PyTorch's computation (to float32 rounding)
    np.testing.assert_allclose(ref, torch_out, rtol=0, atol=2e-5, err_msg=name)
    err = np.abs(actual - torch_out)
    excess = err - (bound + 2e-5)
    assert np.all(excess <= 0), f"{name}: error exceeds the bound by {excess.max():.3g}"
    signal = np.abs(torch_out).max()
    assert err.max() <= SIGNAL_FRACTION * signal + 1e-6, (
        f"{name}: error {err.max():.3g} against outputs up to {signal:.3g}"
    )


def _seq_first(a, case):
    if case["unbatched"]:
        return a[:, None]
    return a.transpose(1, 0, 2) if case["batch_first"] else a


@needs_torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("case", RNN_CASES, ids=[_case_id(c) for c in RNN_CASES])
def test_recurrent_matches_torch_within_derived_bound(kind, case):
    torch.manual_seed(case["input_size"] * 1000 + case["hidden_size"] + (kind == "GRU"))
    module = getattr(torch.nn, kind)(
        case["input_size"],
        case["hidden_size"],
        num_layers=case["num_layers"],
        bias=case["bias"],
        batch_first=case["batch_first"],
        bidirectional=case["bidirectional"],
    ).eval()
    layer = (LSTM if kind == "LSTM" else GRU).from_torch(
        module, per_channel=case["per_channel"], granularity=case["granularity"]
    )
    assert (layer.input_size, layer.hidden_size) == (case["input_size"], case["hidden_size"])
    rng = _rng(case["input_size"] * 100 + case["hidden_size"])
    seq, batch = 6, 1 if case["unbatched"] else 3
    dirs = 2 if case["bidirectional"] else 1
    total = case["num_layers"] * dirs
    x_tb = rng.standard_normal((seq, batch, case["input_size"])).astype(F32)
    scale = F32(0.5 if case["init_state"] else 0.0)
    h0 = (rng.standard_normal((total, batch, case["hidden_size"])) * scale).astype(F32)
    c0 = (rng.standard_normal((total, batch, case["hidden_size"])) * scale).astype(F32)
    if case["unbatched"]:
        x_in, h_in, c_in = x_tb[:, 0], h0[:, 0], c0[:, 0]
    elif case["batch_first"]:
        x_in, h_in, c_in = x_tb.transpose(1, 0, 2).copy(), h0, c0
    else:
        x_in, h_in, c_in = x_tb, h0, c0
    lstm = kind == "LSTM"
    hx = torch_hx = None
    if case["init_state"]:
        hx = (h_in, c_in) if lstm else h_in
        t = torch.from_numpy
        torch_hx = (t(h_in), t(c_in)) if lstm else t(h_in)
    with torch.no_grad():
        t_out, t_state = module(torch.from_numpy(x_in), torch_hx)
    out, state = layer(x_in, hx)
    assert out.dtype == F32 and out.shape == tuple(t_out.shape)
    h_n, c_n = state if lstm else (state, None)
    t_h = t_state[0] if lstm else t_state
    assert h_n.shape == tuple(t_h.shape)
    squeeze = (lambda a: a[:, 0]) if case["unbatched"] else (lambda a: a)

    # 1. Whole sequences against torch, within the bound carried through the recurrence.
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    ref, bound, h_ref, eh, c_ref, ec = _reference(
        kind, params, case["num_layers"], case["bidirectional"], x_tb, h0,
        c0 if lstm else None, case["granularity"], case["per_channel"],
    )  # fmt: skip
    seq_first_out = _seq_first(out, case)
    t_out_sf = _seq_first(t_out.numpy(), case)
    _check_within_bound("output", seq_first_out, t_out_sf, ref, bound)
    _check_within_bound("h_n", h_n, t_h.numpy(), squeeze(h_ref), squeeze(eh))
    if lstm:
        _check_within_bound("c_n", c_n, t_state[1].numpy(), squeeze(c_ref), squeeze(ec))

    # 2. Every step within the local bound. One step at a time computes the same numbers as the
    # whole sequence when activations are quantized per row (per tensor, the input projection's
    # scale spans the whole sequence, so only part 1 applies).
    if case["granularity"] == "row":
        ratios: list = []
        step_out, step_h, step_c = _step_by_step(
            kind, params, case["num_layers"], case["bidirectional"], x_tb, h0, c0,
            case["per_channel"], ratios,
        )  # fmt: skip
        assert_bitwise_equal(seq_first_out, step_out)
        assert_bitwise_equal(h_n, squeeze(step_h))
        if lstm:
            assert_bitwise_equal(c_n, squeeze(step_c))


def _torch_cell(kind, inp, hid, bias, seed):
    torch.manual_seed(seed)
    return getattr(torch.nn, f"{kind}Cell")(inp, hid, bias=bias).eval()


@needs_torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "inp,hid,bias,state,unbatched",
    [
        (1, 1, True, True, False),
        (5, 7, True, False, False),
        (17, 16, False, True, False),
        (5, 33, True, True, True),
        (17, 1, False, False, True),
    ],
)
def test_cells_match_torch_within_derived_bound(kind, inp, hid, bias, state, unbatched):
    module = _torch_cell(kind, inp, hid, bias, inp * 31 + hid)
    cls = LSTMCell if kind == "LSTM" else GRUCell
    cell = cls.from_torch(module)
    assert (cell.input_size, cell.hidden_size) == (inp, hid)
    rng = _rng(inp + hid)
    batch = 1 if unbatched else 4
    x = rng.standard_normal((batch, inp)).astype(F32)
    h = (rng.standard_normal((batch, hid)) * (0.7 if state else 0.0)).astype(F32)
    c = (rng.standard_normal((batch, hid)) * (0.7 if state else 0.0)).astype(F32)
    xi, hi, ci = (x[0], h[0], c[0]) if unbatched else (x, h, c)
    lstm = kind == "LSTM"
    t = torch.from_numpy
    with torch.no_grad():
        if lstm:
            t_h, t_c = module(t(xi), (t(hi), t(ci)) if state else None)
        else:
            t_h = module(t(xi), t(hi) if state else None)
    if lstm:
        got_h, got_c = cell(xi, (hi, ci) if state else None)
    else:
        got_h = cell(xi, hi if state else None)
    assert got_h.shape == tuple(t_h.shape) and got_h.dtype == F32
    params = {f"{k}_l0": v.detach().numpy() for k, v in module.named_parameters()}
    _, _, h_ref, eh, c_ref, ec = _reference(
        kind, params, 1, False, x[None], h[None], c[None] if lstm else None, "row", True
    )
    squeeze = (lambda a: a[0, 0]) if unbatched else (lambda a: a[0])
    _check_within_bound("h", got_h, t_h.numpy(), squeeze(h_ref), squeeze(eh))
    if lstm:
        _check_within_bound("c", got_c, t_c.numpy(), squeeze(c_ref), squeeze(ec))
    # the cell is one step of the full layer
    full = (LSTM if lstm else GRU)(params)
    _, st = full(x[None], ((h[None], c[None]) if lstm else h[None]) if state else None)
    assert_bitwise_equal(got_h, squeeze(st[0] if lstm else st))
    if lstm:
        assert_bitwise_equal(got_c, squeeze(st[1]))


def test_local_bound_is_reasonably_tight():
    """The per-step bound is a worst case: it adds |rounding errors| that in fact partly cancel
    (about sqrt(K) of them). On moderate sizes it stays within 1x-60x of the actual error."""
    ratios: list = []
    for kind, inp, hid in (("LSTM", 17, 16), ("GRU", 33, 33), ("LSTM", 64, 48)):
        params = _params(kind, inp, hid, layers=2, bidirectional=True, seed=hid)
        rng = _rng(hid)
        x = rng.standard_normal((6, 4, inp)).astype(F32)
        h0 = (rng.standard_normal((4, 4, hid)) * 0.5).astype(F32)
        c0 = (rng.standard_normal((4, 4, hid)) * 0.5).astype(F32)
        _step_by_step(kind, params, 2, True, x, h0, c0, True, ratios)
    assert len(ratios) > 50
    assert 1 <= min(ratios) and np.median(ratios) < 60, (min(ratios), np.median(ratios))


def test_multi_layer_bidirectional_is_a_composition_of_layers():
    """Bit for bit: a 2-layer bidirectional LSTM is two 1-layer bidirectional LSTMs in a row."""
    params = _params("LSTM", 5, 7, layers=2, bidirectional=True)
    both = LSTM(params, num_layers=2, bidirectional=True)
    first = LSTM({k: v for k, v in params.items() if "_l0" in k}, bidirectional=True)
    second = LSTM(
        {k.replace("_l1", "_l0"): v for k, v in params.items() if "_l1" in k}, bidirectional=True
    )
    rng = _rng(0)
    x = rng.standard_normal((5, 3, 5)).astype(F32)
    h0 = rng.standard_normal((4, 3, 7)).astype(F32)
    c0 = rng.standard_normal((4, 3, 7)).astype(F32)
    out, (h_n, c_n) = both(x, (h0, c0))
    mid, (h_a, c_a) = first(x, (h0[:2], c0[:2]))
    out2, (h_b, c_b) = second(mid, (h0[2:], c0[2:]))
    assert_bitwise_equal(out, out2)
    assert_bitwise_equal(h_n, np.concatenate([h_a, h_b]))
    assert_bitwise_equal(c_n, np.concatenate([c_a, c_b]))
    # the reverse direction is the forward one run on the reversed sequence
    rev = LSTM(
        {k.replace("_reverse", ""): v for k, v in params.items() if k.endswith("l0_reverse")}
    )
    r_out, (r_h, r_c) = rev(x[::-1].copy(), (h0[1:2], c0[1:2]))
    assert_bitwise_equal(mid[:, :, 7:], r_out[::-1])
    assert_bitwise_equal(h_a[1], r_h[0])
    # batch_first and unbatched are layouts of the same computation
    bf = LSTM(params, num_layers=2, bidirectional=True, batch_first=True)
    out_bf, _ = bf(x.transpose(1, 0, 2).copy(), (h0, c0))
    assert_bitwise_equal(out_bf, out.transpose(1, 0, 2))
    one, (h1, c1) = both(x[:, 1], (h0[:, 1], c0[:, 1]))
    assert_bitwise_equal(one, out[:, 1])
    assert_bitwise_equal(h1, h_n[:, 1])


def _params(kind, inp=5, hid=4, layers=1, bidirectional=False, bias=True, seed=0):
    """PyTorch-format parameters, initialized as PyTorch does (uniform in +-1/sqrt(hidden))."""
    rng = _rng(seed)
    gates = {"LSTM": 4, "GRU": 3}[kind]
    bound = 1 / np.sqrt(hid)
    p = {}
    for layer in range(layers):
        n_in = inp if layer == 0 else hid * (2 if bidirectional else 1)
        for sfx in [f"_l{layer}"] + ([f"_l{layer}_reverse"] if bidirectional else []):
            shapes = {"weight_ih": (gates * hid, n_in), "weight_hh": (gates * hid, hid)}
            if bias:
                shapes.update(bias_ih=(gates * hid,), bias_hh=(gates * hid,))
            for name, shape in shapes.items():
                p[name + sfx] = rng.uniform(-bound, bound, shape).astype(F32)
    return p


def _cell_params(kind, inp, hid, bias=True):
    p = _params(kind, inp, hid, bias=bias)
    return {k[: -len("_l0")]: v for k, v in p.items()}


RECURRENT_BUILDERS = {
    "LSTM": lambda: LSTM(
        _params("LSTM", 5, 7, layers=2, bidirectional=True),
        num_layers=2,
        bidirectional=True,
        batch_first=True,
    ),
    "GRU": lambda: GRU(_params("GRU", 3, 4, layers=3, bias=False), num_layers=3),
    "GRU-tensor": lambda: GRU(_params("GRU", 3, 4), per_channel=False, granularity="tensor"),
    "LSTMCell": lambda: LSTMCell(**_cell_params("LSTM", 5, 7)),
    "GRUCell": lambda: GRUCell(**_cell_params("GRU", 3, 4, bias=False)),
}


@pytest.mark.parametrize("name", list(RECURRENT_BUILDERS))
def test_recurrent_round_trips_are_exact(name):
    layer = RECURRENT_BUILDERS[name]()
    rng = _rng(2)
    if isinstance(layer, (LSTMCell, GRUCell)):
        x = rng.standard_normal((3, layer.input_size)).astype(F32)
    elif layer.batch_first:
        x = rng.standard_normal((2, 6, layer.input_size)).astype(F32)
    else:
        x = rng.standard_normal((6, 2, layer.input_size)).astype(F32)
    expected = layer(x)
    blob = layer.to_bytes()
    for copy in (type(layer).from_bytes(blob), pickle.loads(pickle.dumps(layer))):
        assert type(copy) is type(layer)
        assert repr(copy) == repr(layer)
        flat_expected = _flatten(expected)
        flat_got = _flatten(copy(x))
        assert len(flat_got) == len(flat_expected)
        for a, b in zip(flat_got, flat_expected):
            assert_bitwise_equal(a, b)
        assert copy.to_bytes() == blob


def _flatten(result):
    if isinstance(result, tuple):
        return [a for part in result for a in _flatten(part)]
    return [result]


def test_recurrent_reprs():
    lstm = LSTM(_params("LSTM", 5, 7, layers=2, bidirectional=True), num_layers=2,
                bidirectional=True)  # fmt: skip
    assert repr(lstm) == (
        "LSTM(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, batch_first=False, "
        "per_channel=True, granularity='row')"
    )
    gru = GRU(_params("GRU", 3, 4), per_channel=False, granularity="tensor")
    assert repr(gru).startswith("GRU(input_size=3, hidden_size=4, num_layers=1")
    assert "per_channel=False" in repr(gru) and "granularity='tensor'" in repr(gru)
    assert repr(GRUCell(**_cell_params("GRU", 3, 4))) == (
        "GRUCell(input_size=3, hidden_size=4, per_channel=True, granularity='row')"
    )
    assert repr(LSTMCell(np.ones((8, 3)), np.ones((8, 2)))).startswith(
        "LSTMCell(input_size=3, hidden_size=2"
    )


@needs_torch
def test_from_torch_takes_configuration_and_weights():
    torch.manual_seed(0)
    module = torch.nn.GRU(3, 4, num_layers=2, bias=False, batch_first=True, bidirectional=True)
    layer = GRU.from_torch(module, per_channel=False, granularity="tensor")
    assert (layer.num_layers, layer.bidirectional, layer.batch_first) == (2, True, True)
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    same = GRU(params, num_layers=2, bidirectional=True, batch_first=True, per_channel=False,
               granularity="tensor")  # fmt: skip
    assert layer.to_bytes() == same.to_bytes()
    cell = torch.nn.LSTMCell(5, 7)
    cell_params = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    assert LSTMCell.from_torch(cell).to_bytes() == LSTMCell(**cell_params).to_bytes()
    with pytest.raises(ValueError, match="proj_size"):
        LSTM.from_torch(torch.nn.LSTM(5, 7, proj_size=3))


def test_wrong_gate_counts_are_refused():
    gru_params = _params("GRU", hid=6)  # 18 rows: 3 gates of 6, not 4
    lstm_params = _params("LSTM", hid=4)  # 16 rows: 4 gates of 4, not 3
    with pytest.raises(ValueError, match="weight_"):
        LSTM(gru_params)
    with pytest.raises(ValueError, match="gate"):
        GRU(lstm_params)
    with pytest.raises(ValueError, match="gate"):
        LSTM(gru_params, hidden_size=6)
    with pytest.raises(ValueError, match="weight_"):
        LSTMCell(gru_params["weight_ih_l0"], gru_params["weight_hh_l0"])
    with pytest.raises(ValueError, match="gate"):
        GRUCell(lstm_params["weight_ih_l0"], lstm_params["weight_hh_l0"])
    # rows that no gate count explains
    with pytest.raises(ValueError, match="gate"):
        LSTMCell(np.ones((10, 3), F32), np.ones((10, 2), F32))
    with pytest.raises(ValueError, match="gate"):
        GRU({"weight_ih_l0": np.ones((7, 3), F32), "weight_hh_l0": np.ones((7, 2), F32)})


def test_wrong_gate_count_message_names_the_gate_count():
    gru_params = _params("GRU", hid=4)
    with pytest.raises(ValueError, match="gate"):
        LSTM(gru_params)


def test_missing_extra_and_misshapen_parameters():
    p = _params("LSTM", layers=2, bidirectional=True)
    LSTM(p, num_layers=2, bidirectional=True, input_size=5, hidden_size=4)
    with pytest.raises(ValueError, match="lack 'weight_hh_l1'"):
        LSTM({k: v for k, v in p.items() if k != "weight_hh_l1"}, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="lack 'weight_ih_l0_reverse'"):
        LSTM(_params("LSTM"), bidirectional=True)
    with pytest.raises(ValueError, match="lack 'weight_ih_l2'"):
        LSTM(p, num_layers=3, bidirectional=True)
    with pytest.raises(ValueError, match=r"not understood: \[.*'weight_ih_l1'"):
        LSTM(p, num_layers=1, bidirectional=True)
    with pytest.raises(ValueError, match=r"not understood: \['extra'\]"):
        LSTM({**p, "extra": np.ones(3)}, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="proj_size"):
        LSTM({**_params("LSTM"), "weight_hr_l0": np.ones((2, 4), F32)})
    with pytest.raises(ValueError, match=r"bias_ih_l0 must have shape \(16,\)"):
        LSTM({**_params("LSTM"), "bias_ih_l0": np.ones(15, F32)})
    with pytest.raises(ValueError, match=r"input_size = 6"):
        LSTM(_params("LSTM"), input_size=6)
    with pytest.raises(ValueError, match=r"weight_ih_l1_reverse has shape \(16, 5\)"):
        bad = dict(p)
        bad["weight_ih_l1_reverse"] = np.ones((16, 5), F32)  # layer 1 takes 2 * hidden = 8
        LSTM(bad, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="weight_hh"):
        GRU({**_params("GRU"), "weight_hh_l0": np.ones((12, 5), F32)})
    with pytest.raises(ValueError, match="num_layers"):
        GRU(_params("GRU"), num_layers=0)
    with pytest.raises(TypeError, match="mapping"):
        LSTM([("weight_ih_l0", np.ones((4, 1)))])
    with pytest.raises(TypeError, match="weight_ih"):
        LSTM({**_params("LSTM"), "weight_ih_l0": np.ones((16, 5), np.int32)})
    with pytest.raises(ValueError, match="granularity"):
        GRU(_params("GRU"), granularity="col")
    # bias-free and half-biased parameter sets are fine
    lstm = LSTM({k: v for k, v in _params("LSTM").items() if k != "bias_hh_l0"})
    assert lstm(np.ones((2, 1, 5), F32))[0].shape == (2, 1, 4)


def test_bad_call_arguments():
    lstm = LSTM(_params("LSTM"))
    gru = GRU(_params("GRU"))
    x = np.ones((3, 2, 5), F32)
    with pytest.raises(ValueError, match="input_size = 5"):
        lstm(np.ones((3, 2, 4), F32))
    with pytest.raises(ValueError, match="3-D"):
        lstm(np.ones(5, F32))
    with pytest.raises(ValueError, match="3-D"):
        gru(np.ones((1, 3, 2, 5), F32))
    with pytest.raises(TypeError, match="input"):
        lstm(np.ones((3, 2, 5), np.int64))
    with pytest.raises(TypeError, match="tuple"):
        lstm(x, np.zeros((1, 2, 4), F32))
    with pytest.raises(ValueError, match=re.escape("h_0 must have shape (1, 2, 4), got (1, 3, 4)")):
        lstm(x, (np.zeros((1, 3, 4), F32), np.zeros((1, 2, 4), F32)))
    with pytest.raises(ValueError, match="c_0 must have shape"):
        lstm(x, (np.zeros((1, 2, 4), F32), np.zeros((2, 2, 4), F32)))
    with pytest.raises(ValueError, match=re.escape("h_0 must have shape (1, 4)")):
        gru(np.ones((3, 5), F32), np.zeros((1, 1, 4), F32))
    with pytest.raises(ValueError, match="NaN"):
        gru(np.full((3, 2, 5), np.nan, F32))
    cell = LSTMCell(np.ones((16, 5), F32), np.ones((16, 4), F32))
    with pytest.raises(ValueError, match=re.escape("input must have shape (batch, 5) or (5,)")):
        cell(np.ones((2, 4), F32))
    with pytest.raises(ValueError, match=re.escape("c_0 must have shape (2, 4)")):
        cell(np.ones((2, 5), F32), (np.zeros((2, 4), F32), np.zeros((3, 4), F32)))
    gcell = GRUCell(np.ones((12, 5), F32), np.ones((12, 4), F32))
    with pytest.raises(ValueError, match=re.escape("hx must have shape (4,)")):
        gcell(np.ones(5, F32), np.zeros((1, 4), F32))


def test_corrupt_recurrent_bytes():
    lstm = LSTM(_params("LSTM", layers=2), num_layers=2)
    blob = lstm.to_bytes()
    with pytest.raises(TypeError):
        LSTM.from_bytes(None)
    with pytest.raises(ValueError, match="LSTM bytes"):
        LSTM.from_bytes(blob[:-3])
    bad = bytearray(blob)
    bad[-1] ^= 1  # in the data: only the checksum can tell
    with pytest.raises(ValueError, match="checksum"):
        LSTM.from_bytes(bytes(bad))
    with pytest.raises(ValueError, match="holds a 'LSTM', not a 'GRU'"):
        GRU.from_bytes(blob)
    with pytest.raises(ValueError, match="holds a 'LSTM', not a 'LSTMCell'"):
        LSTMCell.from_bytes(blob)
    cell = GRUCell(np.ones((12, 5), F32), np.ones((12, 4), F32))
    with pytest.raises(ValueError, match="GRUCell bytes"):
        GRUCell.from_bytes(cell.to_bytes()[:20])
    # a consistent (sealed) container whose contents are wrong: a layer's weights missing
    from dynaq import _dynaq

    weights, tensors, meta = _dynaq.read_blob(blob, "LSTM")
    config = {"dynaq.config": meta["dynaq.config"]}
    del weights["weight_hh_l1"]
    with pytest.raises(ValueError, match="LSTM bytes: .*lack 'weight_hh_l1'"):
        LSTM.from_bytes(_dynaq.write_blob("LSTM", weights, tensors, config))
    config2 = json.loads(meta["dynaq.config"])
    del config2["num_layers"]
    weights, tensors, _ = _dynaq.read_blob(blob, "LSTM")
    with pytest.raises(ValueError, match="LSTM bytes: .*num_layers"):
        LSTM.from_bytes(
            _dynaq.write_blob("LSTM", weights, tensors, {"dynaq.config": json.dumps(config2)})
        )
    c_weights, c_tensors, c_meta = _dynaq.read_blob(cell.to_bytes(), "GRUCell")
    del c_weights["weight_ih"]
    c_config = {"dynaq.config": c_meta["dynaq.config"]}
    with pytest.raises(ValueError, match="GRUCell bytes: .*weight_ih"):
        GRUCell.from_bytes(_dynaq.write_blob("GRUCell", c_weights, c_tensors, c_config))


def test_empty_batch_gives_empty_outputs():
    lstm = LSTM(_params("LSTM"))
    out, (h, c) = lstm(np.zeros((3, 0, 5), F32))
    assert out.shape == (3, 0, 4) and h.shape == (1, 0, 4)
