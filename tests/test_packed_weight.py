"""dynaq.pack_weight / dynaq.PackedWeight: quantization, attributes, serialization, pickling."""

from __future__ import annotations

import pickle
import struct

import dynaq
import numpy as np
import pytest
from refimpl import pack_weight_ref
from util import AVAILABLE_ISAS, bits, blob_header, reseal, run_on_each_isa, with_metadata

F32 = np.float32
# The first bytes of a serialized weight of format version 1 (still read).
MAGIC = b"DYNAQPW\0"


def _weight(n, k, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * scale).astype(F32)


NK = [
    (1, 1),
    (1, 7),
    (3, 5),
    (9, 2),
    (15, 16),
    (16, 17),
    (17, 15),
    (31, 33),
    (32, 32),
    (33, 31),
    (63, 65),
    (64, 64),
    (65, 63),
    (5, 3001),
    (48, 257),
]


def check_packed(pw, w, per_channel):
    n, k = w.shape
    ev, es = pack_weight_ref(w, per_channel)
    assert isinstance(pw, dynaq.PackedWeight)
    assert tuple(pw.shape) == (n, k)
    assert pw.out_features == n and pw.in_features == k
    assert pw.per_channel is per_channel
    assert pw.scales.dtype == np.float32
    assert pw.scales.shape == ((n,) if per_channel else (1,))
    np.testing.assert_array_equal(bits(pw.scales), bits(es))
    values, scales = pw.unpack()
    assert values.dtype == np.int8 and values.shape == (n, k)
    assert scales.dtype == np.float32
    np.testing.assert_array_equal(bits(scales), bits(es))
    np.testing.assert_array_equal(values, ev)
    assert values.size == 0 or (values.min() >= -127 and values.max() <= 127)
    d = pw.dequantize()
    assert d.dtype == np.float32 and d.shape == (n, k)
    np.testing.assert_array_equal(bits(d), bits(ev.astype(F32) * es.reshape(-1, 1)))
    assert isinstance(pw.nbytes, int) and pw.nbytes >= n * k
    r = repr(pw)
    assert str(n) in r and str(k) in r


@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
@pytest.mark.parametrize("nk", NK, ids=str)
def test_pack_matches_reference(isa, nk, per_channel):
    w = _weight(*nk, seed=nk[0] * 1000 + nk[1])
    if nk[0] > 2:
        w[1] *= 100  # rows of very different ranges
        w[2] = 0.0  # an all-zero row: scale 1
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    check_packed(pw, w, per_channel)
    # The dequantized weight is close: |w - deq| <= scale / 2 (+ float slack).
    scale = pw.scales.reshape(-1, 1).astype(np.float64)
    err = np.abs(w.astype(np.float64) - pw.dequantize())
    assert np.all(err <= scale * (0.5 + 1e-5) + np.abs(w) * 2.0**-22)


def test_default_is_per_channel():
    w = _weight(4, 9)
    pw = dynaq.pack_weight(w)
    assert pw.per_channel is True
    check_packed(pw, w, True)


def test_symmetric_extremes_hit_127(isa):
    w = np.array([[1.0, -1.0, 0.5, 0.0], [-3.0, 1.5, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]], F32)
    pw = dynaq.pack_weight(w)
    values, scales = pw.unpack()
    np.testing.assert_array_equal(values[0], [127, -127, 64, 0])  # 63.5 rounds half to even
    np.testing.assert_array_equal(values[1], [-127, 64, 0, 127])
    np.testing.assert_array_equal(values[2], [0, 0, 0, 0])
    np.testing.assert_array_equal(scales, F32([1.0, 3.0, 0.0]) / F32(127) + F32([0, 0, 1]))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_converted(dtype):
    w = _weight(7, 19, seed=3).astype(dtype)
    a = dynaq.pack_weight(w)
    b = dynaq.pack_weight(w.astype(F32))
    np.testing.assert_array_equal(a.unpack()[0], b.unpack()[0])
    np.testing.assert_array_equal(a.scales, b.scales)


