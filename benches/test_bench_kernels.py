"""pytest-benchmark suite: the building blocks, one thread.

``dynaq.quantize`` (per tensor, per row), ``dynaq.dynamic_quantize_linear`` and
``dynaq.matmul_integer`` against numpy (and ONNX Runtime's ``DynamicQuantizeLinear`` when it is
installed). Run with ``python -m pytest benches/ --benchmark-only``; not part of the test run.
"""

from __future__ import annotations

from collections.abc import Iterator

import dynaq
import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

QUANT_SHAPES = [(512, 4096), (1, 4096)]
MATMUL_SHAPES = [(1, 768, 768), (128, 768, 768), (128, 3072, 768)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """dynaq and numpy's BLAS on one thread; the previous counts restored afterwards."""
    previous = dynaq.get_num_threads()
    dynaq.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        dynaq.set_num_threads(previous)


def _activations(rows: int, cols: int) -> np.ndarray:
    return np.random.default_rng([rows, cols]).standard_normal((rows, cols), dtype=np.float32)


def _numpy_dql(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """DynamicQuantizeLinear in plain numpy: the baseline a user would write."""
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, scale, zp


@pytest.mark.benchmark(group="quantize")
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_quantize(benchmark, shape, granularity):
    x = _activations(*shape)
    q = benchmark(dynaq.quantize, x, granularity=granularity)
    assert q.values.shape == shape


@pytest.mark.benchmark(group="dynamic_quantize_linear")
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dynamic_quantize_linear(benchmark, shape):
    x = _activations(*shape)
    y, _, _ = benchmark(dynaq.dynamic_quantize_linear, x)
    assert y.shape == shape


@pytest.mark.benchmark(group="dynamic_quantize_linear")
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dynamic_quantize_linear_numpy(benchmark, shape):
    x = _activations(*shape)
    y, _, _ = benchmark(_numpy_dql, x)
    assert y.shape == shape


@pytest.mark.benchmark(group="dynamic_quantize_linear")
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dynamic_quantize_linear_onnxruntime(benchmark, shape):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT8, None),
            helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the installed onnxruntime surely accepts
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = _activations(*shape)
    y, _, _ = benchmark(sess.run, None, {"x": x})
    assert onnx is not None and y.shape == shape


def _int8_operands(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([m, k, n])
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-127, 128, (k, n), dtype=np.int8)
    return a, b


@pytest.mark.benchmark(group="matmul_integer")
@pytest.mark.parametrize("mkn", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_integer(benchmark, mkn):
    a, b = _int8_operands(*mkn)
    out = benchmark(dynaq.matmul_integer, a, b, np.uint8(128))
    assert out.shape == (mkn[0], mkn[2]) and out.dtype == np.int32


@pytest.mark.benchmark(group="matmul_integer")
@pytest.mark.parametrize("mkn", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_integer_numpy_float32(benchmark, mkn):
    # numpy has no fast integer matmul; float32 through BLAS is what one would use instead
    # (exact while |sums| stay below 2**24, which these shapes do not guarantee).
    a, b = _int8_operands(*mkn)
    af = a.astype(np.float32) - 128
    bf = b.astype(np.float32)
    out = benchmark(np.matmul, af, bf)
    assert out.shape == (mkn[0], mkn[2])
