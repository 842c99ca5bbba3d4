"""dynaq.matmul_integer: exactly ONNX MatMulInteger, with exact int32 results or OverflowError."""

from __future__ import annotations

import dynaq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refimpl import matmul_integer_ref
from util import run_on_each_isa

U8, I8 = np.uint8, np.int8
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DTYPE_PAIRS = [(U8, U8), (U8, I8), (I8, U8), (I8, I8)]
PAIR_IDS = ["u8u8", "u8s8", "s8u8", "s8s8"]


def rand_int8(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=np.int64).astype(dtype)


def check(a, b, za=None, zb=None, ort_ref=None):
    """dynaq against the int64 reference, and against ONNX Runtime when given (and exact for
    these operand types on this CPU: see ``OrtRef.matmul_integer_is_exact``)."""
    got = dynaq.matmul_integer(a, b, za, zb)
    want = matmul_integer_ref(a, b, za, zb)
    # 1-D @ 1-D gives a 0-d result: a 0-d array or a numpy int32 scalar (as np.matmul) will do.
    assert isinstance(got, (np.ndarray, np.int32)), type(got)
    assert got.dtype == np.int32
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    if ort_ref is not None and ort_ref.matmul_integer_is_exact(a.dtype.name, b.dtype.name):
        np.testing.assert_array_equal(got, ort_ref.matmul_integer(a, b, za, zb))
    return got


MKN = [
    (1, 1, 1),
    (1, 7, 1),
    (3, 5, 4),
    (2, 9, 8),
    (7, 15, 16),
    (5, 16, 17),
    (9, 17, 9),
    (4, 31, 33),
    (3, 32, 64),
    (8, 33, 65),
    (2, 63, 31),
    (6, 64, 15),
    (3, 65, 63),
    (17, 128, 48),
    (2, 3001, 5),
]


def test_exact_where_onnxruntime_saturates(ort_ref):
    """uint8 x int8 products at the extremes, where a ``vpmaddubsw`` kernel (ONNX Runtime's on
    x86-64 CPUs without VNNI) saturates each pair to int16: dynaq is exact on every path."""
    a = np.full((2, 64), 255, U8)
    b = np.full((64, 3), -128, I8)
    want = np.full((2, 3), 255 * -128 * 64, np.int32)
    for isa, got in run_on_each_isa(lambda: dynaq.matmul_integer(a, b)).items():
        np.testing.assert_array_equal(got, want, err_msg=isa)
    ort = ort_ref.matmul_integer(a, b)
    assert ort_ref.matmul_integer_is_exact("uint8", "int8") == bool(np.array_equal(ort, want))


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mkn", MKN, ids=str)
def test_matches_ort(isa, ort_ref, mkn, dtypes):
    m, k, n = mkn
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    a = rand_int8(rng, (m, k), dtypes[0])
    b = rand_int8(rng, (k, n), dtypes[1])
    check(a, b, ort_ref=ort_ref)
    za = rand_int8(rng, (), dtypes[0])
    zb = rand_int8(rng, (), dtypes[1])
    check(a, b, za, zb, ort_ref=ort_ref)
    zb_col = rand_int8(rng, (n,), dtypes[1])
    check(a, b, za, zb_col, ort_ref=ort_ref)
    check(a, b, None, zb_col, ort_ref=ort_ref)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mkn", [(1, 3, 2), (5, 17, 9), (33, 65, 31), (4, 300, 70)], ids=str)
def test_per_row_a_zero_point(isa, mkn, dtypes):
    m, k, n = mkn
    rng = np.random.default_rng(k)
    a = rand_int8(rng, (m, k), dtypes[0])
    b = rand_int8(rng, (k, n), dtypes[1])
    za = rand_int8(rng, (m,), dtypes[0])
    check(a, b, za)
    check(a, b, za, rand_int8(rng, (), dtypes[1]))
    check(a, b, za, rand_int8(rng, (n,), dtypes[1]))
    # A per-row zero point equals running each row with its own scalar zero point.
    full = dynaq.matmul_integer(a, b, za)
    for i in range(m):
        np.testing.assert_array_equal(full[i], dynaq.matmul_integer(a[i : i + 1], b, za[i])[0])