def test_noncontiguous_weight(isa):
    base = _weight(20, 50, seed=4)
    for v in (base[::2, ::3], base.T, np.asfortranarray(base), base[::-1, ::-1], base[3:9, 7:40]):
        a = dynaq.pack_weight(v)
        b = dynaq.pack_weight(np.ascontiguousarray(v))
        np.testing.assert_array_equal(a.unpack()[0], b.unpack()[0])
        np.testing.assert_array_equal(bits(a.scales), bits(b.scales))
        check_packed(a, np.ascontiguousarray(v), True)


@pytest.mark.parametrize(
    "w",
    [
        np.ones((2, 3), np.int32),
        np.ones((2, 3), bool),
        np.ones((2, 3), np.complex64),
        np.ones((2, 3), np.int8),
        np.array([[1.0]], dtype=object),
    ],
    ids=["int32", "bool", "complex", "int8", "object"],
)
def test_wrong_dtype_is_type_error(w):
    with pytest.raises(TypeError, match="weight"):
        dynaq.pack_weight(w)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()], ids=str)
def test_wrong_rank_is_value_error(shape):
    with pytest.raises(ValueError):
        dynaq.pack_weight(np.ones(shape, F32))


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weight(isa, bad, per_channel):
    w = _weight(6, 33, seed=5)
    w[4, 32] = bad
    with pytest.raises(ValueError, match="NaN"):
        dynaq.pack_weight(w, per_channel=per_channel)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("nk", [(0, 5), (4, 0), (0, 0)], ids=str)
def test_empty_weights(nk, per_channel):
    w = np.zeros(nk, F32)
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    assert tuple(pw.shape) == nk
    values, scales = pw.unpack()
    assert values.shape == nk and values.dtype == np.int8
    assert scales.shape == ((nk[0],) if per_channel else (1,))
    np.testing.assert_array_equal(scales, 1.0)
    assert pw.dequantize().shape == nk
    back = dynaq.PackedWeight.from_bytes(pw.to_bytes())
    assert tuple(back.shape) == nk


# --- from_quantized -------------------------------------------------------------------------


def test_from_quantized_per_channel_and_per_tensor(isa):
    rng = np.random.default_rng(6)
    values = rng.integers(-127, 128, (9, 21)).astype(np.int8)
    scales = rng.uniform(0.001, 0.1, 9).astype(F32)
    pw = dynaq.PackedWeight.from_quantized(values, scales)
    assert pw.per_channel is True and tuple(pw.shape) == (9, 21)
    v, s = pw.unpack()
    np.testing.assert_array_equal(v, values)
    np.testing.assert_array_equal(bits(s), bits(scales))
    np.testing.assert_array_equal(bits(pw.dequantize()), bits(values.astype(F32) * scales[:, None]))
    for scalar in (F32(0.03), np.array(0.03, F32), np.array([0.03], F32)):
        pt = dynaq.PackedWeight.from_quantized(values, scalar)
        assert pt.per_channel is False
        assert pt.scales.shape == (1,) and pt.scales[0] == F32(0.03)
        np.testing.assert_array_equal(pt.unpack()[0], values)


def test_from_quantized_then_linear_equals_pack_weight(isa):
    w = _weight(13, 40, seed=7)
    a = dynaq.pack_weight(w)
    b = dynaq.PackedWeight.from_quantized(*a.unpack())
    x = _weight(5, 40, seed=8, scale=2.0)
    np.testing.assert_array_equal(bits(dynaq.linear(x, a)), bits(dynaq.linear(x, b)))


def test_from_quantized_rejects_minus_128():
    values = np.zeros((3, 4), np.int8)
    values[2, 1] = -128
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(values, np.ones(3, F32))
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(values, F32(1.0))


@pytest.mark.parametrize(
    "scales",
    [np.ones(4, F32), np.ones(2, F32), np.ones((3, 1), F32), np.ones((1, 3), F32)],
    ids=["too_many", "too_few", "column", "row"],
)
def test_from_quantized_scale_shape_mismatch(scales):
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(np.zeros((3, 4), np.int8), scales)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_from_quantized_rejects_bad_scales(bad):
    scales = np.ones(3, F32)
    scales[1] = bad
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(np.zeros((3, 4), np.int8), scales)


