"""dynaq.linear: the fused dynamic-quantization linear layer, bit-exact against its definition."""

from __future__ import annotations

import threading

import dynaq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refimpl import linear_ref, pack_weight_ref
from util import assert_bitwise_equal, bits, run_on_each_isa

F32 = np.float32


def _data(shape, seed, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + offset).astype(F32)


def expected(x, pw, bias=None, granularity="row"):
    values, scales = pw.unpack()
    return linear_ref(x, values, scales, bias, granularity)


def assert_linear_exact(y, x, pw, bias=None, granularity="row"):
    want = expected(x, pw, bias, granularity)
    assert y.dtype == np.float32
    assert y.shape == want.shape, (y.shape, want.shape)
    # bias=None may give +0.0 where "+ 0" would or -0.0 where it is skipped: compare values.
    if bias is None:
        np.testing.assert_array_equal(y, want)
    else:
        assert_bitwise_equal(y, want)


MKN = [
    (1, 1, 1),
    (1, 2, 3),
    (2, 3, 1),
    (3, 5, 7),
    (4, 8, 9),
    (5, 9, 2),
    (6, 7, 8),
    (7, 4, 5),
    (8, 6, 4),
    (9, 1, 6),
    (1, 15, 16),
    (15, 16, 17),
    (16, 17, 15),
    (17, 31, 32),
    (2, 32, 33),
    (31, 33, 31),
    (32, 63, 64),
    (33, 64, 65),
    (3, 65, 63),
    (65, 17, 9),
    (64, 64, 64),
    (5, 3001, 17),
    (2, 4099, 33),
]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mkn", MKN, ids=str)
def test_exact_per_row(isa, mkn, with_bias):
    m, k, n = mkn
    x = _data((m, k), seed=m * 7919 + k * 31 + n, scale=2.0, offset=0.3)
    w = _data((n, k), seed=k * 13 + n, scale=0.05)
    b = _data((n,), seed=n, scale=0.5) if with_bias else None
    pw = dynaq.pack_weight(w)
    y = dynaq.linear(x, pw, b)
    assert_linear_exact(y, x, pw, b)


@pytest.mark.parametrize("per_channel", [True, False], ids=["w_channel", "w_tensor"])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("mkn", [(1, 9, 3), (7, 33, 17), (16, 64, 65), (40, 130, 47)], ids=str)
def test_exact_granularities(isa, mkn, granularity, per_channel):
    m, k, n = mkn
    rng = np.random.default_rng(k)
    # Rows with very different ranges make row and tensor granularity differ.
    x = (_data((m, k), seed=1) * rng.uniform(0.01, 20, (m, 1))).astype(F32)
    w = _data((n, k), seed=2, scale=0.2)
    b = _data((n,), seed=3)
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    y = dynaq.linear(x, pw, b, granularity=granularity)
    assert_linear_exact(y, x, pw, b, granularity)


def test_default_granularity_is_row():
    x = (_data((6, 20), seed=1) * np.arange(1, 7, dtype=F32)[:, None]).astype(F32)
    pw = dynaq.pack_weight(_data((5, 20), seed=2))
    assert_bitwise_equal(dynaq.linear(x, pw), dynaq.linear(x, pw, granularity="row"))
    assert_linear_exact(dynaq.linear(x, pw), x, pw)


@pytest.mark.parametrize(
    "x_shape", [(4,), (2, 3, 33), (1, 1, 33), (2, 2, 2, 33), (3, 1, 33)], ids=str
)
def test_batched_and_1d_inputs(isa, x_shape):
    k = x_shape[-1] if len(x_shape) > 1 else 4
    x = _data(x_shape if len(x_shape) > 1 else (k,), seed=5, scale=3.0)
    pw = dynaq.pack_weight(_data((17, k), seed=6, scale=0.1))
    b = _data((17,), seed=7)
    y = dynaq.linear(x, pw, b)
    assert y.shape == x.shape[:-1] + (17,)
    assert_linear_exact(y, x, pw, b)
    flat = dynaq.linear(x.reshape(-1, k), pw, b)
    assert_bitwise_equal(y.reshape(-1, 17), flat)
    # per tensor: one scale over the whole batch
    yt = dynaq.linear(x, pw, b, granularity="tensor")
    assert_linear_exact(yt, x, pw, b, "tensor")