BROADCAST_SHAPES = [
    ((5,), (5, 4)),
    ((3, 5), (5,)),
    ((5,), (5,)),
    ((2, 3, 5), (5, 4)),
    ((3, 5), (2, 5, 4)),
    ((2, 3, 5), (2, 5, 4)),
    ((2, 1, 3, 5), (4, 5, 2)),
    ((1, 3, 5), (4, 5, 2)),
    ((4, 1, 2, 7), (1, 3, 7, 9)),
    ((5,), (3, 5, 2)),
    ((2, 3, 5), (5,)),
]


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_broadcasting_like_numpy(isa, ort_ref, shapes, dtypes):
    sa, sb = shapes
    rng = np.random.default_rng(len(sa) * 7 + len(sb))
    a = rand_int8(rng, sa, dtypes[0])
    b = rand_int8(rng, sb, dtypes[1])
    got = check(a, b, ort_ref=ort_ref)
    assert got.shape == np.matmul(a.astype(np.int64), b.astype(np.int64)).shape
    check(a, b, rand_int8(rng, (), dtypes[0]), rand_int8(rng, (), dtypes[1]), ort_ref=ort_ref)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_batched_zero_points(isa, ort_ref, dtypes):
    rng = np.random.default_rng(5)
    a = rand_int8(rng, (3, 4, 19), dtypes[0])
    b = rand_int8(rng, (3, 19, 17), dtypes[1])
    zb = rand_int8(rng, (3, 1, 17), dtypes[1])  # per column of each batch's b
    za = rand_int8(rng, (3, 4, 1), dtypes[0])  # per row of each batch's a
    check(a, b, None, zb, ort_ref=ort_ref)
    check(a, b, rand_int8(rng, (), dtypes[0]), zb, ort_ref=ort_ref)
    check(a, b, za)
    check(a, b, za, zb)
    # 2-D b shared by every batch, with per-column zero points of shape (N,).
    b2 = rand_int8(rng, (19, 17), dtypes[1])
    check(a, b2, None, rand_int8(rng, (17,), dtypes[1]), ort_ref=ort_ref)
    # 2-D a against a batched b, per-row zero points of shape (M,).
    check(a[0], b, rand_int8(rng, (4,), dtypes[0]))


def test_zero_point_forms_agree():
    rng = np.random.default_rng(1)
    a = rand_int8(rng, (4, 9), U8)
    b = rand_int8(rng, (9, 5), I8)
    ref = matmul_integer_ref(a, b, 7, -3)
    forms = [
        (7, -3),
        (np.uint8(7), np.int8(-3)),
        (np.array(7, U8), np.array(-3, I8)),
        (np.array([7], U8), np.array([-3], I8)),
        (np.full(4, 7, U8), np.full(5, -3, I8)),
    ]
    for za, zb in forms:
        np.testing.assert_array_equal(dynaq.matmul_integer(a, b, za, zb), ref)
    # zero points given by keyword, and None meaning 0
    np.testing.assert_array_equal(
        dynaq.matmul_integer(a, b, a_zero_point=7, b_zero_point=np.int8(-3)), ref
    )
    np.testing.assert_array_equal(dynaq.matmul_integer(a, b, None, None), matmul_integer_ref(a, b))
    np.testing.assert_array_equal(dynaq.matmul_integer(a, b), matmul_integer_ref(a, b))
    # int8 a / uint8 b with plain Python ints
    a8 = rand_int8(rng, (4, 9), I8)
    b8 = rand_int8(rng, (9, 5), U8)
    np.testing.assert_array_equal(
        dynaq.matmul_integer(a8, b8, -5, 200), matmul_integer_ref(a8, b8, -5, 200)
    )


def test_extreme_zero_points(isa, ort_ref):
    for da, db in DTYPE_PAIRS:
        ia, ib = np.iinfo(da), np.iinfo(db)
        rng = np.random.default_rng(2)
        a = rand_int8(rng, (5, 40), da)
        b = rand_int8(rng, (40, 6), db)
        for za in (ia.min, ia.max):
            for zb in (ib.min, ib.max):
                check(a, b, np.array(za, da), np.array(zb, db), ort_ref=ort_ref)


# --- overflow -------------------------------------------------------------------------------