def test_from_quantized_wrong_values_dtype():
    with pytest.raises(TypeError):
        dynaq.PackedWeight.from_quantized(np.zeros((3, 4), np.float32), np.ones(3, F32))
    with pytest.raises(TypeError):
        dynaq.PackedWeight.from_quantized(np.zeros((3, 4), np.uint8), np.ones(3, F32))


def test_from_quantized_wrong_rank():
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(np.zeros(4, np.int8), np.ones(1, F32))
    with pytest.raises(ValueError):
        dynaq.PackedWeight.from_quantized(np.zeros((2, 3, 4), np.int8), np.ones(2, F32))


def test_from_quantized_copies_its_input():
    values = np.ones((3, 4), np.int8)
    scales = np.ones(3, F32)
    pw = dynaq.PackedWeight.from_quantized(values, scales)
    values[:] = 5
    scales[:] = 7
    np.testing.assert_array_equal(pw.unpack()[0], 1)
    np.testing.assert_array_equal(pw.scales, 1)


# --- serialization --------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("nk", [(1, 1), (3, 5), (17, 33), (64, 65), (5, 3001)], ids=str)
def test_bytes_round_trip(isa, nk, per_channel):
    w = _weight(*nk, seed=nk[1])
    pw = dynaq.pack_weight(w, per_channel=per_channel)
    b = pw.to_bytes()
    assert isinstance(b, bytes)
    # Plain tensors in the safetensors layout: the int8 values and the scales, as they are.
    weights, tensors, meta = dynaq._dynaq.read_blob(b, "PackedWeight")
    assert weights["weight"] == pw and tensors == {} and meta["dynaq.kind"] == "PackedWeight"
    back = dynaq.PackedWeight.from_bytes(b)
    assert tuple(back.shape) == nk and back.per_channel is per_channel
    v0, s0 = pw.unpack()
    v1, s1 = back.unpack()
    np.testing.assert_array_equal(v0, v1)
    np.testing.assert_array_equal(bits(s0), bits(s1))
    assert back.to_bytes() == b
    x = _weight(4, nk[1], seed=1, scale=3.0)
    np.testing.assert_array_equal(bits(dynaq.linear(x, back)), bits(dynaq.linear(x, pw)))
    # bytearray / memoryview inputs are bytes-like too
    for alt in (bytearray(b), memoryview(b)):
        try:
            other = dynaq.PackedWeight.from_bytes(alt)
        except TypeError:
            continue
        np.testing.assert_array_equal(other.unpack()[0], v0)


def test_bytes_are_isa_independent(available_isas):
    w = _weight(19, 37, seed=2)
    per_isa = run_on_each_isa(lambda: dynaq.pack_weight(w).to_bytes())
    assert len(set(per_isa.values())) == 1, list(per_isa)


def test_packed_on_one_path_runs_on_every_path(available_isas):
    w = _weight(35, 70, seed=3)
    x = _weight(6, 70, seed=4, scale=5.0)
    packed = run_on_each_isa(lambda: dynaq.pack_weight(w))
    ref = None
    for pname, pw in packed.items():
        for rname in available_isas:
            with dynaq.use_isa(rname):
                y = dynaq.linear(x, pw)
            if ref is None:
                ref = y
            np.testing.assert_array_equal(bits(y), bits(ref), err_msg=f"{pname} -> {rname}")


def test_pickle_round_trip(isa):
    w = _weight(11, 23, seed=9)
    for per_channel in (True, False):
        pw = dynaq.pack_weight(w, per_channel=per_channel)
        for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(pw, protocol=proto))
            assert isinstance(back, dynaq.PackedWeight)
            assert tuple(back.shape) == (11, 23) and back.per_channel is per_channel
            np.testing.assert_array_equal(back.unpack()[0], pw.unpack()[0])
            np.testing.assert_array_equal(bits(back.scales), bits(pw.scales))


def _small_bytes(per_channel=True):
    return dynaq.pack_weight(_weight(3, 5, seed=10), per_channel=per_channel).to_bytes()