def test_rows_are_independent(isa):
    rng = np.random.default_rng(8)
    x = (_data((37, 70), seed=9) * rng.uniform(0.001, 1000, (37, 1))).astype(F32)
    x[5] = 0.0
    x[6] = np.abs(x[6])
    x[7] = -np.abs(x[7])
    pw = dynaq.pack_weight(_data((29, 70), seed=10))
    b = _data((29,), seed=11)
    y = dynaq.linear(x, pw, b)
    for i in range(x.shape[0]):
        assert_bitwise_equal(y[i], dynaq.linear(x[i : i + 1], pw, b)[0], err_msg=f"row {i}")
        assert_bitwise_equal(y[i], dynaq.linear(x[i], pw, b), err_msg=f"row {i} (1-D)")
    # and a row's result does not change when other rows change
    x2 = x.copy()
    x2[0] *= 1e6
    y2 = dynaq.linear(x2, pw, b)
    assert_bitwise_equal(y2[1:], y[1:])


@pytest.mark.parametrize("mkn", [(16, 256, 64), (50, 512, 33), (1, 1024, 100)], ids=str)
def test_accuracy_vs_float(isa, mkn):
    m, k, n = mkn
    x = _data((m, k), seed=12)
    w = _data((n, k), seed=13, scale=1 / np.sqrt(k))
    b = _data((n,), seed=14, scale=0.1)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    for weight in (dynaq.pack_weight(w), w):
        y = dynaq.linear(x, weight, b)
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert rel < 2e-2, rel


def test_float_weight_is_packed_per_channel(isa):
    x = _data((9, 45), seed=15, scale=4.0)
    w = _data((12, 45), seed=16, scale=0.3)
    w[3] *= 50
    b = _data((12,), seed=17)
    y = dynaq.linear(x, w, b)
    assert_bitwise_equal(y, dynaq.linear(x, dynaq.pack_weight(w), b))
    v, s = pack_weight_ref(w)
    assert_bitwise_equal(y, linear_ref(x, v, s, b))
    # float64 weights are converted too
    assert_bitwise_equal(dynaq.linear(x, w.astype(np.float64), b), y)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_converted(isa, dtype):
    x = _data((5, 40), seed=18, scale=3.0).astype(dtype)
    pw = dynaq.pack_weight(_data((7, 40), seed=19))
    b = _data((7,), seed=20)
    y = dynaq.linear(x, pw, b)
    assert y.dtype == np.float32
    assert_bitwise_equal(y, dynaq.linear(x.astype(F32), pw, b))
    assert_bitwise_equal(dynaq.linear(x.astype(F32), pw, b.astype(np.float64)), y)


def _exactness_case():
    """Values that hit 0/255 (activations) and +-127 (weights), with K = 2**20."""
    k = 1 << 20
    x = np.empty((2, k), F32)
    x[0] = 1000.0
    x[0, ::1001] = -1000.0  # mostly 255 after quantization, a few 0
    x[1, 0::2] = 1000.0
    x[1, 1::2] = -1000.0
    x[1, 7] = 999.5
    w = np.empty((3, k), F32)
    w[0] = 1.0
    w[1] = -1.0
    w[2, 0::2] = 0.5
    w[2, 1::2] = -0.5
    w[2, 3::4] = 0.25
    return x, w


def test_exact_with_k_2_pow_20(isa):
    x, w = _exactness_case()
    pw = dynaq.pack_weight(w)
    values, _ = pw.unpack()
    assert values[0].min() == 127 and values[1].max() == -127
    b = np.array([0.25, -3.0, 1e3], F32)
    for m in (1, 2):
        for n in (1, 2, 3):
            wn = dynaq.PackedWeight.from_quantized(*[a[:n] for a in pw.unpack()])
            y = dynaq.linear(x[:m], wn, b[:n])
            assert_linear_exact(y, x[:m], wn, b[:n])
    # The accumulators are far beyond int32 here.
    assert 255 * 127 * (1 << 20) > 2**31