def _const(shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


@pytest.mark.parametrize(
    "case",
    [
        # (a value, a dtype, za, b value, b dtype, zb, largest K that fits, sign)
        (255, U8, None, -128, I8, None, 65793, -1),
        (255, U8, None, 127, I8, None, 66311, 1),
        (0, U8, 255, 0, U8, 255, 33025, 1),
        (-128, I8, 127, -128, I8, 127, 33025, 1),
        (-128, I8, 127, 255, U8, 0, 33025, -1),
        (255, U8, 0, 0, U8, 255, 33025, -1),
    ],
    ids=["u8x-128", "u8x127", "u8zp_u8zp", "s8zp_s8zp", "s8zp_u8", "u8_u8zp"],
)
def test_overflow_raises_and_limit_is_exact(isa, case):
    av, da, za, bv, db, zb, kmax, sign = case
    za = None if za is None else np.array(za, da)
    zb = None if zb is None else np.array(zb, db)
    per = (av - (0 if za is None else int(za))) * (bv - (0 if zb is None else int(zb)))
    assert per * kmax <= INT32_MAX and per * kmax >= INT32_MIN
    assert not (INT32_MIN <= per * (kmax + 1) <= INT32_MAX)
    assert np.sign(per) == sign
    # K at the limit: exact.
    got = dynaq.matmul_integer(_const((2, kmax), av, da), _const((kmax, 3), bv, db), za, zb)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.full((2, 3), per * kmax, np.int64))
    # One more: OverflowError, never a wrapped value.
    with pytest.raises(OverflowError):
        dynaq.matmul_integer(_const((2, kmax + 1), av, da), _const((kmax + 1, 3), bv, db), za, zb)


def test_overflow_spec_example(isa):
    a = np.full((1, 70000), 255, U8)
    b = np.full((70000, 1), -128, I8)
    with pytest.raises(OverflowError):
        dynaq.matmul_integer(a, b)


def test_overflow_in_one_element_only(isa):
    k = 70000
    a = np.zeros((3, k), U8)
    a[1] = 255
    b = np.zeros((k, 17), I8)
    b[:, 11] = -128
    b[:, 3] = 1
    with pytest.raises(OverflowError):
        dynaq.matmul_integer(a, b)
    # Without the overflowing column everything fits and is exact.
    b[:, 11] = 0
    check(a, b)


def test_overflow_in_one_batch_only(isa):
    k = 70000
    a = np.zeros((3, 1, k), U8)
    a[2] = 255
    b = np.full((k, 2), -128, I8)
    with pytest.raises(OverflowError):
        dynaq.matmul_integer(a, b)


def test_large_intermediates_that_cancel_are_exact(isa):
    # (a - za) = 0 everywhere although a * b alone would be far outside int32.
    k = 70000
    a = np.full((2, k), 255, U8)
    b = np.full((k, 3), -128, I8)
    got = dynaq.matmul_integer(a, b, np.uint8(255))
    np.testing.assert_array_equal(got, np.zeros((2, 3), np.int32))
    # b - zb = 0 likewise
    got = dynaq.matmul_integer(a, b, None, np.int8(-128))
    np.testing.assert_array_equal(got, np.zeros((2, 3), np.int32))


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_long_k_random_exact(isa, dtypes):
    # K above 65536: the reduction is split, and must still be exact.
    rng = np.random.default_rng(9)
    k = 65536 + 4099
    a = rand_int8(rng, (2, k), dtypes[0])
    b = rand_int8(rng, (k, 5), dtypes[1])
    check(a, b)
    check(a, b, rand_int8(rng, (2,), dtypes[0]), rand_int8(rng, (5,), dtypes[1]))


# --- shapes, layouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sa, sb, out_shape",
    [
        ((0, 5), (5, 3), (0, 3)),
        ((4, 0), (0, 3), (4, 3)),
        ((4, 5), (5, 0), (4, 0)),
        ((0, 4, 5), (5, 3), (0, 4, 3)),
        ((2, 0, 5), (2, 5, 3), (2, 0, 3)),
        ((0,), (0, 3), (3,)),
        ((0,), (0,), ()),
    ],
    ids=str,
)
def test_zero_size(isa, sa, sb, out_shape):
    a = np.zeros(sa, U8)
    b = np.zeros(sb, I8)
    got = dynaq.matmul_integer(a, b)
    assert got.shape == out_shape and got.dtype == np.int32
    np.testing.assert_array_equal(got, 0)
    got = dynaq.matmul_integer(a, b, np.uint8(3), np.int8(-2))
    assert got.shape == out_shape
    np.testing.assert_array_equal(got, 0)