def test_serialized_layout():
    # The documented form: a safetensors buffer holding "weight" (I8, out x in) and
    # "weight_scale" (F32, (out,) per channel or () per tensor), with dynaq's metadata.
    for per_channel in (True, False):
        b = _small_bytes(per_channel)
        h = blob_header(b)
        meta = h.pop("__metadata__")
        assert meta["dynaq.format"] == str(dynaq._dynaq.FORMAT_VERSION) == "2"
        assert meta["dynaq.kind"] == "PackedWeight" and meta["dynaq.quantized"] == '["weight"]'
        assert len(meta["dynaq.crc32"]) == 8
        assert h["weight"]["dtype"] == "I8" and h["weight"]["shape"] == [3, 5]
        assert h["weight_scale"]["dtype"] == "F32"
        assert h["weight_scale"]["shape"] == ([3] if per_channel else [])
        assert len(b) == 8 + struct.unpack("<Q", b[:8])[0] + 15 + 4 * (3 if per_channel else 1)
    st_numpy = pytest.importorskip("safetensors.numpy")
    pw = dynaq.pack_weight(_weight(3, 5, seed=10))
    theirs = st_numpy.load(pw.to_bytes())
    np.testing.assert_array_equal(theirs["weight"], pw.unpack()[0])
    np.testing.assert_array_equal(bits(theirs["weight_scale"]), bits(pw.scales))


@pytest.mark.parametrize("per_channel", [True, False])
def test_truncated_bytes_rejected(per_channel):
    b = _small_bytes(per_channel)
    for cut in range(len(b)):
        with pytest.raises(ValueError):
            dynaq.PackedWeight.from_bytes(b[:cut])


def test_padded_bytes_rejected():
    b = _small_bytes()
    for extra in (b"\0", b"\0" * 4, b"junk" * 10):
        with pytest.raises(ValueError):
            dynaq.PackedWeight.from_bytes(b + extra)


@pytest.mark.parametrize("per_channel", [True, False])
def test_every_flipped_bit_rejected(per_channel):
    b = bytearray(_small_bytes(per_channel))
    for i in range(len(b)):
        for bit in range(8):
            c = bytearray(b)
            c[i] ^= 1 << bit
            with pytest.raises(ValueError):
                dynaq.PackedWeight.from_bytes(bytes(c))


def test_bad_magic_and_version_rejected():
    b = _small_bytes()
    for junk in (b"NOTDYNAQ" + b[8:], b"DYNAQPW" + b[7:]):
        with pytest.raises(ValueError, match="^PackedWeight bytes: "):
            dynaq.PackedWeight.from_bytes(junk)
    for version in ("0", "1", "4", "9"):
        with pytest.raises(ValueError, match=f"(?i)format version {version} is not supported"):
            dynaq.PackedWeight.from_bytes(with_metadata(b, "dynaq.format", version))
    # Version 3 (written when a weight is 4-bit) is read as version 2: the tensors say what
    # they hold.
    assert dynaq.PackedWeight.from_bytes(with_metadata(b, "dynaq.format", "3")) == (
        dynaq.PackedWeight.from_bytes(b)
    )
    with pytest.raises(ValueError, match="holds a 'Linearxxxxxx', not a 'PackedWeight'"):
        dynaq.PackedWeight.from_bytes(with_metadata(b + b"", "dynaq.kind", "Linear" + "x" * 6))
    # Version-1 bytes (DYNAQPW) are still read; other versions of them are refused.
    v1 = _v1_bytes()
    for version in (0, 2, 255, 2**32 - 1):
        c = v1[:8] + struct.pack("<I", version) + v1[12:]
        with pytest.raises(ValueError, match="(?i)version"):
            dynaq.PackedWeight.from_bytes(c)


