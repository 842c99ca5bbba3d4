"""The input contract of docs/CONTRACT.md, as a table of bad (and tricky but fine) inputs.

Every bad input must raise the documented exception type with a message naming the argument;
none may crash the process. Odd strides, Fortran order, read-only inputs, subnormals and huge
magnitudes must work and give what the C-contiguous copy gives.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import dynaq
import numpy as np
import pytest
from dynaq import safetensors as ds
from dynaq.layers import GRU, LSTM, Linear
from util import reseal, with_metadata

F32 = np.float32
U8 = np.uint8
I8 = np.int8

_rng = np.random.default_rng(1234)
W = _rng.standard_normal((6, 5)).astype(F32)
PW = dynaq.pack_weight(W)
X = _rng.standard_normal((3, 5)).astype(F32)
BLOB = PW.to_bytes()
A8 = _rng.integers(0, 256, (2, 3), dtype=U8)
B8 = _rng.integers(-128, 128, (3, 4), dtype=I8)
H = 4


def _rec_params(gates: int) -> dict[str, np.ndarray]:
    return {
        "weight_ih_l0": _rng.standard_normal((gates * H, 5)).astype(F32),
        "weight_hh_l0": _rng.standard_normal((gates * H, H)).astype(F32),
        "bias_ih_l0": _rng.standard_normal(gates * H).astype(F32),
        "bias_hh_l0": _rng.standard_normal(gates * H).astype(F32),
    }


LSTM_P = _rec_params(4)
GRU_P = _rec_params(3)
LSTM_M = LSTM(LSTM_P)
GRU_M = GRU(GRU_P)
LIN = Linear.from_float(W)
SEQ = _rng.standard_normal((3, 2, 5)).astype(F32)


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 1
    return bytes(b)


def _with_version(data: bytes, version: int) -> bytes:
    # The format version is the blob's "dynaq.format" metadata (the checksum recomputed, so
    # that only the version is wrong).
    return with_metadata(data, "dynaq.format", str(version))


def _with_shape(data: bytes, old: bytes, new: bytes) -> bytes:
    # A tensor's shape changed in the header, the checksum recomputed.
    assert data.count(old) == 1
    return reseal(data.replace(old, new))


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def _nan_at(shape, dtype=F32, value=np.nan):
    a = np.ones(shape, dtype)
    a.flat[a.size // 2] = value
    return a


# (id, callable, exception type, message regex naming the argument)
BAD = [
    # --- dynamic_quantize_linear: wrong dtypes, ragged, NaN / Inf ---
    ("dql-int64", lambda: dynaq.dynamic_quantize_linear(np.arange(4)), TypeError, r"^x .*int64"),
    ("dql-bool", lambda: dynaq.dynamic_quantize_linear(np.ones(4, bool)), TypeError, r"^x .*bool"),
    ("dql-complex", lambda: dynaq.dynamic_quantize_linear(np.ones(4, complex)), TypeError,
     r"^x .*complex"),
    ("dql-object", lambda: dynaq.dynamic_quantize_linear(np.array([1.0, None])), TypeError,
     r"^x .*object"),
    ("dql-str", lambda: dynaq.dynamic_quantize_linear(np.array(["a", "b"])), TypeError, r"^x "),
    ("dql-ragged-list", lambda: dynaq.dynamic_quantize_linear([[1.0], [1.0, 2.0]]), TypeError,
     r"^x "),
    ("dql-nan", lambda: dynaq.dynamic_quantize_linear(_nan_at(7)), ValueError, r"^x .*NaN"),
    ("dql-+inf", lambda: dynaq.dynamic_quantize_linear(_nan_at(7, value=np.inf)), ValueError,
     r"^x .*infinity"),
    ("dql--inf-float64", lambda: dynaq.dynamic_quantize_linear(_nan_at(7, np.float64, -np.inf)),
     ValueError, r"^x .*infinity"),
    pytest.param(
        "dql-float64-beyond-float32",
        lambda: dynaq.dynamic_quantize_linear(np.array([1.0, 1e300])),
        ValueError,
        r"^x ",
        id="dql-float64-beyond-float32",
    ),
    # --- quantize ---
    ("quantize-int", lambda: dynaq.quantize(np.arange(4)), TypeError, r"^x .*int"),
    ("quantize-bool-row", lambda: dynaq.quantize(np.ones((2, 2), bool), granularity="row"),
     TypeError, r"^x .*bool"),
    ("quantize-complex-sym", lambda: dynaq.quantize(np.ones(4, complex), symmetric=True),
     TypeError, r"^x .*complex"),
    ("quantize-granularity", lambda: dynaq.quantize(X, granularity="col"), ValueError,
     r"^granularity "),
    # Type errors raised by the native argument conversion name the argument in a note
    # ("while processing 'granularity'"), which pytest's match also searches.
    ("quantize-granularity-None", lambda: dynaq.quantize(X, granularity=None), TypeError,
     r"'granularity'"),
    ("quantize-row-scalar", lambda: dynaq.quantize(F32(1), granularity="row"), ValueError,
     r"^granularity='row' needs x"),
    ("quantize-row-nan", lambda: dynaq.quantize(_nan_at((2, 3)), granularity="row"), ValueError,
     r"^x .*NaN.*row 1"),
    ("quantize-sym-inf", lambda: dynaq.quantize(_nan_at((2, 3), value=-np.inf), symmetric=True),
     ValueError, r"^x .*infinity"),
    # --- matmul_integer ---
    ("mi-a-float32", lambda: dynaq.matmul_integer(A8.astype(F32), B8), TypeError,
     r"^a must be a uint8 or int8"),
    ("mi-b-int32", lambda: dynaq.matmul_integer(A8, B8.astype(np.int32)), TypeError,
     r"^b must be a uint8 or int8"),
    ("mi-a-bool", lambda: dynaq.matmul_integer(A8.astype(bool), B8), TypeError, r"^a .*bool"),
    ("mi-b-object", lambda: dynaq.matmul_integer(A8, B8.astype(object)), TypeError,
     r"^b .*object"),
    ("mi-a-scalar", lambda: dynaq.matmul_integer(U8(1), B8), ValueError,
     r"^a must have at least 1 dimension"),
    ("mi-inner-mismatch", lambda: dynaq.matmul_integer(A8, B8[:2]), ValueError,
     r"a of shape \(2, 3\) and b of shape \(2, 4\)"),
    ("mi-batch-mismatch",
     lambda: dynaq.matmul_integer(np.ones((2, 2, 3), U8), np.ones((3, 3, 4), I8)), ValueError,
     r"batch dimensions of a .* and b .* do not broadcast"),
    ("mi-azp-int8-for-uint8", lambda: dynaq.matmul_integer(A8, B8, a_zero_point=I8(1)),
     TypeError, r"^a_zero_point must have the dtype of its operand \(uint8\)"),
    ("mi-azp-int32-array",
     lambda: dynaq.matmul_integer(A8, B8, a_zero_point=np.array([1, 2], np.int32)), TypeError,
     r"^a_zero_point .*int32"),
    ("mi-azp-float", lambda: dynaq.matmul_integer(A8, B8, a_zero_point=1.0), TypeError,
     r"^a_zero_point .*float"),
    ("mi-azp-bool", lambda: dynaq.matmul_integer(A8, B8, a_zero_point=True), TypeError,
     r"^a_zero_point .*bool"),
    ("mi-azp-256", lambda: dynaq.matmul_integer(A8, B8, a_zero_point=256), ValueError,
     r"^a_zero_point = 256 is outside the range of uint8"),
    ("mi-azp-negative", lambda: dynaq.matmul_integer(A8, B8, a_zero_point=-1), ValueError,
     r"^a_zero_point = -1 is outside"),
    ("mi-bzp-128-int8", lambda: dynaq.matmul_integer(A8, B8, b_zero_point=128), ValueError,
     r"^b_zero_point = 128 is outside the range of int8"),
    ("mi-bzp-shape", lambda: dynaq.matmul_integer(A8, B8, b_zero_point=np.ones(3, I8)),
     ValueError, r"^b_zero_point of shape \(3,\)"),
    ("mi-int32-overflow",
     lambda: dynaq.matmul_integer(np.full((1, 70000), 255, U8), np.full((70000, 1), -128, I8)),
     OverflowError, r"outside int32"),
    # --- pack_weight ---
    ("pack-int64", lambda: dynaq.pack_weight(np.ones((2, 2), np.int64)), TypeError,
     r"^weight .*int64"),
    ("pack-bool", lambda: dynaq.pack_weight(np.ones((2, 2), bool)), TypeError, r"^weight .*bool"),
    ("pack-1d", lambda: dynaq.pack_weight(np.ones(3, F32)), ValueError, r"^weight must be 2-D"),
    ("pack-3d", lambda: dynaq.pack_weight(np.ones((2, 2, 2), F32)), ValueError,
     r"^weight must be 2-D"),
    ("pack-nan", lambda: dynaq.pack_weight(_nan_at((3, 2))), ValueError,
     r"^weight .*NaN.*row 1"),
    pytest.param(
        "pack-nan-unchecked-still-refused",
        lambda: dynaq.pack_weight(_nan_at((3, 2)), per_channel=False),
        ValueError,
        r"weight",
        id="pack-nan-unchecked-still-refused",
    ),
    ("pack--inf", lambda: dynaq.pack_weight(_nan_at((3, 2), value=-np.inf)), ValueError,
     r"^weight .*infinity"),
    ("pack-K-above-2^24", lambda: dynaq.pack_weight(np.broadcast_to(F32(1), (1, 2**24 + 1))),
     ValueError, r"^in_features = 16777217 exceeds the supported maximum 16777216"),
    # --- PackedWeight.from_quantized ---
    ("fq-values-float", lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), F32), [1, 1.0]),
     TypeError, r"^values must be an int8 array"),
    ("fq-values-uint8", lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), U8), [1, 1.0]),
     TypeError, r"^values .*uint8"),
    ("fq-values-1d", lambda: dynaq.PackedWeight.from_quantized(np.ones(2, I8), [1, 1.0]),
     ValueError, r"^values must be 2-D"),
    ("fq-values--128",
     lambda: dynaq.PackedWeight.from_quantized(np.full((2, 2), -128, I8), [1, 1.0]), ValueError,
     r"^values\[0, 0\] is -128"),
    ("fq-scales-int", lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), I8), [1, 2]),
     TypeError, r"^scales .*int"),
    ("fq-scales-shape",
     lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), I8), np.ones(3, F32)), ValueError,
     r"^scales must have shape \(2,\)"),
    ("fq-scales-nan",
     lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), I8), [1.0, np.nan]), ValueError,
     r"^scales must be finite and positive"),
    ("fq-scales-zero", lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), I8), [1.0, 0]),
     ValueError, r"^scales must be finite and positive"),
    ("fq-scales-negative",
     lambda: dynaq.PackedWeight.from_quantized(np.ones((2, 2), I8), [1.0, -1]), ValueError,
     r"^scales must be finite and positive"),
    ("fq-K-above-2^24",
     lambda: dynaq.PackedWeight.from_quantized(np.broadcast_to(I8(1), (1, 2**24 + 1)), F32(1)),
     ValueError, r"^in_features = 16777217 exceeds"),
    # --- PackedWeight.from_bytes: truncated, padded, bit-flipped, wrong version ---
    ("fb-empty", lambda: dynaq.PackedWeight.from_bytes(b""), ValueError,
     r"^PackedWeight bytes: .*\(0 bytes"),
    ("fb-truncated", lambda: dynaq.PackedWeight.from_bytes(BLOB[:-3]), ValueError,
     r"^PackedWeight bytes: .*truncated"),
    ("fb-padded", lambda: dynaq.PackedWeight.from_bytes(BLOB + b"\0"), ValueError,
     r"^PackedWeight bytes: .*(padded|trailing bytes)"),
    ("fb-bad-magic", lambda: dynaq.PackedWeight.from_bytes(b"NOTDYNAQ" + BLOB[8:]), ValueError,
     r"^PackedWeight bytes: not a safetensors file"),
    ("fb-version-0", lambda: dynaq.PackedWeight.from_bytes(_with_version(BLOB, 0)), ValueError,
     r"^PackedWeight bytes: format version 0 is not supported"),
    ("fb-version-future", lambda: dynaq.PackedWeight.from_bytes(_with_version(BLOB, 9)),
     ValueError, r"^PackedWeight bytes: format version 9 is not supported"),
    ("fb-flip-dims",
     lambda: dynaq.PackedWeight.from_bytes(_with_shape(BLOB, b'"shape":[6,5]', b'"shape":[6,4]')),
     ValueError, r"^PackedWeight bytes: tensor 'weight': .*needs 24 bytes"),
    ("fb-flip-payload", lambda: dynaq.PackedWeight.from_bytes(_flip(BLOB, len(BLOB) - 10)),
     ValueError, r"^PackedWeight bytes: checksum mismatch"),
    ("fb-flip-last-byte", lambda: dynaq.PackedWeight.from_bytes(_flip(BLOB, len(BLOB) - 1)),
     ValueError, r"^PackedWeight bytes: checksum mismatch"),
    ("fb-str", lambda: dynaq.PackedWeight.from_bytes("DYNAQPW"), TypeError, r"'data'"),
    ("fb-None", lambda: dynaq.PackedWeight.from_bytes(None), TypeError, r"'data'"),
    # --- linear ---
    ("linear-x-int32", lambda: dynaq.linear(np.ones((2, 5), np.int32), PW), TypeError,
     r"^x .*int32"),
    ("linear-x-complex", lambda: dynaq.linear(np.ones((2, 5), complex), PW), TypeError,
     r"^x .*complex"),
    ("linear-x-str", lambda: dynaq.linear(np.array([["a"] * 5]), PW), TypeError, r"^x "),
    ("linear-x-object", lambda: dynaq.linear(np.array([[None] * 5]), PW), TypeError,
     r"^x .*object"),
    ("linear-x-scalar", lambda: dynaq.linear(F32(1), PW), ValueError,
     r"^x has shape \(\): its last axis"),
    ("linear-K-mismatch", lambda: dynaq.linear(np.ones((2, 4), F32), PW), ValueError,
     r"^x has shape \(2, 4\).*in_features = 5"),
    ("linear-x-nan", lambda: dynaq.linear(_nan_at((3, 5)), PW), ValueError,
     r"^x contains NaN or infinity \(row 1\)"),
    ("linear-x-+inf-tensor",
     lambda: dynaq.linear(_nan_at((3, 5), value=np.inf), PW, granularity="tensor"), ValueError,
     r"^x contains NaN or infinity"),
    ("linear-granularity", lambda: dynaq.linear(X, PW, granularity="column"), ValueError,
     r"^granularity "),
    ("linear-bias-shape", lambda: dynaq.linear(X, PW, np.ones(5, F32)), ValueError,
     r"^bias must have shape \(6,\)"),
    ("linear-bias-int", lambda: dynaq.linear(X, PW, np.ones(6, np.int32)), TypeError,
     r"^bias .*int32"),
    ("linear-weight-int8", lambda: dynaq.linear(X, np.ones((6, 5), I8)), TypeError,
     r"^weight .*int8"),
    ("linear-weight-1d", lambda: dynaq.linear(X, np.ones(5, F32)), ValueError,
     r"^weight must be 2-D"),
    ("linear-out-float64", lambda: dynaq.linear(X, PW, out=np.empty((3, 6))), TypeError,
     r"^out must have dtype float32"),
    ("linear-out-list", lambda: dynaq.linear(X, PW, out=[0.0] * 18), TypeError,
     r"^out must be a numpy.ndarray"),
    ("linear-out-shape", lambda: dynaq.linear(X, PW, out=np.empty((3, 7), F32)), ValueError,
     r"^out must have shape \(3, 6\)"),
    ("linear-out-fortran", lambda: dynaq.linear(X, PW, out=np.empty((3, 6), F32, order="F")),
     ValueError, r"^out must be C-contiguous"),
    ("linear-out-strided", lambda: dynaq.linear(X, PW, out=np.empty((3, 12), F32)[:, ::2]),
     ValueError, r"^out must be C-contiguous"),
    ("linear-out-readonly", lambda: dynaq.linear(X, PW, out=_readonly(np.empty((3, 6), F32))),
     ValueError, r"^out is read-only"),
    # --- dynaq.layers ---
    ("Linear-float-weight", lambda: Linear(W), TypeError, r"^weight must be a PackedWeight"),
    ("Linear-from_float-1d", lambda: Linear.from_float(np.ones(3, F32)), ValueError,
     r"^weight must be 2-D"),
    ("Linear-bias-shape", lambda: Linear.from_float(W, np.ones(3, F32)), ValueError,
     r"^bias must have shape \(6,\)"),
    ("Linear-call-int", lambda: LIN(np.ones((2, 5), np.int64)), TypeError, r"^x .*int64"),
    ("Linear-call-K", lambda: LIN(np.ones((2, 4), F32)), ValueError, r"^x has shape \(2, 4\)"),
    ("Linear-out-readonly", lambda: LIN(X, out=_readonly(np.empty((3, 6), F32))), ValueError,
     r"^out is read-only"),
    ("Linear-calibrate-nan", lambda: Linear.from_float(W).calibrate([_nan_at((2, 5))]),
     ValueError, r"^samples\[0\] contains NaN"),
    ("Linear-from_bytes-truncated", lambda: Linear.from_bytes(LIN.to_bytes()[:-4]), ValueError,
     r"^Linear bytes: "),
    ("LSTM-params-list", lambda: LSTM([1, 2]), TypeError, r"^params must be a mapping"),
    ("LSTM-missing-weight_hh", lambda: LSTM({"weight_ih_l0": LSTM_P["weight_ih_l0"]}),
     ValueError, r"lack 'weight_hh_l0'"),
    ("LSTM-unknown-param", lambda: LSTM({**LSTM_P, "foo": np.ones(1, F32)}), ValueError,
     r"not understood: \['foo'\]"),
    ("LSTM-gate-count", lambda: LSTM({**LSTM_P, "weight_ih_l0": np.ones((15, 5), F32)}),
     ValueError, r"weight_ih_l0 has shape \(15, 5\)"),
    ("LSTM-weight_hh-shape", lambda: LSTM({**LSTM_P, "weight_hh_l0": np.ones((16, 3), F32)}),
     ValueError, r"weight_hh_l0 has shape \(16, 3\)"),
    ("LSTM-bias-shape", lambda: LSTM({**LSTM_P, "bias_ih_l0": np.ones(3, F32)}), ValueError,
     r"bias_ih_l0 must have shape \(16,\)"),
    ("LSTM-weight-int", lambda: LSTM({**LSTM_P, "weight_ih_l0": np.ones((16, 5), np.int64)}),
     TypeError, r"weight_ih_l0 .*int64"),
    pytest.param(
        "LSTM-weight-nan",
        lambda: LSTM({**LSTM_P, "weight_ih_l0": _nan_at((16, 5))}),
        ValueError,
        r"weight_ih",
        id="LSTM-weight-nan",
    ),
    ("LSTM-num_layers-0", lambda: LSTM(LSTM_P, num_layers=0), ValueError,
     r"^num_layers must be at least 1"),
    ("LSTM-granularity", lambda: LSTM(LSTM_P, granularity="col"), ValueError, r"^granularity "),
    ("LSTM-input-1d", lambda: LSTM_M(np.ones(5, F32)), ValueError, r"^input must be 3-D"),
    ("LSTM-input-4d", lambda: LSTM_M(np.ones((1, 1, 1, 5), F32)), ValueError,
     r"^input must be 3-D"),
    ("LSTM-input-features", lambda: LSTM_M(np.ones((3, 2, 4), F32)), ValueError,
     r"^input has 4 features"),
    ("LSTM-input-int", lambda: LSTM_M(np.ones((3, 2, 5), np.int32)), TypeError,
     r"^input .*int32"),
    ("LSTM-input-seq-0", lambda: LSTM_M(np.ones((0, 2, 5), F32)), ValueError,
     r"^input has a sequence length of 0"),
    pytest.param(
        "LSTM-input-nan",
        lambda: LSTM_M(_nan_at((3, 2, 5))),
        ValueError,
        r"^input ",
        id="LSTM-input-nan",
    ),
    ("LSTM-hx-list", lambda: LSTM_M(SEQ, [np.zeros((1, 2, 4))] * 2), TypeError,
     r"^hx for an LSTM must be a tuple"),
    ("LSTM-h0-shape", lambda: LSTM_M(SEQ, (np.zeros((1, 3, 4)), np.zeros((1, 2, 4)))),
     ValueError, r"^h_0 must have shape \(1, 2, 4\)"),
    ("LSTM-c0-shape", lambda: LSTM_M(SEQ, (np.zeros((1, 2, 4)), np.zeros((2, 2, 4)))),
     ValueError, r"^c_0 must have shape \(1, 2, 4\)"),
    ("LSTM-h0-int", lambda: LSTM_M(SEQ, (np.zeros((1, 2, 4), int), np.zeros((1, 2, 4)))),
     TypeError, r"^h_0 .*int"),
    ("LSTM-from_bytes-truncated", lambda: LSTM.from_bytes(LSTM_M.to_bytes()[:-5]), ValueError,
     r"^LSTM bytes: "),
    ("GRU-h0-shape", lambda: GRU_M(SEQ, np.zeros((1, 2, 5))), ValueError,
     r"^h_0 must have shape \(1, 2, 4\)"),
    ("GRU-input-features", lambda: GRU_M(np.ones((3, 2, 7), F32)), ValueError,
     r"^input has 7 features"),
    ("GRU-from_bytes-flipped", lambda: GRU.from_bytes(_flip(GRU_M.to_bytes(), 0)), ValueError,
     r"^GRU bytes: (not a safetensors file|header length)"),
]


_ParamType = type(pytest.param(None))


def _cases(table):
    """Rows ``(id, call, exc, match)`` or pytest.param(id, call, exc, match, id=..., marks=...)
    as parameters whose test id is the row's id."""
    out = []
    for c in table:
        if isinstance(c, _ParamType):
            out.append(pytest.param(*c.values[1:], id=c.id, marks=c.marks))
        else:
            out.append(pytest.param(*c[1:], id=c[0]))
    return out