def test_noncontiguous_operands(isa):
    rng = np.random.default_rng(4)
    a_base = rand_int8(rng, (10, 40), U8)
    b_base = rand_int8(rng, (40, 24), I8)
    a_views = [a_base[::2, 3:36], a_base[::-1, -34:-1], np.asfortranarray(a_base[:5, :33])]
    b_views = [b_base[:, ::2][:33, :12].copy(order="F"), b_base[::-1][:33, ::-2], b_base.T.T[:33]]
    for a in a_views:
        for b in b_views:
            za = rand_int8(rng, (a.shape[0],), U8)[::-1]
            zb = rand_int8(rng, (2 * b.shape[1],), I8)[::2]
            got = dynaq.matmul_integer(a, b, za, zb)
            want = dynaq.matmul_integer(
                np.ascontiguousarray(a),
                np.ascontiguousarray(b),
                np.ascontiguousarray(za),
                np.ascontiguousarray(zb),
            )
            np.testing.assert_array_equal(got, want)
            check(a, b, za, zb)


def test_inputs_not_modified():
    rng = np.random.default_rng(3)
    a = rand_int8(rng, (7, 20), I8)
    b = rand_int8(rng, (20, 9), U8)
    za, zb = np.int8(-5), rand_int8(rng, (9,), U8)
    copies = [v.copy() for v in (a, b, zb)]
    dynaq.matmul_integer(a, b, za, zb)
    for v, c in zip((a, b, zb), copies):
        np.testing.assert_array_equal(v, c)


def test_every_path_agrees():
    rng = np.random.default_rng(8)
    for da, db in DTYPE_PAIRS:
        a = rand_int8(rng, (2, 37, 1001), da)
        b = rand_int8(rng, (1001, 67), db)
        za = rand_int8(rng, (2, 37, 1), da)
        zb = rand_int8(rng, (67,), db)
        res = run_on_each_isa(lambda a=a, b=b, za=za, zb=zb: dynaq.matmul_integer(a, b, za, zb))
        for name, r in res.items():
            np.testing.assert_array_equal(r, res["scalar"], err_msg=name)


def test_thread_count_independent(isa):
    rng = np.random.default_rng(12)
    a = rand_int8(rng, (4, 96, 700), U8)
    b = rand_int8(rng, (700, 130), I8)
    outs = []
    for n in (1, 2, 3):
        dynaq.set_num_threads(n)
        outs.append(dynaq.matmul_integer(a, b, np.uint8(17), np.int8(3)))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    check(a, b, np.uint8(17), np.int8(3))


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int16, np.int32, np.uint16, bool, np.complex64]
)
def test_non_int8_operands_are_type_errors(dtype):
    good_a = np.ones((3, 4), U8)
    good_b = np.ones((4, 2), I8)
    with pytest.raises(TypeError):
        dynaq.matmul_integer(good_a.astype(dtype), good_b)
    with pytest.raises(TypeError):
        dynaq.matmul_integer(good_a, good_b.astype(dtype))


@pytest.mark.parametrize(
    "za, zb",
    [
        (np.int8(1), None),
        (np.array(1, I8), None),
        (np.array([1, 2, 3], I8), None),
        (np.int32(1), None),
        (np.array(1, np.int64), None),
        (np.float32(1), None),
        (None, np.uint8(1)),
        (None, np.array([1, 2], U8)),
        (None, np.int16(1)),
        (None, np.float64(0)),
    ],
)
def test_zero_point_dtype_mismatch_is_type_error(za, zb):
    a = np.ones((3, 4), U8)
    b = np.ones((4, 2), I8)
    with pytest.raises(TypeError):
        dynaq.matmul_integer(a, b, za, zb)


@pytest.mark.parametrize("za, zb", [(256, None), (-1, None), (None, 128), (None, -129)])
def test_python_int_zero_point_out_of_range(za, zb):
    a = np.ones((3, 4), U8)
    b = np.ones((4, 2), I8)
    with pytest.raises((ValueError, OverflowError, TypeError)):
        dynaq.matmul_integer(a, b, za, zb)


