"""The libraries timed against each other: one adapter per library (dynaq, numpy, torch,
onnxruntime) with the same steps (prepare a layer, time calls on it, release it), and which of
them can run here.

Only dynaq and numpy are imported at the top: torch and onnxruntime load when their adapter is
made, after the machine information has read numpy's BLAS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

import numpy as np

import dynaq

__all__ = [
    "LIBS",
    "LIB_ALIASES",
    "W4_PAIRS",
    "W4_MAX_REL_ERROR",
    "DynaqW4Lib",
    "OrtW4Lib",
    "LIB_CLASSES",
    "SHORT",
    "DynaqLib",
    "Lib",
    "NumpyLib",
    "OnnxruntimeLib",
    "TorchLib",
    "available_libs",
    "lib_missing",
    "ort_model",
    "ort_session",
    "quiet_python_logging",
]

LIBS = (
    "dynaq",
    "numpy",
    "torch",
    "onnxruntime",
    "dynaq-w4",
    "dynaq-w4g128",
    "dynaq-w4ch",
    "ort-w4",
    "ort-w4g128",
)
LIB_ALIASES = {"ort": "onnxruntime", "np": "numpy"}
# Column titles in the report.
SHORT = {
    "dynaq": "dynaq",
    "numpy": "numpy",
    "torch": "torch",
    "onnxruntime": "ort",
    "dynaq-w4": "dq w4",
    "dynaq-w4g128": "dq w4g128",
    "dynaq-w4ch": "dq w4ch",
    "ort-w4": "ort w4",
    "ort-w4g128": "ort w4g128",
}
#: The 4-bit columns: each dynaq one with its int8 baseline and the peer of the same block size
#: (None: no peer quantizes 4-bit weights per channel with int8 activations).
W4_PAIRS = {
    "dynaq-w4": ("dynaq", "ort-w4"),
    "dynaq-w4g128": ("dynaq", "ort-w4g128"),
    "dynaq-w4ch": ("dynaq", None),
}
#: Relative error of the output a 4-bit column may have and still count as right: 4-bit
#: weights are ~0.07 (group 32) to ~0.14 (per channel) from float on this data.
W4_MAX_REL_ERROR = 0.25


class Lib:
    """One library's linear layer: set up per (K, N) outside the timings, then timed calls."""

    name = ""
    #: How far from the float result its output may be (relative error).
    max_error: Optional[float] = None

    def info(self) -> dict[str, Any]:
        """Versions and settings to report."""
        return {}

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        """Builds the layer for weight ``w`` (N, K) and bias ``b`` (N,)."""

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        """Thread count (and modes) in force while a cell is timed."""
        yield

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        """The timed call on input ``x`` (M, K)."""
        raise NotImplementedError

    def to_numpy(self, out: Any) -> np.ndarray:
        """The call's result as a float array, for validation."""
        return np.asarray(out)

    def release(self) -> None:
        """Drops the per-(K, N) state."""


class DynaqLib(Lib):
    name = "dynaq"

    def __init__(self) -> None:
        self.pw: Optional[dynaq.PackedWeight] = None
        self.b: Optional[np.ndarray] = None

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        self.pw = dynaq.pack_weight(w)
        self.b = b

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        previous = dynaq.get_num_threads()
        dynaq.set_num_threads(threads)
        try:
            yield
        finally:
            dynaq.set_num_threads(previous)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        pw, b = self.pw, self.b
        return lambda: dynaq.linear(x, pw, b)

    def release(self) -> None:
        self.pw = self.b = None


class DynaqW4Lib(DynaqLib):
    """dynaq with 4-bit weights (least-squares grids, groups of ``group`` input features, or
    per channel when None)."""

    name = "dynaq-w4"
    group: Optional[int] = 32
    max_error = W4_MAX_REL_ERROR

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        self.pw = dynaq.pack_weight(w, bits=4, group_size=self.group)
        self.b = b


class DynaqW4G128Lib(DynaqW4Lib):
    name = "dynaq-w4g128"
    group = 128


class DynaqW4ChLib(DynaqW4Lib):
    name = "dynaq-w4ch"
    group = None