def _v1_bytes(per_channel=True, n=3, k=5, seed=10):
    """A weight as format version 1 (DYNAQPW) wrote it, with its CRC."""
    import zlib

    values, scales = dynaq.pack_weight(_weight(n, k, seed=seed), per_channel=per_channel).unpack()
    body = MAGIC + struct.pack("<IIQQ", 1, int(per_channel), n, k)
    body += scales.astype("<f4").tobytes() + values.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def test_header_lies_rejected_without_crash():
    """Version-1 headers with huge or inconsistent sizes (CRC recomputed so only the header is
    wrong)."""
    import zlib

    b = _v1_bytes()
    body = b[:-4]

    def with_crc(data: bytes) -> bytes:
        return data + struct.pack("<I", zlib.crc32(data))

    cases = []
    for n, k in [(2**63, 2), (2**64 - 1, 2**64 - 1), (1, 2**40), (0, 0), (3, 6), (4, 5)]:
        cases.append(with_crc(body[:16] + struct.pack("<QQ", n, k) + body[32:]))
    cases.append(with_crc(body[:12] + struct.pack("<I", 2) + body[16:]))  # unknown flag
    cases.append(with_crc(body[:12] + struct.pack("<I", 0) + body[16:]))  # scales count lies
    values_at = 32 + 4 * 3
    bad_value = body[:values_at] + b"\x80" + body[values_at + 1 :]  # -128
    cases.append(with_crc(bad_value))
    bad_scale = body[:32] + struct.pack("<f", float("nan")) + body[36:]
    cases.append(with_crc(bad_scale))
    zero_scale = body[:32] + struct.pack("<f", 0.0) + body[36:]
    cases.append(with_crc(zero_scale))
    for c in cases:
        with pytest.raises(ValueError):
            dynaq.PackedWeight.from_bytes(c)


def _v2_blob(tensors: dict, quantized='["weight"]') -> bytes:
    """A sealed format-2 blob of kind PackedWeight holding ``tensors`` as given (however wrong)."""
    from dynaq import _dynaq

    meta = [
        ("dynaq.format", "2"),
        ("dynaq.kind", "PackedWeight"),
        ("dynaq.quantized", quantized),
        ("dynaq.crc32", "00000000"),
    ]
    dtypes = {np.dtype(np.int8): "I8", np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}
    order = _dynaq.safetensors_data_order([(n, dtypes[a.dtype]) for n, a in tensors.items()])
    items = [(n, dtypes[tensors[n].dtype], list(tensors[n].shape), tensors[n].nbytes)
             for n in order]  # fmt: skip
    head = bytes(_dynaq.encode_safetensors_header(items, meta))
    return reseal(head + b"".join(tensors[n].tobytes() for n in order))