def test_extreme_activation_magnitudes(isa):
    """Rows whose range overflows float32, subnormal rows, constant and zero rows."""
    k = 37
    rng = np.random.default_rng(60)
    rows = [
        np.linspace(-3e38, 3e38, k),
        np.full(k, 3.4e38),
        np.linspace(-1e38, 2e37, k),
        rng.uniform(-1e-40, 1e-40, k),
        np.full(k, 1e-45),
        np.zeros(k),
        np.full(k, -2.5),
        rng.uniform(-1e30, 1e30, k),
        rng.uniform(-1e-30, 1e-30, k),
    ]
    x = np.array(rows, dtype=F32)
    pw = dynaq.pack_weight(_data((11, k), seed=61, scale=1e-3))
    b = _data((11,), seed=62)
    for granularity in ("row", "tensor"):
        with np.errstate(over="ignore"):
            want = expected(x, pw, b, granularity)
        y = dynaq.linear(x, pw, b, granularity=granularity)
        assert_bitwise_equal(y, want)
    y = dynaq.linear(x, pw, b)
    for i in range(len(rows)):
        assert_bitwise_equal(dynaq.linear(x[i], pw, b), y[i], err_msg=f"row {i}")


def test_exact_with_k_just_above_chunk(isa):
    k = 65536 + 3
    x = np.full((2, k), 7.0, F32)
    x[:, 1] = -7.0
    x[1, 2::5] = -7.0
    w = np.ones((5, k), F32)
    w[1] = -1
    w[2, ::2] = -1
    w[3] = _data((k,), seed=21)
    w[4] = 0
    pw = dynaq.pack_weight(w)
    b = _data((5,), seed=22)
    assert_linear_exact(dynaq.linear(x, pw, b), x, pw, b)


# --- out= -----------------------------------------------------------------------------------


def test_out_parameter(isa):
    x = _data((3, 4, 21), seed=23)
    pw = dynaq.pack_weight(_data((6, 21), seed=24))
    b = _data((6,), seed=25)
    out = np.full((3, 4, 6), np.nan, F32)
    r = dynaq.linear(x, pw, b, out=out)
    assert r is out
    assert_bitwise_equal(out, dynaq.linear(x, pw, b))
    out2 = np.empty((12, 6), F32)
    assert dynaq.linear(x.reshape(12, 21), pw, b, out=out2) is out2
    assert_bitwise_equal(out2, out.reshape(12, 6))


@pytest.mark.parametrize(
    "make_out, exc",
    [
        (lambda: np.empty((4, 6), np.float64), (TypeError, ValueError)),
        (lambda: np.empty((4, 6), np.float16), (TypeError, ValueError)),
        (lambda: np.empty((4, 6), np.int32), (TypeError, ValueError)),
        (lambda: np.empty((4, 7), F32), ValueError),
        (lambda: np.empty((6, 4), F32), ValueError),
        (lambda: np.empty((24,), F32), ValueError),
        (lambda: np.empty((1, 4, 6), F32), ValueError),
        (lambda: np.empty((4, 12), F32)[:, ::2], ValueError),
        (lambda: np.empty((6, 4), F32).T, ValueError),
        (lambda: np.empty((4, 6), F32, order="F"), ValueError),
    ],
    ids=[
        "f64",
        "f16",
        "i32",
        "cols",
        "swapped",
        "flat",
        "extra_dim",
        "strided",
        "transposed",
        "fortran",
    ],
)
def test_out_invalid(make_out, exc):
    x = _data((4, 10), seed=26)
    pw = dynaq.pack_weight(_data((6, 10), seed=27))
    with pytest.raises(exc):
        dynaq.linear(x, pw, out=make_out())


