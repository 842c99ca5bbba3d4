"""dynaq.dynamic_quantize_linear: bit-identical to ONNX Runtime's DynamicQuantizeLinear."""

from __future__ import annotations

import zlib

import dynaq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refimpl import dql as dql_model
from util import AVAILABLE_ISAS, run_on_each_isa

F32 = np.float32
F32_MAX = float(np.finfo(F32).max)


def assert_same_as_ort(x, ort_ref, **kwargs):
    y, s, z = dynaq.dynamic_quantize_linear(x, **kwargs)
    ey, es, ez = ort_ref.dynamic_quantize_linear(x)
    assert isinstance(s, np.float32), type(s)
    assert isinstance(z, np.uint8), type(z)
    assert y.dtype == np.uint8
    assert y.shape == np.shape(x), (y.shape, np.shape(x))
    assert np.float32(s).view(np.uint32) == np.float32(es).view(np.uint32), (s, es)
    assert z == ez, (z, ez)
    np.testing.assert_array_equal(y, ey.reshape(np.shape(x)))
    return y, s, z


def _random(shape, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.standard_normal(shape) * 3).astype(F32)
    if kind == "positive":
        return rng.uniform(0.5, 7.0, shape).astype(F32)
    if kind == "negative":
        return rng.uniform(-9.0, -0.25, shape).astype(F32)
    if kind == "skewed":
        return rng.uniform(-0.01, 50.0, shape).astype(F32)
    raise AssertionError(kind)


SHAPES = [
    (),
    (1,),
    (2,),
    (3,),
    (5,),
    (7,),
    (8,),
    (9,),
    (15,),
    (16,),
    (17,),
    (31,),
    (32,),
    (33,),
    (63,),
    (64,),
    (65,),
    (3, 5),
    (16, 17),
    (2, 3, 33),
    (4099,),
]


@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "skewed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_matches_ort(isa, ort_ref, shape, kind):
    x = _random(shape, seed=zlib.crc32(repr((shape, kind)).encode()), kind=kind)
    assert_same_as_ort(x, ort_ref)


def _ties():
    # [0, 255] -> scale 1, zero point 0: every x.5 is an exact tie of x / scale.
    a = np.array([0.0, 0.5, 1.5, 2.5, 3.5, 100.5, 101.5, 253.5, 254.5, 255.0], F32)
    # [-128, 127] -> scale 1, zero point 128.
    b = np.array([-128.0, -127.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 126.5, 127.0], F32)
    # [-127.5, 127.5] -> scale 1, zero point 127.5 rounds (half to even) to 128.
    c = np.array([-127.5, -0.5, 0.5, 127.5], F32)
    # [-2.5, 2.5]: the zero point 127.5 ties as well.
    d = np.array([-2.5, -1.25, 0.0, 1.25, 2.5], F32)
    # zero point tie with an offset range.
    e = np.array([-0.5, 254.5], F32)
    return [a, b, c, d, e]


CORNER_CASES = {
    "zeros": np.zeros(17, F32),
    "zeros_2d": np.zeros((3, 4), F32),
    "neg_zero": np.array([-0.0, -0.0], F32),
    "all_negative": np.array([-1.0, -2.0, -3.5, -0.25], F32),
    "all_negative_const": np.full(9, -1.0, F32),
    "all_positive": np.array([1.0, 2.0, 3.5, 0.25], F32),
    "all_positive_const": np.full(33, 7.0, F32),
    "single_pos": np.array([3.0], F32),
    "single_neg": np.array([-3.0], F32),
    "single_zero": np.array([0.0], F32),
    "zero_d_pos": np.array(2.5, F32),
    "zero_d_neg": np.array(-0.75, F32),
    "zero_d_zero": np.array(0.0, F32),
    "big_1e38": np.array([1e38, -1e38, 0.0, 5e37], F32),
    "pos_1e38": np.full(5, 1e38, F32),
    "overflow_range": np.array([-3e38, 3e38], F32),
    "overflow_range_mixed": np.array([-3e38, 3e38, 0.0, 1.0, -1e38, 2e38], F32),
    "float_max": np.array([-F32_MAX, F32_MAX], F32),
    "float_max_pos": np.array([F32_MAX, 0.0, 1.0], F32),
    "subnormal_min": np.array([1e-45], F32),
    "subnormal_min_neg": np.array([-1e-45], F32),
    "subnormal_pair": np.array([-1e-45, 1e-45, 0.0], F32),
    "subnormal_1e-40": np.array([1e-40, -1e-40, 0.0, 5e-41], F32),
    "subnormal_1e-40_pos": np.full(7, 1e-40, F32),
    "tiny_normal": np.array([1.2e-38, -1.1e-38], F32),
    "huge_and_tiny": np.array([1e38, 1e-45, -1e-40], F32),
    "ties_0": _ties()[0],
    "ties_1": _ties()[1],
    "ties_2": _ties()[2],
    "ties_3": _ties()[3],
    "ties_4": _ties()[4],
    "odd_17_neg": -np.arange(17, dtype=F32),
    "ramp_65": np.linspace(-1, 3, 65, dtype=F32),
}


@pytest.mark.parametrize("name", sorted(CORNER_CASES))
def test_corner_cases_match_ort(isa, ort_ref, name):
    assert_same_as_ort(CORNER_CASES[name], ort_ref)