class NumpyLib(Lib):
    name = "numpy"

    def __init__(self) -> None:
        self.w_t: Optional[np.ndarray] = None
        self.b: Optional[np.ndarray] = None

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        self.w_t = w.T  # a view: BLAS multiplies by the transpose directly, as `x @ w.T` does
        self.b = b

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        from threadpoolctl import threadpool_limits  # type: ignore[import]

        with threadpool_limits(limits=threads, user_api="blas"):
            yield

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        w_t, b = self.w_t, self.b
        return lambda: x @ w_t + b

    def release(self) -> None:
        self.w_t = self.b = None


class TorchLib(Lib):
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.model: Any = None

    def info(self) -> dict[str, Any]:
        q = self.torch.backends.quantized
        return {
            "version": str(self.torch.__version__),
            "quantized_engine": str(q.engine),
            "supported_engines": [str(e) for e in q.supported_engines],
        }

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        torch = self.torch
        nn = torch.nn
        # torch.ao.quantization is deprecated in recent torch and warns; users of the bench
        # (and the test suite, which turns warnings into errors) need not see that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # skip_init: no random initialization of a weight that is overwritten right away.
            lin = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            # inplace: no deep copy of the float model (180 MB at 4096 x 11008).
            self.model = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8, inplace=True
            )

    @contextlib.contextmanager
    def running(self, threads: int) -> Iterator[None]:
        torch = self.torch
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                yield
        finally:
            torch.set_num_threads(previous)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        model, from_numpy = self.model, self.torch.from_numpy
        return lambda: model(from_numpy(x))

    def to_numpy(self, out: Any) -> np.ndarray:
        return np.asarray(out.numpy())

    def release(self) -> None:
        self.model = None


@contextlib.contextmanager
def quiet_python_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger; it is noise here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def ort_model(
    nodes: list, inputs: list, outputs: list, initializers: list, domains: Sequence[str] = ()
) -> Any:
    """An ONNX model (opset 17, and version 1 of each custom ``domains``) of one graph made of
    ``nodes``."""
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    # The oldest IR version that knows opset 17: an onnx newer than the onnxruntime installed
    # would otherwise write an IR version that runtime refuses.
    model.ir_version = 8
    return model


def ort_session(ort: Any, model: Any, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``model`` (path or bytes) on ``threads`` threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class _OrtLib(Lib):
    """What the ONNX Runtime libraries share: one session per thread count, fed ``x``."""

    def __init__(self) -> None:
        import onnx
        import onnxruntime  # type: ignore[import]

        self.onnx = onnx
        self.ort = onnxruntime
        self.sessions: dict[int, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"version": str(self.ort.__version__), "onnx_version": str(self.onnx.__version__)}

    def open_sessions(self, path: str, threads: Sequence[int]) -> None:
        """A session of the model at ``path`` for each thread count (then the file is removed)."""
        self.sessions = {t: ort_session(self.ort, path, t) for t in threads}
        os.remove(path)

    def call(self, x: np.ndarray, threads: int) -> Callable[[], Any]:
        run, feed = self.sessions[threads].run, {"x": x}
        return lambda: run(None, feed)[0]

    def release(self) -> None:
        self.sessions = {}


class OnnxruntimeLib(_OrtLib):
    name = "onnxruntime"

    def __init__(self) -> None:
        super().__init__()
        with quiet_python_logging():
            from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import]

        self.quantize_dynamic = quantize_dynamic
        self.qint8 = QuantType.QInt8

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        from onnx import TensorProto, helper

        n, k = w.shape
        # TensorProto from raw bytes: numpy_helper.from_array is several times slower for a
        # 45M-element weight, and this is setup time the user waits for.
        weight = TensorProto(
            name="W",
            data_type=TensorProto.FLOAT,
            dims=[k, n],
            raw_data=np.ascontiguousarray(w.T).tobytes(),
        )
        bias = TensorProto(name="bias", data_type=TensorProto.FLOAT, dims=[n], raw_data=b.tobytes())
        model = ort_model(
            [
                helper.make_node("MatMul", ["x", "W"], ["xw"]),
                helper.make_node("Add", ["xw", "bias"], ["y"]),
            ],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            [weight, bias],
        )
        float_path = os.path.join(tmp, f"linear_{k}x{n}.onnx")
        quant_path = os.path.join(tmp, f"linear_{k}x{n}.qint8.onnx")
        self.onnx.save(model, float_path)
        del model, weight
        with quiet_python_logging():
            self.quantize_dynamic(float_path, quant_path, weight_type=self.qint8)
        os.remove(float_path)
        self.open_sessions(quant_path, threads)