@pytest.mark.parametrize(
    "za_shape, zb_shape",
    [
        ((4,), None),
        ((2,), None),
        ((3, 3, 3), None),
        (None, (3,)),
        (None, (4,)),
        (None, (2, 2, 2)),
    ],
    ids=str,
)
def test_zero_point_wrong_shape_is_value_error(za_shape, zb_shape):
    a = np.ones((3, 4), U8)
    b = np.ones((4, 2), I8)
    za = None if za_shape is None else np.zeros(za_shape, U8)
    zb = None if zb_shape is None else np.zeros(zb_shape, I8)
    with pytest.raises(ValueError):
        dynaq.matmul_integer(a, b, za, zb)


def test_batched_zero_point_wrong_shape_is_value_error():
    a = np.ones((2, 3, 4), U8)
    b = np.ones((2, 4, 5), I8)
    for za in (np.zeros((2, 4, 1), U8), np.zeros((3, 3, 1), U8), np.zeros((2, 1, 3), U8)):
        with pytest.raises(ValueError):
            dynaq.matmul_integer(a, b, za)
    for zb in (np.zeros((2, 1, 4), I8), np.zeros((3, 1, 5), I8), np.zeros((2, 5, 1), I8)):
        with pytest.raises(ValueError):
            dynaq.matmul_integer(a, b, None, zb)


@pytest.mark.parametrize(
    "sa, sb",
    [((3, 5), (6, 4)), ((5,), (4, 2)), ((3, 5), (4,)), ((2, 3, 5), (2, 4, 7)), ((7,), (6,))],
    ids=str,
)
def test_mismatched_k_is_value_error_with_shapes(sa, sb):
    a = np.ones(sa, U8)
    b = np.ones(sb, I8)
    with pytest.raises(ValueError) as e:
        dynaq.matmul_integer(a, b)
    assert str(sa) in str(e.value) and str(sb) in str(e.value), str(e.value)


def test_incompatible_batch_dims_is_value_error():
    with pytest.raises(ValueError):
        dynaq.matmul_integer(np.ones((2, 3, 4), U8), np.ones((3, 4, 5), I8))


def test_zero_d_operand_is_value_error():
    with pytest.raises(ValueError):
        dynaq.matmul_integer(np.array(3, U8), np.ones((1, 2), I8))
    with pytest.raises(ValueError):
        dynaq.matmul_integer(np.ones((2, 1), U8), np.array(3, I8))


# --- properties -----------------------------------------------------------------------------


@st.composite
def _mmi_case(draw):
    da, db = draw(st.sampled_from(DTYPE_PAIRS))
    m = draw(st.integers(1, 24))
    k = draw(st.integers(1, 90))
    n = draw(st.integers(1, 40))
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rand_int8(rng, (*batch, m, k), da)
    b = rand_int8(rng, (*batch, k, n) if draw(st.booleans()) else (k, n), db)
    extreme = draw(st.sampled_from(["random", "min", "max"]))
    if extreme != "random":
        a[...] = getattr(np.iinfo(da), extreme)
        b[...] = getattr(np.iinfo(db), "min" if draw(st.booleans()) else "max")
    za_kind = draw(st.sampled_from(["none", "scalar", "row"]))
    zb_kind = draw(st.sampled_from(["none", "scalar", "col"]))
    za = {
        "none": None,
        "scalar": rand_int8(rng, (), da),
        "row": rand_int8(rng, (*batch, m, 1) if batch else (m,), da),
    }[za_kind]
    zb_batch = b.shape[:-2]
    zb = {
        "none": None,
        "scalar": rand_int8(rng, (), db),
        "col": rand_int8(rng, (*zb_batch, 1, n) if zb_batch else (n,), db),
    }[zb_kind]
    return a, b, za, zb


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=_mmi_case())
def test_property_matches_reference(isa, ort_ref, case):
    a, b, za, zb = case
    want = matmul_integer_ref(a, b, za, zb)
    if want.min() < INT32_MIN or want.max() > INT32_MAX:
        with pytest.raises(OverflowError):
            dynaq.matmul_integer(a, b, za, zb)
        return
    ort = ort_ref if (za is None or np.ndim(za) == 0) else None
    check(a, b, za, zb, ort_ref=ort)