@pytest.mark.parametrize("call, exc, match", _cases(BAD))
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_input_matrix_size():
    assert len({c.id if isinstance(c, _ParamType) else c[0] for c in BAD}) == len(BAD) >= 40


# --- bad safetensors files: read, quantize_file and the CLI ---


def _header_file(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _good_file() -> bytes:
    t = np.arange(12, dtype=F32).reshape(4, 3)
    return _header_file({"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}},
                        t.tobytes())


BAD_FILES = [
    ("empty", b"", r"not a safetensors file \(0 bytes"),
    ("3-bytes", b"\1\0\0", r"not a safetensors file \(3 bytes"),
    ("huge-header-length", struct.pack("<Q", 2**62) + b"{}", r"header length .* limit"),
    ("truncated-data", _good_file()[:-4], r"tensor 'a': .*truncated"),
    ("not-json", struct.pack("<Q", 4) + b"{abc", r"header is not valid JSON"),
    ("offsets-too-long",
     _header_file({"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 100]}},
                  b"\0" * 100), r"tensor 'a': .*needs 48 bytes"),
    ("unknown-dtype",
     _header_file({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     r"tensor 'a': unsupported dtype 'Q9'"),
    ("negative-shape",
     _header_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     r"tensor 'a': bad shape"),
    ("shape-beyond-2^64",
     _header_file({"a": {"dtype": "U8", "shape": [2**64, 1], "data_offsets": [0, 0]}}, b""),
     r"tensor 'a': bad shape \[18446744073709551616, 1\]"),
]


@pytest.mark.parametrize("data, match", [pytest.param(d, m, id=i) for i, d, m in BAD_FILES])
def test_safetensors_read_bad_file(tmp_path, data, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as e:
        ds.read(path)
    assert str(path) in str(e.value)  # the message names the file


@pytest.mark.parametrize("data, match", [pytest.param(d, m, id=i) for i, d, m in BAD_FILES[:4]])
def test_quantize_file_bad_file_writes_nothing(tmp_path, data, match):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(data)
    with pytest.raises(ValueError, match=match):
        ds.quantize_file(src, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_quantize_file_nan_tensor(tmp_path):
    src = tmp_path / "nan.safetensors"
    ds.write(src, {"w": _nan_at((2, 2))})
    with pytest.raises(ValueError, match=r"tensor 'w' contains NaN or infinity"):
        ds.quantize_file(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_read_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        ds.read(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        ds.read(tmp_path)


def test_cli_quantize_bad_file(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(_good_file()[:-4])
    dst = tmp_path / "out.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "dynaq", "quantize", str(src), str(dst)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("dynaq quantize: error: ")
    assert str(src) in r.stderr and "truncated" in r.stderr
    assert "Traceback" not in r.stderr
    assert not dst.exists()


# --- zero-size dimensions give empty results, as numpy would ---


def test_zero_size_results():
    y, s, z = dynaq.dynamic_quantize_linear(np.zeros((0, 3), F32))
    assert y.shape == (0, 3) and y.dtype == U8 and np.isfinite(s)
    q = dynaq.quantize(np.zeros((0, 3), F32), granularity="row")
    assert q.values.shape == (0, 3) and q.scale.shape == (0,)
    q = dynaq.quantize(np.zeros((3, 0), F32), granularity="row", symmetric=True)
    assert q.values.shape == (3, 0) and q.scale.shape == (3,)
    assert dynaq.linear(np.zeros((0, 5), F32), PW).shape == (0, 6)
    assert dynaq.linear(np.zeros((2, 0, 5), F32), PW).shape == (2, 0, 6)
    empty_n = dynaq.pack_weight(np.zeros((0, 5), F32))
    assert empty_n.shape == (0, 5)
    assert dynaq.linear(X, empty_n).shape == (3, 0)
    # K = 0: x @ w.T is all zeros, plus the bias.
    b = np.arange(6, dtype=F32)
    y = dynaq.linear(np.zeros((3, 0), F32), dynaq.pack_weight(np.zeros((6, 0), F32)), b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (3, 6)))
    r = dynaq.matmul_integer(np.ones((0, 3), U8), np.ones((3, 2), U8))
    assert r.shape == (0, 2) and r.dtype == np.int32
    r = dynaq.matmul_integer(np.ones((2, 0), U8), np.ones((0, 2), U8))
    np.testing.assert_array_equal(r, np.zeros((2, 2), np.int32))
    out, (h, c) = LSTM_M(np.zeros((3, 0, 5), F32))
    assert out.shape == (3, 0, H) and h.shape == (1, 0, H) and c.shape == (1, 0, H)


# --- odd strides, Fortran order, negative strides, read-only: same as the contiguous copy ---

_BASE = _rng.standard_normal((8, 12)).astype(F32)
VIEWS = {
    "fortran": np.asfortranarray(_BASE[:, :5]),
    "every-other-column": _BASE[:, ::2][:, :5],
    "negative-rows": _BASE[::-1, :5],
    "negative-columns": _BASE[:, 5:0:-1],
    "transposed": np.ascontiguousarray(_BASE[:5, :8]).T,
    "read-only": _readonly(_BASE[:, :5]),
    "float64-strided": _BASE.astype(np.float64)[:, 1::2][:, :5],
}


def _same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif isinstance(a, dynaq.QuantizedTensor):
        _same((a.values, a.scale, a.zero_point), (b.values, b.scale, b.zero_point))
    else:
        np.testing.assert_array_equal(a, b, strict=True)


_OPS = {
    "linear": lambda v: dynaq.linear(v, PW, np.arange(6, dtype=F32)),
    "linear-tensor": lambda v: dynaq.linear(v, PW, granularity="tensor"),
    "quantize-row": lambda v: dynaq.quantize(v, granularity="row"),
    "quantize-sym": lambda v: dynaq.quantize(v, symmetric=True),
    "dql": lambda v: dynaq.dynamic_quantize_linear(v),
    "pack_weight": lambda v: dynaq.pack_weight(v).to_bytes(),
    "Linear": lambda v: LIN(v),
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("op", list(_OPS))
def test_views_equal_contiguous_copy(op, view):
    v = VIEWS[view]
    c = np.ascontiguousarray(v)
    assert v.flags.c_contiguous is False or not v.flags.writeable
    got, want = _OPS[op](v), _OPS[op](c)
    if isinstance(got, bytes):
        assert got == want
    else:
        _same(got, want)


@pytest.mark.parametrize("view", ["fortran", "negative", "strided", "read-only"])
def test_matmul_integer_views(view):
    a = _rng.integers(0, 256, (6, 10), dtype=U8)
    b = _rng.integers(-128, 128, (10, 7), dtype=I8)
    make = {
        "fortran": np.asfortranarray,
        "negative": lambda m: m[::-1, ::-1].copy()[::-1, ::-1],
        "strided": lambda m: np.repeat(m, 2, axis=1)[:, ::2],
        "read-only": _readonly,
    }[view]
    av, bv = make(a), make(b)
    assert not (av.flags.c_contiguous and bv.flags.c_contiguous) or view == "read-only"
    np.testing.assert_array_equal(av, a)
    want = dynaq.matmul_integer(a, b, 3, np.arange(7, dtype=I8))
    got = dynaq.matmul_integer(av, bv, 3, np.arange(7, dtype=I8))
    np.testing.assert_array_equal(got, want, strict=True)
    np.testing.assert_array_equal(
        want, (a.astype(np.int64) - 3) @ (b.astype(np.int64) - np.arange(7))
    )


def test_readonly_weight_and_bias_and_from_quantized_views():
    wv, bv = _readonly(W), _readonly(np.arange(6, dtype=F32))
    assert dynaq.pack_weight(wv) == PW
    _same(dynaq.linear(X, wv, bv), dynaq.linear(X, PW, np.arange(6, dtype=F32)))
    values, scales = PW.unpack()
    fortran = np.asfortranarray(values)
    assert dynaq.PackedWeight.from_quantized(fortran, scales[::-1][::-1]) == PW
    assert dynaq.PackedWeight.from_quantized(_readonly(values), _readonly(scales)) == PW


# --- values that are fine: subnormals, 1e38 magnitudes, out= aliasing x ---


def test_subnormals_are_fine():
    tiny = np.array([[1e-45, -1e-44, 0.0, 1e-40, -3e-39]], F32)
    assert np.all(np.abs(tiny[tiny != 0]) < np.finfo(F32).tiny)  # really subnormal
    y, s, z = dynaq.dynamic_quantize_linear(tiny)
    assert np.isfinite(s) and s > 0
    q = dynaq.quantize(tiny, granularity="row")
    assert np.all(np.isfinite(q.scale)) and np.all(q.scale > 0)
    q = dynaq.quantize(tiny, symmetric=True)
    assert np.isfinite(q.scale) and q.scale > 0
    assert np.all(np.isfinite(dynaq.linear(tiny, PW)))
    pw = dynaq.pack_weight(np.repeat(tiny, 3, axis=0))
    assert np.all(np.isfinite(pw.scales)) and np.all(pw.scales > 0)


def test_1e38_magnitudes_are_fine():
    big = np.array([[1e38, -1e38, 3e38, -3.4e38, 0.0]], F32)
    y, s, z = dynaq.dynamic_quantize_linear(big[:, :2])
    assert np.isfinite(s)
    q = dynaq.quantize(big, granularity="row")  # range wider than float32: still finite
    assert np.all(np.isfinite(q.scale))
    q = dynaq.quantize(big, symmetric=True)
    assert np.isfinite(q.scale)
    pw = dynaq.pack_weight(np.repeat(big, 2, axis=0))
    assert np.all(np.isfinite(pw.scales))
    y = dynaq.linear(np.ones((2, 5), F32), pw)
    assert y.dtype == F32 and y.shape == (2, 2)


def test_out_may_alias_input():
    x = _rng.standard_normal((3, 6)).astype(F32)
    pw = dynaq.pack_weight(_rng.standard_normal((6, 6)).astype(F32))
    want = dynaq.linear(x, pw)
    got = dynaq.linear(x, pw, out=x)
    assert got is x
    np.testing.assert_array_equal(got, want)