def test_out_not_array_rejected():
    x = _data((2, 3), seed=1)
    pw = dynaq.pack_weight(_data((2, 3), seed=2))
    with pytest.raises((TypeError, ValueError)):
        dynaq.linear(x, pw, out=[[0.0, 0.0], [0.0, 0.0]])


# --- shapes and layouts ---------------------------------------------------------------------


def test_zero_size_shapes(isa):
    pw = dynaq.pack_weight(_data((5, 8), seed=28))
    b = _data((5,), seed=29)
    assert dynaq.linear(np.zeros((0, 8), F32), pw, b).shape == (0, 5)
    assert dynaq.linear(np.zeros((2, 0, 8), F32), pw).shape == (2, 0, 5)
    empty_out = dynaq.linear(np.zeros((3, 8), F32), dynaq.pack_weight(np.zeros((0, 8), F32)))
    assert empty_out.shape == (3, 0) and empty_out.dtype == np.float32
    # K = 0: the product is empty, so the result is the bias (or zeros).
    w0 = dynaq.pack_weight(np.zeros((4, 0), F32))
    b4 = _data((4,), seed=30)
    y = dynaq.linear(np.zeros((3, 0), F32), w0, b4)
    assert y.shape == (3, 4)
    assert_bitwise_equal(y, np.broadcast_to(b4, (3, 4)))
    y = dynaq.linear(np.zeros((3, 0), F32), w0)
    np.testing.assert_array_equal(y, np.zeros((3, 4), F32))
    y = dynaq.linear(np.zeros((3, 0), F32), np.zeros((4, 0), F32), b4, granularity="tensor")
    assert_bitwise_equal(y, np.broadcast_to(b4, (3, 4)))


def test_noncontiguous_inputs(isa):
    base = _data((20, 70), seed=31, scale=2.0)
    wbase = _data((30, 70), seed=32)
    pw = dynaq.pack_weight(np.ascontiguousarray(wbase[::3, 10:60:2][:, :25]))
    b_base = _data((40,), seed=33)
    b = b_base[::4]
    views = [base[::2, 5:30], base[::-1, -25:], np.asfortranarray(base[:7, :25]), base.T[:25].T]
    for x in views:
        assert x.shape[-1] == 25
        y = dynaq.linear(x, pw, b)
        assert_bitwise_equal(y, dynaq.linear(np.ascontiguousarray(x), pw, np.ascontiguousarray(b)))
    # a non-contiguous float weight as well
    wv = wbase[::-3, 10:60:2][:, :25]
    x = np.ascontiguousarray(base[:4, :25])
    assert_bitwise_equal(dynaq.linear(x, wv), dynaq.linear(x, np.ascontiguousarray(wv)))
    # 3-D non-contiguous
    x3 = _data((4, 6, 50), seed=34)[:, ::2, ::2]
    assert_bitwise_equal(dynaq.linear(x3, pw), dynaq.linear(np.ascontiguousarray(x3), pw))


def test_inputs_not_modified():
    x = _data((5, 12), seed=35)
    w = _data((4, 12), seed=36)
    b = _data((4,), seed=37)
    copies = [a.copy() for a in (x, w, b)]
    dynaq.linear(x, w, b)
    for a, c in zip((x, w, b), copies):
        assert_bitwise_equal(a, c)


# --- paths and threads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mkn", [(1, 1, 1), (7, 33, 65), (33, 300, 129), (65, 1000, 47), (2, 70001, 3)], ids=str
)
def test_every_path_bitwise_equal(mkn):
    m, k, n = mkn
    x = _data((m, k), seed=38, scale=5.0, offset=1.0)
    w = _data((n, k), seed=39)
    b = _data((n,), seed=40)
    pw = dynaq.pack_weight(w)
    for gran in ("row", "tensor"):
        res = run_on_each_isa(lambda g=gran: dynaq.linear(x, pw, b, granularity=g))
        for name, y in res.items():
            assert_bitwise_equal(y, res["scalar"], err_msg=f"{name} vs scalar ({gran})")
        assert_linear_exact(res["scalar"], x, pw, b, gran)


