"""Shared fixtures: the ISA-path parametrization and ONNX Runtime reference helpers."""

from __future__ import annotations

import functools
import os
import sys
import warnings

import dynaq
import numpy as np
import pytest

# Make the helper modules importable whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from util import ALL_ISAS, AVAILABLE_ISAS, skip_reason  # noqa: E402

# When a hypothesis test fails, hypothesis' pytest plugin imports its patch writer, which imports
# libcst, which (with some mypy_extensions versions) emits a DeprecationWarning at import. Under
# `filterwarnings = error` that warning escapes the plugin's hook and aborts the whole session
# with INTERNALERROR instead of reporting the failure. Import it once here, warnings silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - optional dependency (libcst) missing
        pass


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Runs the test body with the kernel path capped at each ISA in turn."""
    name = request.param
    if name not in AVAILABLE_ISAS:
        pytest.skip(skip_reason(name))
    with dynaq.use_isa(name):
        assert dynaq.cpu_info()["active_isa"] == name
        yield name


@pytest.fixture
def available_isas() -> list[str]:
    """The paths this CPU has (scalar first), for tests that compare paths with each other."""
    return list(AVAILABLE_ISAS)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """No test may leak an ISA cap or a thread count into the next one."""
    cap = dynaq.get_max_isa()
    threads = dynaq.get_num_threads()
    yield
    if dynaq.get_max_isa() != cap:
        dynaq.set_max_isa(cap)
    if dynaq.get_num_threads() != threads:
        dynaq.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# ONNX Runtime helpers
# --------------------------------------------------------------------------------------------

try:  # pragma: no cover - depends on the environment
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    _ORT_ERROR = None
except Exception as e:  # pragma: no cover
    onnx = ort = TensorProto = helper = None
    _ORT_ERROR = f"onnxruntime/onnx not importable ({type(e).__name__}: {e})"


def _session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, opset: int):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # The oldest IR version that knows the opset (ONNX Runtime accepts all of these).
    model.ir_version = 8 if opset <= 18 else 10
    return model


@functools.cache
def _dql_session(opset: int = 13):
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])
    model = _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT8, None),
            helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, None),
        ],
        opset,
    )
    return _session(model)


def _onnx_type(dtype) -> int:
    return {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}[
        np.dtype(dtype)
    ]


@functools.cache
def _mmi_session(a_dtype: str, b_dtype: str, with_zp: bool):
    ta, tb = _onnx_type(a_dtype), _onnx_type(b_dtype)
    inputs = [
        helper.make_tensor_value_info("a", ta, None),
        helper.make_tensor_value_info("b", tb, None),
    ]
    names = ["a", "b"]
    if with_zp:
        inputs += [
            helper.make_tensor_value_info("az", ta, None),
            helper.make_tensor_value_info("bz", tb, None),
        ]
        names += ["az", "bz"]
    node = helper.make_node("MatMulInteger", names, ["y"])
    model = _model(
        [node], inputs, [helper.make_tensor_value_info("y", TensorProto.INT32, None)], 13
    )
    return _session(model)


class OrtRef:
    """ONNX Runtime as the oracle (CPUExecutionProvider, one thread)."""

    @staticmethod
    def dynamic_quantize_linear(x, opset: int = 13):
        x = np.ascontiguousarray(x, dtype=np.float32)
        y, s, z = _dql_session(opset).run(None, {"x": x})
        return y, np.float32(s), np.uint8(z)

    @staticmethod
    def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
        a = np.ascontiguousarray(a)
        b = np.ascontiguousarray(b)
        feeds = {"a": a, "b": b}
        with_zp = a_zero_point is not None or b_zero_point is not None
        if with_zp:
            az = np.zeros((), a.dtype) if a_zero_point is None else a_zero_point
            bz = np.zeros((), b.dtype) if b_zero_point is None else b_zero_point
            feeds["az"] = np.asarray(az, dtype=a.dtype)
            feeds["bz"] = np.asarray(bz, dtype=b.dtype)
        sess = _mmi_session(a.dtype.name, b.dtype.name, with_zp)
        return sess.run(None, feeds)[0]

    @staticmethod
    @functools.cache
    def matmul_integer_is_exact(a_dtype: str, b_dtype: str) -> bool:
        """Whether ONNX Runtime's MatMulInteger is exact for these operand types on this CPU.

        On x86-64 CPUs without VNNI, ONNX Runtime computes uint8 x int8 with ``vpmaddubsw``,
        which saturates each pair of products to int16: 255 * -128 twice gives -32768 instead
        of -65280. Such a result is no oracle for dynaq (which is exact); the tests then check
        dynaq against the exact int64 reference alone.
        """
        a = np.full((1, 2), np.iinfo(a_dtype).max, dtype=a_dtype)
        b = np.full((2, 1), np.iinfo(b_dtype).min, dtype=b_dtype)
        exact = int(a[0, 0]) * int(b[0, 0]) * 2
        return int(OrtRef.matmul_integer(a, b)[0, 0]) == exact


@pytest.fixture(scope="session")
def ort_ref() -> OrtRef:
    """ONNX Runtime reference helpers; skips the test when onnxruntime is missing."""
    if _ORT_ERROR is not None:
        pytest.skip(_ORT_ERROR)
    return OrtRef()