def pack_4bit_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w`` (N, K) as ONNX Runtime's ``MatMulNBits`` takes it: asymmetric min-max 4-bit
    blocks of ``block`` along K (``scale = (max - min) / 15`` over the range widened to 0, zero
    point ``round(-min / scale)``), packed two per byte, low nibble first: ``B`` (N, K/block,
    block/2), ``scales`` (N * K/block,) float32, ``zero_points`` (N, ceil(K/block / 2)) uint8."""
    n, k = w.shape
    kb = -(-k // block)
    padded = np.zeros((n, kb * block), np.float32)
    padded[:, :k] = w
    g = padded.reshape(n, kb, block)
    lo = np.minimum(g.min(-1), 0)
    hi = np.maximum(g.max(-1), 0)
    scale = (hi - lo) / 15
    scale[scale == 0] = 1.0
    zp = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.round(g / scale[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    zz = np.zeros((n, kb + (kb & 1)), np.uint8)
    zz[:, :kb] = zp
    zps = (zz[:, 0::2] | (zz[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(np.float32).reshape(-1), zps


class OrtW4Lib(_OrtLib):
    """ONNX Runtime's ``MatMulNBits`` (com.microsoft): 4-bit blocks of ``block`` along K,
    ``accuracy_level=4`` (int8 activations per block), bias added by an ``Add``."""

    name = "ort-w4"
    block = 32
    max_error = W4_MAX_REL_ERROR

    def prepare(self, w: np.ndarray, b: np.ndarray, threads: Sequence[int], tmp: str) -> None:
        from onnx import TensorProto, helper

        n, k = w.shape
        packed, scales, zps = pack_4bit_blocks(w, self.block)

        def init(name: str, a: np.ndarray, dtype: int) -> Any:
            return TensorProto(name=name, data_type=dtype, dims=list(a.shape), raw_data=a.tobytes())

        inits = [
            init("B", packed, TensorProto.UINT8),
            init("scales", scales, TensorProto.FLOAT),
            init("zp", zps, TensorProto.UINT8),
            init("bias", b, TensorProto.FLOAT),
        ]
        node = helper.make_node(
            "MatMulNBits",
            ["x", "B", "scales", "zp"],
            ["xw"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=self.block,
            accuracy_level=4,
        )
        model = ort_model(
            [node, helper.make_node("Add", ["xw", "bias"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            inits,
            domains=["com.microsoft"],
        )
        path = os.path.join(tmp, f"linear_{k}x{n}.w4b{self.block}.onnx")
        self.onnx.save(model, path)
        del model, inits
        self.open_sessions(path, threads)


class OrtW4G128Lib(OrtW4Lib):
    name = "ort-w4g128"
    block = 128


LIB_CLASSES: dict[str, type[Lib]] = {
    "dynaq": DynaqLib,
    "numpy": NumpyLib,
    "torch": TorchLib,
    "onnxruntime": OnnxruntimeLib,
    "dynaq-w4": DynaqW4Lib,
    "dynaq-w4g128": DynaqW4G128Lib,
    "dynaq-w4ch": DynaqW4ChLib,
    "ort-w4": OrtW4Lib,
    "ort-w4g128": OrtW4G128Lib,
}


def lib_missing(name: str) -> Optional[str]:
    """Why library ``name`` cannot be timed here (None when it can)."""
    try:
        if name == "numpy":
            import threadpoolctl  # noqa: F401  # type: ignore[import]
        elif name == "torch":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import torch
            if str(torch.backends.quantized.engine) == "none":
                return "torch has no quantized engine on this machine"
        elif name in ("onnxruntime", "ort-w4", "ort-w4g128"):
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401  # type: ignore[import]
    except ImportError as e:
        hint = {
            "numpy": "threadpoolctl, to set numpy's BLAS thread count",
            "torch": "torch",
        }.get(name, "onnxruntime and onnx")
        return f"not installed ({e}); needs {hint}"
    return None


def available_libs() -> dict[str, Optional[str]]:
    """``{library: None if it can be timed, else the reason it cannot}``."""
    return {name: lib_missing(name) for name in LIBS}