@pytest.mark.parametrize(
    "mkn",
    [(96, 600, 300), (300, 1000, 33)],  # the second one quantizes x on several threads too
    ids=str,
)
def test_thread_count_independent(isa, mkn):
    m, k, n = mkn
    x = _data((m, k), seed=41, scale=3.0)
    x[::7] *= 100
    pw = dynaq.pack_weight(_data((n, k), seed=42))
    b = _data((n,), seed=43)
    for granularity in ("row", "tensor"):
        outs = []
        for t in (1, 2, 3):
            dynaq.set_num_threads(t)
            assert dynaq.get_num_threads() == t
            outs.append(dynaq.linear(x, pw, b, granularity=granularity))
        for o in outs[1:]:
            assert_bitwise_equal(o, outs[0])
        assert_linear_exact(outs[0], x, pw, b, granularity)


def test_concurrent_calls_from_python_threads():
    x = _data((64, 300), seed=44)
    pw = dynaq.pack_weight(_data((130, 300), seed=45))
    want = dynaq.linear(x, pw)
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(5):
                assert_bitwise_equal(dynaq.linear(x, pw), want)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int8, np.uint8, bool, np.complex64, object], ids=str
)
def test_wrong_dtypes_are_type_errors_naming_the_argument(dtype):
    x = _data((3, 4), seed=1)
    w = _data((5, 4), seed=2)
    b = _data((5,), seed=3)
    pw = dynaq.pack_weight(w)
    with pytest.raises(TypeError, match="x"):
        dynaq.linear(x.astype(dtype), pw, b)
    with pytest.raises(TypeError, match="weight"):
        dynaq.linear(x, w.astype(dtype), b)
    with pytest.raises(TypeError, match="bias"):
        dynaq.linear(x, pw, b.astype(dtype))


def test_str_array_is_type_error():
    pw = dynaq.pack_weight(_data((2, 2), seed=1))
    with pytest.raises(TypeError, match="x"):
        dynaq.linear(np.array([["a", "b"]]), pw)


@pytest.mark.parametrize(
    "x_shape, w_shape",
    [((4, 7), (3, 8)), ((7,), (3, 8)), ((2, 3, 7), (3, 8)), ((4, 8), (8, 4))],
    ids=str,
)
def test_shape_mismatch_is_value_error_with_both_shapes(x_shape, w_shape):
    x = np.ones(x_shape, F32)
    w = np.ones(w_shape, F32)
    if x_shape[-1] == w_shape[1]:
        pytest.skip("not a mismatch")
    for weight in (w, dynaq.pack_weight(w)):
        with pytest.raises(ValueError) as e:
            dynaq.linear(x, weight)
        msg = str(e.value)
        assert str(x_shape) in msg and str(w_shape) in msg, msg


def test_transposed_weight_mismatch_message():
    x = np.ones((4, 8), F32)
    w = np.ones((8, 3), F32)  # (in, out) by mistake
    with pytest.raises(ValueError) as e:
        dynaq.linear(x, dynaq.pack_weight(w))
    assert "(4, 8)" in str(e.value) and "(8, 3)" in str(e.value), str(e.value)


@pytest.mark.parametrize("bias_shape", [(4,), (6,), (1, 5), (5, 1), ()], ids=str)
def test_bias_wrong_shape(bias_shape):
    pw = dynaq.pack_weight(_data((5, 3), seed=1))
    with pytest.raises(ValueError):
        dynaq.linear(np.ones((2, 3), F32), pw, np.ones(bias_shape, F32))


def test_wrong_rank():
    pw = dynaq.pack_weight(_data((5, 3), seed=1))
    with pytest.raises(ValueError):
        dynaq.linear(np.array(1.0, F32), pw)
    with pytest.raises(ValueError):
        dynaq.linear(np.ones((2, 3), F32), np.ones(3, F32))
    with pytest.raises(ValueError):
        dynaq.linear(np.ones((2, 3), F32), np.ones((2, 5, 3), F32))