@pytest.mark.parametrize("opset", [11, 13, 19, 21])
def test_matches_ort_across_opsets(ort_ref, opset):
    x = _random((5, 7), seed=3)
    y, s, z = dynaq.dynamic_quantize_linear(x)
    ey, es, ez = ort_ref.dynamic_quantize_linear(x, opset=opset)
    assert (s, z) == (es, ez)
    np.testing.assert_array_equal(y, ey)


def test_large_matches_ort(isa, ort_ref):
    # 2M elements: large enough for the multi-threaded min/max and quantization.
    x = _random((512, 4096), seed=11)
    x[7, 9] = 11.5
    x[300, 4000] = -9.25
    assert_same_as_ort(x, ort_ref)


def test_large_skewed_matches_ort(ort_ref):
    x = _random((257, 1031), seed=12, kind="skewed")
    assert_same_as_ort(x, ort_ref)


def test_large_is_thread_count_independent(available_isas):
    x = _random((600, 1000), seed=5)
    results = []
    for n in (1, 2, 3):
        dynaq.set_num_threads(n)
        assert dynaq.get_num_threads() == n
        results.append(dynaq.dynamic_quantize_linear(x))
    for y, s, z in results[1:]:
        assert (s, z) == results[0][1:]
        np.testing.assert_array_equal(y, results[0][0])


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5), (2, 0, 4)], ids=str)
def test_empty(isa, shape):
    y, s, z = dynaq.dynamic_quantize_linear(np.zeros(shape, F32))
    assert y.shape == shape and y.dtype == np.uint8
    assert isinstance(s, np.float32) and s == 1.0
    assert isinstance(z, np.uint8) and z == 0


def test_numpy_model_agrees_with_ort(ort_ref):
    """Sanity check of the test-suite's own model (used by the quantize tests)."""
    for name, x in CORNER_CASES.items():
        ey, es, ez = ort_ref.dynamic_quantize_linear(x)
        my, ms, mz = dql_model(x)
        assert np.float32(ms).view(np.uint32) == np.float32(es).view(np.uint32), name
        assert mz == ez, name
        np.testing.assert_array_equal(my, ey.reshape(x.shape), err_msg=name)


def _views():
    base = _random((12, 34), seed=21)
    return {
        "strided": base[:, ::3],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "negative_stride": base[::-1, ::-2],
        "column": base[:, 5],
        "sliced_3d": _random((4, 6, 10), seed=22)[1:, ::2, 3:],
    }


@pytest.mark.parametrize("kind", sorted(_views()))
def test_noncontiguous_views(isa, kind):
    v = _views()[kind]
    y, s, z = dynaq.dynamic_quantize_linear(v)
    ey, es, ez = dynaq.dynamic_quantize_linear(np.ascontiguousarray(v))
    assert (s, z) == (es, ez)
    np.testing.assert_array_equal(y, ey)
    assert y.shape == v.shape


def test_every_path_agrees():
    xs = [_random((3, 4099), seed=1), _random((77,), seed=2, kind="negative")]
    for x in xs:
        per_isa = run_on_each_isa(lambda x=x: dynaq.dynamic_quantize_linear(x))
        ref = per_isa["scalar"]
        for name, (y, s, z) in per_isa.items():
            assert (s, z) == ref[1:], name
            np.testing.assert_array_equal(y, ref[0], err_msg=name)
    assert "scalar" in AVAILABLE_ISAS


@pytest.mark.parametrize(
    "x",
    [
        np.arange(6, dtype=np.int32),
        np.ones(3, dtype=bool),
        np.ones(3, dtype=np.complex64),
        np.array([1.0, 2.0], dtype=object),
        np.array(["a", "b"]),
        np.arange(4, dtype=np.uint8),
    ],
    ids=["int32", "bool", "complex64", "object", "str", "uint8"],
)
def test_wrong_dtype_is_type_error(x):
    with pytest.raises(TypeError, match="x"):
        dynaq.dynamic_quantize_linear(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("pos", [0, 16, 34])
def test_nonfinite_rejected(isa, bad, pos):
    x = _random((35,), seed=4)
    x[pos] = bad
    with pytest.raises(ValueError, match="NaN"):
        dynaq.dynamic_quantize_linear(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_unchecked_does_not_crash(isa, bad):
    x = _random((3, 21), seed=4)
    x[1, 7] = bad
    y, s, z = dynaq.dynamic_quantize_linear(x, check_finite=False)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert isinstance(s, np.float32) and isinstance(z, np.uint8)


def test_check_finite_is_keyword_only():
    with pytest.raises(TypeError):
        dynaq.dynamic_quantize_linear(np.ones(3, F32), False)  # type: ignore[misc]


def test_input_not_modified():
    x = _random((9, 13), seed=8)
    before = x.copy()
    dynaq.dynamic_quantize_linear(x)
    np.testing.assert_array_equal(x, before)


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@st.composite
def _dql_inputs(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=40))
    scale = float(np.float32(draw(st.sampled_from([1.0, 1e-3, 1e3, 1e30, 1e-30]))))
    if draw(st.booleans()):
        elements = finite_f32
    else:
        elements = st.floats(-scale, scale, width=32, allow_nan=False, allow_infinity=False)
    return draw(hnp.arrays(F32, shape, elements=elements))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(x=_dql_inputs())
def test_property_matches_ort(isa, ort_ref, x):
    assert_same_as_ort(x, ort_ref)
