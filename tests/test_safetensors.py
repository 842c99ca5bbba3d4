"""dynaq.safetensors: the pure-numpy safetensors reader/writer, file quantization and loading.

Interoperability with the ``safetensors`` package (and torch, for BF16/F8) is checked in both
directions when those are installed; everything else needs only numpy.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct

import dynaq
import numpy as np
import pytest
from dynaq import safetensors as ds
from dynaq.layers import LSTM, Linear
from dynaq.safetensors import _io as ds_io
from util import assert_bitwise_equal

F32 = np.float32

try:  # pragma: no cover - depends on the environment
    import safetensors.numpy as st_numpy
    from safetensors import safe_open
except ImportError:  # pragma: no cover
    st_numpy = safe_open = None

needs_safetensors = pytest.mark.skipif(
    st_numpy is None, reason="the safetensors package is not installed (pip install safetensors)"
)


def _torch():
    return pytest.importorskip("torch")


def _raw_file(path, header: dict, data: bytes = b"", *, header_bytes: bytes | None = None):
    """Writes a file with exactly this header (no checks) and data."""
    text = json.dumps(header).encode() if header_bytes is None else header_bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return path


def _header(path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def _listdir(d) -> list[str]:
    return sorted(os.listdir(d))


# ---------------------------------------------------------------------------------------------
# Reading and writing.
# ---------------------------------------------------------------------------------------------

NUMPY_DTYPES = [
    ("bool", "BOOL"),
    ("uint8", "U8"),
    ("int8", "I8"),
    ("uint16", "U16"),
    ("int16", "I16"),
    ("uint32", "U32"),
    ("int32", "I32"),
    ("uint64", "U64"),
    ("int64", "I64"),
    ("float16", "F16"),
    ("float32", "F32"),
    ("float64", "F64"),
    ("complex64", "C64"),
]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("dtype,name", NUMPY_DTYPES)
def test_round_trip_every_numpy_dtype(tmp_path, dtype, name):
    tensors = {
        "scalar": _sample(dtype, ()),
        "empty": _sample(dtype, (0, 3)),
        "vec": _sample(dtype, (7,), 1),
        "mat": _sample(dtype, (3, 5), 2),
        "cube": _sample(dtype, (2, 3, 4), 3),
    }
    path = tmp_path / "t.safetensors"
    ds.write(path, tensors, {"who": "test", "ünï": "cödé"})
    back = ds.read(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    assert ds.read_metadata(path) == {"who": "test", "ünï": "cödé"}
    header, _ = _header(path)
    assert {header[k]["dtype"] for k in tensors} == {name}
    raw = ds.read_raw(path)
    assert raw["mat"].dtype == name and raw["mat"].shape == (3, 5)
    assert raw["mat"].data == np.ascontiguousarray(tensors["mat"]).tobytes()


def test_layouts_and_byte_orders_are_normalized(tmp_path):
    a = np.arange(24, dtype=F32).reshape(4, 6)
    tensors = {
        "fortran": np.asfortranarray(a),
        "strided": a[::2, ::-3],
        "bigendian": a.astype(">f4"),
        "big_int": np.arange(5, dtype=">i8"),
        "numpy_scalar": np.float64(2.5),
    }
    path = tmp_path / "t.safetensors"
    ds.write(path, tensors)
    back = ds.read(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype.isnative
    assert back["numpy_scalar"].shape == ()


def test_header_alignment_and_data_order(tmp_path):
    tensors = {
        "a_i8": np.ones(3, np.int8),
        "b_f64": np.ones(3, np.float64),
        "c_f16": np.ones(5, np.float16),
        "d_f32": np.ones(1, F32),
    }
    path = tmp_path / "t.safetensors"
    ds.write(path, tensors)
    header, start = _header(path)
    assert start % 8 == 0  # padded with spaces, as the safetensors writer does
    for name, info in header.items():
        item = {"I8": 1, "F64": 8, "F16": 2, "F32": 4}[info["dtype"]]
        assert (start + info["data_offsets"][0]) % item == 0, name
    # widest first, then by name
    assert list(header) == ["b_f64", "d_f32", "c_f16", "a_i8"]


def test_empty_file_and_no_metadata(tmp_path):
    path = tmp_path / "empty.safetensors"
    ds.write(path, {})
    assert ds.read(path) == {}
    assert ds.read_metadata(path) == {}


def test_bf16_round_trip_and_decoding(tmp_path):
    rng = np.random.default_rng(0)
    top = rng.integers(0, 1 << 16, size=4000, dtype=np.uint32).astype(np.uint16)
    special = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x7F7F, 0x3F80], np.uint16)
    bits16 = np.concatenate([top, special])
    path = tmp_path / "bf16.safetensors"
    ds.write(path, {"x": ds.RawTensor("BF16", (bits16.size,), bits16.tobytes())})
    x = ds.read(path)["x"]
    assert x.dtype == F32
    expected = (bits16.astype(np.uint32) << 16).view(F32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(x), nan)
    np.testing.assert_array_equal(x.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    assert x[-1] == 1.0 and x[-6] == np.inf and x[-5] == -np.inf and x[-4] == 2.0**-133
    assert ds.read_raw(path)["x"].data == bits16.tobytes()


def test_float32_to_bf16_rounds_to_nearest_even():
    torch = _torch()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(10000).astype(F32) * np.float32(1e3)
    x = np.concatenate([x, np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38], F32)])
    ours = ds_io._float32_to_bf16(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(ours[finite], ref[finite])
    back = ds_io._bf16_to_float32(ours)
    assert np.isnan(back[-4]) and back[-6] == np.inf and back[-5] == -np.inf


@pytest.mark.parametrize(
    "name,torch_dtype", [("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")]
)
def test_f8_decoding_matches_torch(tmp_path, name, torch_dtype):
    torch = _torch()
    codes = np.arange(256, dtype=np.uint8)
    path = tmp_path / "f8.safetensors"
    ds.write(path, {"x": ds.RawTensor(name, (256,), codes.tobytes())})
    ours = ds.read(path)["x"]
    ref = torch.from_numpy(codes).view(getattr(torch, torch_dtype)).float().numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(ours[ok], ref[ok])


def test_f8_e8m0_decoding(tmp_path):
    codes = np.arange(256, dtype=np.uint8)
    path = tmp_path / "e8m0.safetensors"
    ds.write(path, {"x": ds.RawTensor("F8_E8M0", (256,), codes.tobytes())})
    x = ds.read(path)["x"]
    assert x[127] == 1.0 and x[128] == 2.0 and x[0] == np.float32(2.0**-127) and np.isnan(x[255])
    np.testing.assert_array_equal(x[:255], np.exp2(np.arange(255.0) - 127).astype(F32))


def test_dtypes_numpy_lacks_are_read_raw_only(tmp_path):
    path = tmp_path / "f4.safetensors"
    ds.write(path, {"packed": ds.RawTensor("F4", (2, 4), bytes([0x12, 0x34, 0x56, 0x78]))})
    with pytest.raises(ValueError, match=r"f4\.safetensors.*'packed'.*F4.*numpy cannot"):
        ds.read(path)
    assert ds.read_raw(path)["packed"].data == bytes([0x12, 0x34, 0x56, 0x78])


def test_raw_tensor_checks():
    assert ds.RawTensor("I8", [2, 2], b"abcd").shape == (2, 2)
    assert "nbytes=4" in repr(ds.RawTensor("I8", (4,), b"abcd"))
    with pytest.raises(ValueError, match="unknown safetensors dtype 'Q4'"):
        ds.RawTensor("Q4", (1,), b"a")
    with pytest.raises(ValueError, match="needs 8 bytes, got 4"):
        ds.RawTensor("F32", (2,), b"abcd")
    with pytest.raises(ValueError, match="shape"):
        ds.RawTensor("I8", (-1,), b"")
    with pytest.raises(ValueError, match="whole bytes"):
        ds.RawTensor("F4", (3,), b"ab")
    np.testing.assert_array_equal(
        ds.RawTensor("I16", (2,), b"\x01\x00\xff\xff").numpy(), np.array([1, -1], np.int16)
    )


# ---------------------------------------------------------------------------------------------
# Interoperability with the safetensors package.
# ---------------------------------------------------------------------------------------------


@needs_safetensors
def test_files_written_by_safetensors_read_here(tmp_path):
    tensors = {f"t_{n}": _sample(d, (3, 4), i) for i, (d, n) in enumerate(NUMPY_DTYPES)}
    tensors["scalar"] = np.array(1.5, F32)
    tensors["empty"] = np.zeros((0, 2), np.int32)
    path = str(tmp_path / "theirs.safetensors")
    st_numpy.save_file(tensors, path, metadata={"format": "np", "k": "v"})
    back = ds.read(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        np.testing.assert_array_equal(back[k], v)
    assert ds.read_metadata(path) == {"format": "np", "k": "v"}


@needs_safetensors
def test_files_written_here_read_by_safetensors(tmp_path):
    tensors = {f"t_{n}": _sample(d, (2, 3, 2), i) for i, (d, n) in enumerate(NUMPY_DTYPES)}
    tensors["scalar"] = np.array(7, np.int64)
    path = str(tmp_path / "ours.safetensors")
    ds.write(path, tensors, {"format": "np", "x": "y"})
    back = st_numpy.load_file(path)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        np.testing.assert_array_equal(back[k], v)
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "np", "x": "y"}


@needs_safetensors
def test_bf16_and_f8_interop_with_torch(tmp_path):
    torch = _torch()
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "e4m3": torch.randn(11, generator=g).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(3, 3, generator=g).to(torch.float8_e5m2),
        "f16": torch.randn(4, generator=g).half(),
    }
    path = str(tmp_path / "torch.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    back = ds.read(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v.float().numpy() if k != "f16" else v.numpy())
    # and back: BF16 written here as raw bits, loaded by safetensors as torch.bfloat16
    raw = ds.read_raw(path)
    out = str(tmp_path / "again.safetensors")
    ds.write(out, raw, {"format": "pt"})
    again = load_file(out)
    for k, v in tensors.items():
        assert again[k].dtype == v.dtype
        assert torch.equal(again[k].float(), v.float())


# ---------------------------------------------------------------------------------------------
# Validation of what is read.
# ---------------------------------------------------------------------------------------------

GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
GOOD_DATA = struct.pack("<2f", 1.0, 2.0)


def test_valid_hand_written_file(tmp_path):
    path = _raw_file(tmp_path / "ok.safetensors", GOOD, GOOD_DATA)
    np.testing.assert_array_equal(ds.read(path)["w"], [1.0, 2.0])
    # trailing spaces in the header are padding
    path = _raw_file(
        tmp_path / "pad.safetensors", {}, GOOD_DATA, header_bytes=json.dumps(GOOD).encode() + b"  "
    )
    np.testing.assert_array_equal(ds.read(path)["w"], [1.0, 2.0])


@pytest.mark.parametrize(
    "header,data,match",
    [
        (b"", None, r"not a safetensors file \(0 bytes"),
        (b"abc", None, r"not a safetensors file \(3 bytes"),
        (struct.pack("<Q", 10**9), None, "above the 100 MB limit"),
        (struct.pack("<Q", 50) + b"{}", None, "runs past the end of the 10-byte file"),
        (struct.pack("<Q", 2) + b"\xff\xfe", None, "not UTF-8"),
        (struct.pack("<Q", 2) + b"[]", None, r"does not start with '\{'"),
        (struct.pack("<Q", 3) + b"{x}", None, "not valid JSON"),
        (struct.pack("<Q", 0), None, r"does not start with '\{'"),
    ],
)
def test_not_a_safetensors_file(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(header)
    with pytest.raises(ValueError, match=match) as e:
        ds.read(path)
    assert "bad.safetensors" in str(e.value)


def _bad(tmp_path, header, data=b"", header_bytes=None):
    path = _raw_file(tmp_path / "bad.safetensors", header, data, header_bytes=header_bytes)
    with pytest.raises(ValueError) as e:
        ds.read(path)
    assert "bad.safetensors" in str(e.value)
    return str(e.value)


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_header_json_problems(tmp_path):
    msg = _bad(tmp_path, {}, header_bytes=b'{"a": 1, "a": 2}')
    assert "duplicate key 'a'" in msg
    msg = _bad(tmp_path, {}, header_bytes=b'{"a": NaN}')
    assert "NaN" in msg
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "not valid JSON" in _bad(tmp_path, {}, header_bytes=deep)
    assert "__metadata__" in _bad(tmp_path, {"__metadata__": {"k": 1}})
    assert "__metadata__" in _bad(tmp_path, {"__metadata__": ["k"]})


@pytest.mark.parametrize(
    "entry,match",
    [
        ("nope", "needs exactly the keys"),
        ({"dtype": "F32", "shape": [2]}, "needs exactly the keys"),
        ({**_t(), "extra": 1}, "needs exactly the keys"),
        (_t(dtype="Q4"), "unsupported dtype 'Q4'"),
        (_t(dtype=5), "unsupported dtype 5"),
        (_t(shape=(-2,)), "bad shape"),
        ({**_t(), "shape": [2.0]}, "bad shape"),
        ({**_t(), "shape": [True]}, "bad shape"),
        ({**_t(), "shape": 2}, "bad shape"),
        (_t(offsets=(8, 0)), "bad data_offsets"),
        (_t(offsets=(0,)), "bad data_offsets"),
        (_t(offsets=(-1, 7)), "bad data_offsets"),
        (_t(shape=(3,)), r"needs 12 bytes, but its data_offsets \[0, 8\] hold 8"),
        (_t(dtype="F4", shape=(3,), offsets=(0, 2)), "not whole bytes"),
    ],
)
def test_bad_tensor_entries(tmp_path, entry, match):
    msg = _bad(tmp_path, {"my.tensor": entry}, GOOD_DATA)
    assert "'my.tensor'" in msg
    assert pytest.importorskip("re").search(match, msg), msg


def test_offsets_truncation_overlap_gap_and_trailing_bytes(tmp_path):
    two = {"a": _t(offsets=(0, 8)), "b": _t(offsets=(8, 16))}
    msg = _bad(tmp_path, two, GOOD_DATA + GOOD_DATA[:5])
    assert "'b'" in msg and "truncated" in msg
    msg = _bad(tmp_path, {"a": _t(offsets=(0, 8)), "b": _t(offsets=(4, 12))}, GOOD_DATA * 2)
    assert "'b'" in msg and "overlaps tensor 'a'" in msg
    msg = _bad(tmp_path, {"a": _t(offsets=(0, 8)), "b": _t(offsets=(12, 20))}, b"\0" * 20)
    assert "'b'" in msg and "gap" in msg
    msg = _bad(tmp_path, {"a": _t(offsets=(4, 12))}, b"\0" * 12)
    assert "'a'" in msg and "gap after the start of the data" in msg
    msg = _bad(tmp_path, two, GOOD_DATA * 2 + b"xx")
    assert "trailing bytes" in msg
    assert "trailing bytes" in _bad(tmp_path, {}, b"x")


def test_truncated_real_file(tmp_path):
    path = tmp_path / "t.safetensors"
    ds.write(path, {"a": np.ones((4, 4), F32), "z_last": np.ones(10, np.int8)})
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 10, len(data) - 40, 20, 7):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="bad.safetensors") as e:
            ds.read(bad)
        assert "truncated" in str(e.value) or "not a safetensors file" in str(e.value)


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ds.read(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------
# Writing: argument checks and atomicity.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensors,exc,match",
    [
        ({"x": np.zeros(2, np.complex128)}, TypeError, "'x' has dtype complex128"),
        ({"x": np.array(["a"])}, TypeError, "'x' has dtype <U1"),
        ({"x": np.array([None])}, TypeError, "'x' has dtype object"),
        ({"x": [1.0, 2.0]}, TypeError, "'x' must be a numpy array or a RawTensor"),
        ({3: np.zeros(2)}, TypeError, "tensor names must be str"),
        ({"__metadata__": np.zeros(2)}, ValueError, "reserved"),
    ],
)
def test_write_refuses_bad_tensors(tmp_path, tensors, exc, match):
    path = tmp_path / "out.safetensors"
    with pytest.raises(exc, match=match):
        ds.write(path, tensors)
    assert _listdir(tmp_path) == []


def test_write_refuses_bad_metadata_and_containers(tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(TypeError, match="metadata"):
        ds.write(path, {}, {"k": 1})
    with pytest.raises(TypeError, match="metadata"):
        ds.write(path, {}, ["k"])
    with pytest.raises(TypeError, match="mapping"):
        ds.write(path, [np.zeros(2)])
    assert _listdir(tmp_path) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    ds.write(path, {"old": np.ones(3, F32)})
    before = path.read_bytes()

    def boom(fd):
        raise OSError(5, "simulated disk error")

    monkeypatch.setattr(ds_io.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        ds.write(path, {"new": np.zeros(1000, F32)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _listdir(tmp_path) == ["model.safetensors"]
    # and when the final rename fails
    monkeypatch.setattr(ds_io.os, "replace", lambda a, b: boom(a))
    with pytest.raises(OSError, match="simulated"):
        ds.write(path, {"new": np.zeros(10, F32)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _listdir(tmp_path) == ["model.safetensors"]


def test_write_over_a_directory_and_into_a_missing_one(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        ds.write(tmp_path / "sub", {"a": np.ones(1, F32)})
    assert _listdir(tmp_path) == ["sub"] and _listdir(tmp_path / "sub") == []
    with pytest.raises(FileNotFoundError, match="directory does not exist") as e:
        ds.write(tmp_path / "nope" / "x.safetensors", {})
    assert "x.safetensors" in str(e.value)


def test_written_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ds.write(tmp_path / "p.safetensors", {})
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------
# quantize_file / load_quantized / load_linear.
# ---------------------------------------------------------------------------------------------


def _model_tensors(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    w_bf16 = ds_io._float32_to_bf16(rng.standard_normal((6, 10)).astype(F32) * F32(0.5))
    return {
        "enc.0.weight": (rng.standard_normal((48, 64)) * 0.05).astype(F32),
        "enc.0.bias": rng.standard_normal(48).astype(F32),
        "enc.1.weight": (rng.standard_normal((17, 48)) * 0.1).astype(np.float16),
        "enc.1.bias": rng.standard_normal(17).astype(np.float16),
        "head.weight": rng.standard_normal((5, 17)),  # float64
        "emb.bf16": ds.RawTensor("BF16", (6, 10), w_bf16.tobytes()),
        "conv.weight": rng.standard_normal((4, 3, 3)).astype(F32),  # 3-D: kept
        "norm.scale": np.ones(64, F32),
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),  # 2-D but not float: kept
        "empty.weight": np.zeros((0, 4), F32),
    }


def _write_model(path, seed=0, metadata=None):
    ds.write(path, _model_tensors(seed), metadata if metadata is not None else {"format": "pt"})
    return path


def _float_weights(path) -> dict:
    return ds.read(path)


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_file_matches_pack_weight(tmp_path, per_channel):
    src = _write_model(tmp_path / "model.safetensors")
    dst = tmp_path / "model.int8.safetensors"
    report = ds.quantize_file(src, dst, per_channel=per_channel)
    floats = _float_weights(src)
    quantizable = ["enc.0.weight", "enc.1.weight", "head.weight", "emb.bf16", "empty.weight"]
    assert sorted(report.quantized) == sorted(quantizable)
    stored = ds.read(dst)
    loaded = ds.load_quantized(dst)
    for name in quantizable:
        pw = dynaq.pack_weight(floats[name], per_channel=per_channel)
        values, scales = pw.unpack()
        assert stored[name].dtype == np.int8
        np.testing.assert_array_equal(stored[name], values)
        scale = stored[name + "_scale"]
        assert scale.dtype == F32
        assert scale.shape == ((floats[name].shape[0],) if per_channel else ())
        assert_bitwise_equal(scale, scales.reshape(scale.shape))
        assert isinstance(loaded[name], dynaq.PackedWeight)
        assert loaded[name] == pw, name
        assert loaded[name].per_channel == per_channel
    # everything else byte for byte, and the scales are not returned by load_quantized
    raw_src, raw_dst = ds.read_raw(src), ds.read_raw(dst)
    for name in ["enc.0.bias", "enc.1.bias", "conv.weight", "norm.scale", "ids"]:
        assert raw_dst[name] == raw_src[name], name
        np.testing.assert_array_equal(loaded[name], floats[name])
    assert not any(k.endswith("_scale") for k in loaded)
    assert set(loaded) == set(raw_src)
    # metadata: the original plus dynaq's
    meta = ds.read_metadata(dst)
    assert meta["format"] == "pt"
    assert meta["dynaq.format"] == str(ds.FORMAT_VERSION) == "2"
    assert json.loads(meta["dynaq.quantized"]) == report.quantized
    assert meta["dynaq.writer"] == f"dynaq {dynaq.__version__}"


def test_quantize_report_rows_sqnr_and_bytes(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    report = ds.quantize_file(src, tmp_path / "q.safetensors")
    rows = {r.name: r for r in report.rows}
    assert [r.name for r in report.rows] == list(ds.read_raw(src))  # source order
    floats = _float_weights(src)
    for name in report.quantized:
        r = rows[name]
        w = floats[name].astype(np.float64)
        pw = dynaq.pack_weight(floats[name])
        deq = pw.unpack()[0].astype(np.float64) * pw.scales.astype(np.float64)[:, None]
        noise = np.sum((w - deq) ** 2)
        expected = math.inf if noise == 0 else 10 * math.log10(np.sum(w * w) / noise)
        assert r.sqnr_db == pytest.approx(expected, rel=1e-9), name
        assert r.action == "quantized"
        assert r.bytes_after == w.size + 4 * w.shape[0]
    # Gaussian weights, per-channel int8: about 40 dB (max|w| ~ 3 sigma per row of 64)
    assert 36 < rows["enc.0.weight"].sqnr_db < 48
    assert rows["empty.weight"].sqnr_db == math.inf
    assert rows["enc.0.weight"].bytes_before == 48 * 64 * 4
    assert rows["enc.1.weight"].dtype == "F16" and rows["emb.bf16"].dtype == "BF16"
    assert rows["conv.weight"].action == "kept" and rows["conv.weight"].sqnr_db is None
    assert report.bytes_before == sum(r.bytes_before for r in report.rows)
    assert report.bytes_after < report.bytes_before
    assert report.file_bytes_after == os.path.getsize(tmp_path / "q.safetensors")
    assert report.file_bytes_before == os.path.getsize(src)
    table = report.table()
    assert str(report) == table
    lines = table.splitlines()
    assert (
        lines[0].split() == "tensor shape dtype before after format SQNR dB out dB action".split()
    )
    assert any(line.startswith("enc.0.weight") and "48x64" in line for line in lines)
    assert lines[-1].startswith("total: 10 tensors, 5 quantized, 5 kept")
    assert "weight SQNR" in lines[-1]
    json.dumps(report.to_dict())  # plain data


def test_min_sqnr_keeps_hard_to_quantize_tensors(tmp_path):
    rng = np.random.default_rng(3)
    easy = rng.standard_normal((32, 64)).astype(F32)
    hard = rng.standard_normal((32, 64)).astype(F32)
    hard[0, 0] = 500.0  # one outlier: one per-tensor scale is far too coarse for the rest
    src = tmp_path / "m.safetensors"
    ds.write(src, {"easy": easy, "hard": hard})
    # The budget compares each tensor's output SQNR on synthetic activations (a threshold that
    # every tensor meets measures them all).
    probe = ds.quantize_file(src, tmp_path / "probe.safetensors", per_channel=False,
                             min_sqnr=-1000.0)  # fmt: skip
    sq = {r.name: r.layer_sqnr_db for r in probe.rows}
    assert [r.action for r in probe.rows] == ["quantized", "quantized"]
    assert sq["hard"] < sq["easy"] - 10
    threshold = sq["easy"]  # exactly at the threshold still quantizes
    report = ds.quantize_file(
        src, tmp_path / "q.safetensors", per_channel=False, min_sqnr=threshold
    )
    rows = {r.name: r for r in report.rows}
    assert rows["easy"].action == "quantized"
    assert rows["hard"].action == "kept-low-sqnr"
    assert rows["hard"].layer_sqnr_db == pytest.approx(sq["hard"])
    assert rows["hard"].format == "float" and rows["easy"].format == "int8"
    assert rows["hard"].bytes_after == rows["hard"].bytes_before
    loaded = ds.load_quantized(tmp_path / "q.safetensors")
    assert isinstance(loaded["easy"], dynaq.PackedWeight)
    assert loaded["hard"].dtype == F32
    np.testing.assert_array_equal(loaded["hard"], hard)
    assert "1 kept for low SQNR" in report.totals()
    report = ds.quantize_file(
        src, tmp_path / "q.safetensors", per_channel=False, min_sqnr=threshold + 0.01
    )
    assert [r.action for r in report.rows] == ["kept-low-sqnr", "kept-low-sqnr"]
    assert report.quantized == [] and report.bytes_after == report.bytes_before
    assert ds.load_quantized(tmp_path / "q.safetensors").keys() == {"easy", "hard"}


def test_exclude_patterns(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    report = ds.quantize_file(src, tmp_path / "q.safetensors", exclude=["head.*", "*.1.*"])
    actions = {r.name: r.action for r in report.rows}
    assert actions["head.weight"] == "excluded" and actions["enc.1.weight"] == "excluded"
    assert actions["enc.1.bias"] == "kept"  # not a quantization candidate at all
    assert actions["enc.0.weight"] == "quantized"
    assert "2 excluded" in report.totals()
    # one pattern as a string is one pattern, not its characters
    report = ds.quantize_file(src, tmp_path / "q.safetensors", exclude="enc.0.weight")
    assert {r.name: r.action for r in report.rows}["enc.0.weight"] == "excluded"
    assert ds.read_raw(tmp_path / "q.safetensors")["head.weight"].dtype == "I8"
    with pytest.raises(TypeError, match="exclude"):
        ds.quantize_file(src, tmp_path / "q.safetensors", exclude=[1])


def test_progress_callback(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    calls = []
    ds.quantize_file(src, tmp_path / "q.safetensors", progress=lambda *a: calls.append(a))
    raw = ds.read_raw(src)
    total = sum(t.nbytes for t in raw.values())
    assert [c[2] for c in calls] == list(raw)
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == total
    assert all(c[1] == total for c in calls)


def test_quantize_in_place(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    expected = dynaq.pack_weight(ds.read(src)["enc.0.weight"])
    ds.quantize_file(src, src)
    assert ds.load_quantized(src)["enc.0.weight"] == expected
    assert _listdir(tmp_path) == ["m.safetensors"]


def test_saved_model_reproduces_outputs_exactly(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    floats = ds.read(src)
    dst = tmp_path / "q.safetensors"
    ds.quantize_file(src, dst)
    x = np.random.default_rng(5).standard_normal((3, 7, 64)).astype(F32)
    layer = ds.load_linear(dst, "enc.0.weight", "enc.0.bias")
    assert isinstance(layer, Linear)
    ref = Linear.from_float(floats["enc.0.weight"], floats["enc.0.bias"])
    assert_bitwise_equal(layer(x), ref(x))
    assert_bitwise_equal(layer(x), dynaq.linear(x, dynaq.pack_weight(floats["enc.0.weight"]),
                                                floats["enc.0.bias"]))  # fmt: skip
    tensors = ds.load_quantized(dst)
    tensor_gran = ds.load_linear(tensors, "enc.0.weight", granularity="tensor")
    assert tensor_gran.bias is None and tensor_gran.granularity == "tensor"
    assert_bitwise_equal(
        tensor_gran(x), dynaq.linear(x, tensors["enc.0.weight"], granularity="tensor")
    )
    # a layer survives pickling after loading, exactly
    assert_bitwise_equal(pickle.loads(pickle.dumps(layer))(x), layer(x))
    # a tensor kept in float is quantized at load time, per channel
    ds.quantize_file(src, dst, exclude=["enc.0.weight"])
    kept = ds.load_linear(dst, "enc.0.weight", "enc.0.bias")
    assert_bitwise_equal(kept(x), ref(x))
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        ds.load_linear(dst, "nope")
    with pytest.raises(KeyError, match="no bias tensor 'nope'"):
        ds.load_linear(dst, "enc.0.weight", "nope")


def test_recurrent_layer_from_a_quantized_file(tmp_path):
    rng = np.random.default_rng(7)
    hidden, inp = 9, 5
    params = {
        "weight_ih_l0": rng.uniform(-0.3, 0.3, (4 * hidden, inp)).astype(F32),
        "weight_hh_l0": rng.uniform(-0.3, 0.3, (4 * hidden, hidden)).astype(F32),
        "bias_ih_l0": rng.uniform(-0.3, 0.3, 4 * hidden).astype(F32),
        "bias_hh_l0": rng.uniform(-0.3, 0.3, 4 * hidden).astype(F32),
    }
    src, dst = tmp_path / "lstm.safetensors", tmp_path / "lstm.int8.safetensors"
    ds.write(src, params)
    ds.quantize_file(src, dst)
    from_file = LSTM(ds.load_quantized(dst))
    from_float = LSTM(params)
    x = rng.standard_normal((6, 2, inp)).astype(F32)
    out_file, (h_file, c_file) = from_file(x)
    out_float, (h_float, c_float) = from_float(x)
    assert_bitwise_equal(out_file, out_float)
    assert_bitwise_equal(c_file, c_float)


@needs_safetensors
def test_quantized_file_loads_with_safetensors(tmp_path):
    src = _write_model(tmp_path / "m.safetensors")
    dst = str(tmp_path / "q.safetensors")
    ds.quantize_file(src, dst)
    theirs = st_numpy.load_file(dst)
    ours = ds.read(dst)
    assert set(theirs) == set(ours)
    for k, v in ours.items():
        np.testing.assert_array_equal(theirs[k], v)
    with safe_open(dst, framework="np") as f:
        assert f.metadata()["dynaq.format"] == str(ds.FORMAT_VERSION)


def test_quantize_file_bad_sources_write_nothing(tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous contents")

    def check(src, exc, match):
        with pytest.raises(exc, match=match):
            ds.quantize_file(src, out)
        assert out.read_bytes() == b"previous contents"
        leftovers = [n for n in _listdir(tmp_path) if n.startswith(".") or n.endswith(".tmp")]
        assert leftovers == []

    check(tmp_path / "missing.safetensors", FileNotFoundError, "missing")
    (tmp_path / "text.safetensors").write_text("hello, I am not a model")
    check(tmp_path / "text.safetensors", ValueError, "text.safetensors: not a safetensors file")
    good = _write_model(tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    check(tmp_path / "cut.safetensors", ValueError, r"cut\.safetensors: tensor .*truncated")
    _raw_file(tmp_path / "q4.safetensors", {"w.q4": _t(dtype="Q4")}, GOOD_DATA)
    check(tmp_path / "q4.safetensors", ValueError, r"q4\.safetensors: tensor 'w\.q4'.*'Q4'")
    nan = np.ones((3, 3), F32)
    nan[1, 2] = np.nan
    ds.write(tmp_path / "nan.safetensors", {"a.ok": np.ones((2, 2), F32), "b.nan": nan})
    check(tmp_path / "nan.safetensors", ValueError, r"nan\.safetensors: tensor 'b\.nan'.*NaN")
    ds.write(tmp_path / "big.safetensors", {"huge": np.full((2, 2), 1e300)})
    check(tmp_path / "big.safetensors", ValueError, r"'huge' has values beyond float32")
    ds.write(tmp_path / "res.safetensors", {"w": np.ones((2, 2), F32), "w_scale": np.ones(2, F32)})
    check(tmp_path / "res.safetensors", ValueError, r"'w': its scales would be stored as 'w_scale'")
    ds.quantize_file(good, tmp_path / "already.safetensors")
    check(tmp_path / "already.safetensors", ValueError, "already quantized")
    with pytest.raises(ValueError, match="NaN"):
        ds.quantize_file(good, out, min_sqnr=float("nan"))
    # ... and excluding the NaN tensor makes the file quantizable
    ds.quantize_file(tmp_path / "nan.safetensors", out, exclude=["b.*"])
    assert ds.read_raw(out)["a.ok"].dtype == "I8"


def test_load_quantized_refuses_bad_files(tmp_path):
    good = _write_model(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="not a dynaq-quantized file"):
        ds.load_quantized(good)
    q = tmp_path / "q.safetensors"
    ds.quantize_file(good, q)
    tensors, meta = ds.read_raw(q), ds.read_metadata(q)

    def check(tensors, meta, match):
        path = tmp_path / "bad.safetensors"
        ds.write(path, tensors, meta)
        with pytest.raises(ValueError, match=match) as e:
            ds.load_quantized(path)
        assert "bad.safetensors" in str(e.value)

    check(tensors, {**meta, "dynaq.format": "4"}, "format 4 is not supported")
    check(tensors, {**meta, "dynaq.format": "x"}, "bad dynaq.format")
    check(tensors, {**meta, "dynaq.quantized": "{"}, "bad dynaq.quantized")
    names = json.loads(meta["dynaq.quantized"])
    check(
        tensors,
        {**meta, "dynaq.quantized": json.dumps([*names, "nope"])},
        r"\['nope'\] are missing",
    )
    missing = {k: v for k, v in tensors.items() if k != "enc.0.weight_scale"}
    check(missing, meta, r"'enc\.0\.weight': its scales .* are missing")
    wrong = dict(tensors)
    wrong["enc.0.weight_scale"] = np.ones(3, F32)
    check(wrong, meta, r"'enc\.0\.weight': scales of shape \[3\] do not fit")
    as_float = dict(tensors)
    as_float["enc.0.weight"] = np.ones((48, 64), F32)
    check(as_float, meta, r"'enc\.0\.weight': enc\.0\.weight must be an int8 array")
    out_of_range = dict(tensors)
    out_of_range["enc.0.weight"] = np.full((48, 64), -128, np.int8)
    check(out_of_range, meta, r"'enc\.0\.weight'.*\[-127, 127\]")
    bad_scale = dict(tensors)
    bad_scale["enc.0.weight_scale"] = np.zeros(48, F32)
    check(bad_scale, meta, r"'enc\.0\.weight'.*finite and positive")