def test_bad_granularity():
    pw = dynaq.pack_weight(_data((5, 3), seed=1))
    for g in ("channel", "ROW", ""):
        with pytest.raises(ValueError):
            dynaq.linear(np.ones((2, 3), F32), pw, granularity=g)


def test_weight_wrong_type():
    with pytest.raises(TypeError):
        dynaq.linear(np.ones((2, 3), F32), "weight")  # type: ignore[arg-type]


@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_activations(isa, bad, granularity):
    x = _data((4, 33), seed=48)
    x[3, 32] = bad
    pw = dynaq.pack_weight(_data((5, 33), seed=49))
    with pytest.raises(ValueError, match="NaN"):
        dynaq.linear(x, pw, granularity=granularity)
    y = dynaq.linear(x, pw, granularity=granularity, check_finite=False)
    assert y.shape == (4, 5) and y.dtype == np.float32
    if granularity == "row":
        assert_bitwise_equal(y[:3], dynaq.linear(x[:3], pw))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_float_weight(isa, bad):
    x = _data((4, 9), seed=50)
    w = _data((5, 9), seed=51)
    w[2, 3] = bad
    with pytest.raises(ValueError, match="NaN"):
        dynaq.linear(x, w)
    try:
        y = dynaq.linear(x, w, check_finite=False)
    except ValueError:
        return
    assert y.shape == (4, 5)


def test_keyword_only_arguments():
    x = np.ones((2, 3), F32)
    pw = dynaq.pack_weight(np.ones((4, 3), F32))
    with pytest.raises(TypeError):
        dynaq.linear(x, pw, None, "row")  # type: ignore[misc]


# --- properties -----------------------------------------------------------------------------

moderate = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def _linear_case(draw):
    m = draw(st.integers(1, 20))
    k = draw(st.integers(1, 80))
    n = draw(st.integers(1, 40))
    lead = draw(st.sampled_from([(), (2,)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["normal", "positive", "constant", "spiky", "tiny", "drawn"]))
    if style == "drawn":
        x = np.array(draw(st.lists(moderate, min_size=m * k, max_size=m * k)), F32)
        x = x.reshape(m, k)
    else:
        x = rng.standard_normal((m, k)).astype(F32) * F32(10 ** rng.uniform(-3, 3))
        if style == "positive":
            x = np.abs(x)
        elif style == "constant":
            x[:] = x[0, 0]
        elif style == "spiky":
            x[rng.integers(0, m), rng.integers(0, k)] = 1e4
        elif style == "tiny":
            x = (x * F32(1e-35)).astype(F32)
    x = np.broadcast_to(x, (*lead, m, k)).copy()
    w = rng.standard_normal((n, k)).astype(F32) * F32(10 ** rng.uniform(-3, 1))
    if draw(st.booleans()):
        w[rng.integers(0, n)] = 0.0
    bias = rng.standard_normal(n).astype(F32) if draw(st.booleans()) else None
    return x, w, bias, draw(st.sampled_from(["row", "tensor"])), draw(st.booleans())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=_linear_case())
def test_property_exact(isa, case):
    x, w, bias, granularity, per_channel = case
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    y = dynaq.linear(x, pw, bias, granularity=granularity)
    assert_linear_exact(y, x, pw, bias, granularity)
    if granularity == "row":
        assert_bitwise_equal(y[..., :1, :], dynaq.linear(x[..., :1, :], pw, bias))


def test_reference_uses_float32_arithmetic():
    """Sanity check of the test-suite's own reference (float32 everywhere, exact integers)."""
    x = np.array([[1.0, -2.0, 3.0]], F32)
    v = np.array([[127, -127, 5]], np.int8)
    s = np.array([0.01], F32)
    y = linear_ref(x, v, s, np.array([0.5], F32))
    assert y.dtype == np.float32
    assert bits(y).shape == (1, 1)
