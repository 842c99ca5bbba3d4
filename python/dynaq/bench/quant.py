"""The activation quantization section: ``dynaq.quantize`` and
``dynaq.dynamic_quantize_linear`` (and ONNX Runtime's ``DynamicQuantizeLinear``) on one thread,
in GB/s of float32 input, or microseconds per call for a single row."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

import dynaq
from dynaq._text import Progress

from .config import MAX_REL_ERROR, SETTLE_S, BenchConfig
from .peers import OnnxruntimeLib, ort_model, ort_session
from .sweep import rel_error
from .timing import measure

__all__ = ["run_quant"]


def run_quant(
    cfg: BenchConfig, libs: list[str], progress: Progress, ort_lib: Optional[OnnxruntimeLib]
) -> dict[str, Any]:
    """The ``quant`` entry of a result: each operation on each of ``cfg.quant_shapes``, one
    thread, checked by dequantizing (one :class:`Progress` step each), and whether dynaq's
    ``dynamic_quantize_linear`` is bit-identical to ONNX Runtime's ``DynamicQuantizeLinear``."""
    progress.section(
        "activation quantization, 1 thread: " + ", ".join(f"{r}x{c}" for r, c in cfg.quant_shapes)
    )
    time.sleep(SETTLE_S)  # after the multi-threaded sweep, let other thread pools go idle
    session = None
    if ort_lib is not None:
        from onnx import TensorProto, helper

        model = ort_model(
            [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["R", "C"])],
            [
                helper.make_tensor_value_info("y", TensorProto.UINT8, ["R", "C"]),
                helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("y_zero_point", TensorProto.UINT8, []),
            ],
            [],
        )
        session = ort_session(ort_lib.ort, model.SerializeToString(), 1)

    def dqrel_error(values: np.ndarray, scale: Any, zp: Any, x: np.ndarray, per_row: bool):
        s = np.asarray(scale, np.float64)
        z = np.asarray(zp, np.float64)
        if per_row:
            s, z = s[..., None], z[..., None]
        return rel_error((values.astype(np.float64) - z) * s, x.astype(np.float64))

    ops: list[tuple[str, str, Callable[[np.ndarray], Callable[[], Any]], Callable[..., Any]]] = []
    if "dynaq" in libs:

        def check_qt(q: Any, x: np.ndarray) -> float:
            return dqrel_error(q.values, q.scale, q.zero_point, x, q.granularity == "row")

        def check_tuple(r: Any, x: np.ndarray) -> float:
            return dqrel_error(r[0], r[1], r[2], x, False)

        ops += [
            (
                "quantize(granularity='tensor')",
                "dynaq",
                lambda x: lambda: dynaq.quantize(x, granularity="tensor"),
                check_qt,
            ),
            (
                "quantize(granularity='row')",
                "dynaq",
                lambda x: lambda: dynaq.quantize(x, granularity="row"),
                check_qt,
            ),
            (
                "dynamic_quantize_linear",
                "dynaq",
                lambda x: lambda: dynaq.dynamic_quantize_linear(x),
                check_tuple,
            ),
        ]
    if session is not None:
        run = session.run
        ops.append(
            (
                "DynamicQuantizeLinear",
                "onnxruntime",
                lambda x: lambda: run(None, {"x": x}),
                lambda r, x: dqrel_error(r[0], r[1], r[2], x, False),
            )
        )

    results: list[dict[str, Any]] = []
    matches: dict[str, Optional[bool]] = {}
    previous = dynaq.get_num_threads()
    dynaq.set_num_threads(1)  # ONNX Runtime runs on one thread here too
    try:
        for rows, cols in cfg.quant_shapes:
            x = np.random.default_rng([cfg.seed, rows, cols, 1]).standard_normal(
                (rows, cols), dtype=np.float32
            )
            outputs: dict[str, Any] = {}
            for op, lib, make, check in ops:
                progress.step(f"{op} {lib} {rows}x{cols}")
                entry: dict[str, Any] = {"op": op, "lib": lib, "rows": rows, "cols": cols}
                try:
                    fn = make(x)
                    out = fn()
                    err = float(check(out, x))
                    outputs[f"{lib}:{op}"] = out
                    entry["rel_error"] = err
                    entry["valid"] = bool(err < MAX_REL_ERROR)
                    if entry["valid"]:
                        timing = measure(fn, cfg.min_reps, cfg.min_time, cfg.max_reps)
                        entry.update(timing)
                        entry["gbps"] = 4.0 * x.size / timing["median_s"] / 1e9
                        entry["us_per_call"] = timing["median_s"] * 1e6
                    else:
                        entry["error"] = f"dequantized relative error {err:.3g}"
                except Exception as e:
                    entry.update(valid=False, error=f"{type(e).__name__}: {e}")
                results.append(entry)
            a = outputs.get("dynaq:dynamic_quantize_linear")
            o = outputs.get("onnxruntime:DynamicQuantizeLinear")
            if a is not None and o is not None:
                matches[f"{rows}x{cols}"] = bool(
                    np.array_equal(a[0], o[0])
                    and np.float32(a[1]) == np.float32(o[1])
                    and np.uint8(a[2]) == np.uint8(o[2])
                )
    finally:
        dynaq.set_num_threads(previous)
    return {"threads": 1, "results": results, "dql_matches_onnxruntime": matches}