def test_consistent_but_wrong_contents_rejected():
    """Format-2 blobs whose seal is right and whose tensors are not a weight."""
    v = np.ones((3, 5), np.int8)
    s3 = np.ones(3, F32)
    good = _v2_blob({"weight": v, "weight_scale": s3})
    assert dynaq.PackedWeight.from_bytes(good).shape == (3, 5)
    cases = {
        "scale shape": ({"weight": v, "weight_scale": np.ones(4, F32)}, "do not fit"),
        "-128": ({"weight": np.full((3, 5), -128, np.int8), "weight_scale": s3}, "-128"),
        "nan scale": ({"weight": v, "weight_scale": np.full(3, np.nan, F32)}, "finite"),
        "zero scale": ({"weight": v, "weight_scale": np.zeros(3, F32)}, "positive"),
        "uint8 values": ({"weight": v.view(np.uint8), "weight_scale": s3}, "I8"),
        "1-D values": ({"weight": v.reshape(-1), "weight_scale": s3}, "2-D"),
        "no scales": ({"weight": v}, "missing"),
        "extra tensor": ({"weight": v, "weight_scale": s3, "bias": s3}, "exactly"),
        "huge, no values": (
            {"weight": np.empty((1 << 40, 0), np.int8), "weight_scale": np.ones((), F32)},
            "implausible",
        ),
    }
    for what, (tensors, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            dynaq.PackedWeight.from_bytes(_v2_blob(tensors))
        assert what
    with pytest.raises(ValueError, match="dynaq.quantized"):
        dynaq.PackedWeight.from_bytes(_v2_blob({"weight": v, "weight_scale": s3}, "[1]"))


def test_random_garbage_rejected():
    rng = np.random.default_rng(11)
    for size in (0, 1, 7, 35, 36, 64, 200):
        for _ in range(5):
            junk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            with pytest.raises(ValueError):
                dynaq.PackedWeight.from_bytes(junk)
            with pytest.raises(ValueError):
                dynaq.PackedWeight.from_bytes(MAGIC + junk)


def test_from_bytes_type_error_for_non_bytes():
    with pytest.raises(TypeError):
        dynaq.PackedWeight.from_bytes("DYNAQPW")  # type: ignore[arg-type]


def test_paths_listed():
    assert AVAILABLE_ISAS[0] == "scalar"


def test_huge_shape_without_data_is_an_error_not_an_abort():
    """A 40-byte weight claiming 2^40 outputs of 0 inputs (per tensor) aborted the process while
    allocating one scale per output. from_bytes refuses more than 2^24 outputs without values
    (ValueError); the same shape through from_quantized and pack_weight is a MemoryError."""
    import zlib

    for n in (1 << 40, (1 << 24) + 1):
        body = b"DYNAQPW\0" + struct.pack("<IIQQ", 1, 0, n, 0) + struct.pack("<f", 1.0)
        with pytest.raises(ValueError, match="implausible"):
            dynaq.PackedWeight.from_bytes(body + struct.pack("<I", zlib.crc32(body)))
    body = b"DYNAQPW\0" + struct.pack("<IIQQ", 1, 0, 1 << 24, 0) + struct.pack("<f", 1.0)
    assert dynaq.PackedWeight.from_bytes(body + struct.pack("<I", zlib.crc32(body))).shape == (
        1 << 24,
        0,
    )
    with pytest.raises(MemoryError):
        dynaq.PackedWeight.from_quantized(np.empty((1 << 40, 0), np.int8), np.float32(1.0))
    with pytest.raises(MemoryError):
        dynaq.pack_weight(np.empty((1 << 40, 0), np.float32))
    # A per-channel scale count whose byte size overflows u64 is a corrupt length.
    body = b"DYNAQPW\0" + struct.pack("<IIQQ", 1, 1, (1 << 62) + 2, 1) + b"\0" * 8
    with pytest.raises(ValueError, match="does not match|impossible"):
        dynaq.PackedWeight.from_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_panels_view_and_from_panels():
    """``panels`` is a read-only view of the memory the kernels read (no copy; it keeps the
    weight alive), and ``from_panels`` takes it back, checking length, padding and range."""
    rng = np.random.default_rng(7)
    for (n, k), per_channel in [((5, 7), True), ((16, 4), False), ((17, 33), True), ((1, 0), True)]:
        w = rng.standard_normal((n, k)).astype(np.float32)
        pw = dynaq.pack_weight(w, per_channel=per_channel)
        p = pw.panels
        assert p.dtype == np.int8 and p.shape == (dynaq.PackedWeight.panels_size(n, k),)
        assert not p.flags.writeable and p.base is pw
        back = dynaq.PackedWeight.from_panels(p, pw.scales if per_channel else pw.scales[0], n, k)
        assert back == pw
    pw = dynaq.pack_weight(rng.standard_normal((5, 7)).astype(np.float32))
    p = np.array(pw.panels)
    with pytest.raises(ValueError, match="do not hold a packed 5 x 9 matrix"):
        dynaq.PackedWeight.from_panels(p, pw.scales, 5, 9)
    bad = p.copy()
    bad[0] = -128
    with pytest.raises(ValueError, match="-128"):
        dynaq.PackedWeight.from_panels(bad, pw.scales, 5, 7)
    bad = p.copy()
    bad[64 + 4 * 1 + 3] = 1  # column 1, k 7: the K padding
    with pytest.raises(ValueError, match="padding"):
        dynaq.PackedWeight.from_panels(bad, pw.scales, 5, 7)
    with pytest.raises(ValueError, match=r"scales must have shape \(5,\)"):
        dynaq.PackedWeight.from_panels(p, pw.scales[:3], 5, 7)
    with pytest.raises(TypeError, match="panels must be an int8 array"):
        dynaq.PackedWeight.from_panels(p.astype(np.int16), pw.scales, 5, 7)
    with pytest.raises(ValueError, match="panels must be 1-D"):
        dynaq.PackedWeight.from_panels(p.reshape(2, -1), pw.scales, 5, 7)
