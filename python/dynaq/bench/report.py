"""A run's result as text (:func:`format_report`) and as JSON (:func:`write_json`)."""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from dynaq._text import format_table

from .machine import BLAS_ENV
from .peers import SHORT, W4_PAIRS

__all__ = ["format_report", "write_json"]


def _fmt_ratio(r: Optional[float]) -> str:
    return f"{r:.2f}x" if r else "-"


def _header(doc: dict[str, Any]) -> list[str]:
    """What ran on what: the machine, each library's version and kernel, the re-execution."""
    mach, dq, npi = doc["machine"], doc["dynaq"], doc["numpy"]
    lines = [
        f"dynaq bench: {mach['cpu_model']}, {mach['physical_cores']} physical cores, "
        f"{mach['logical_cpus']} logical CPUs, {mach['arch']}, Python {mach['python']}",
        f"  dynaq {dq['version']}: path {dq['active_isa']}"
        + (f" (capped with --isa {dq['isa_cap']})" if dq.get("isa_cap") else "")
        + f", gemm kernel {dq['gemm_kernel']}, default threads {dq['default_threads']}",
    ]
    blas = npi["blas"]
    if blas:
        for p in blas:
            lines.append(
                f"  numpy {npi['version']}: BLAS {p['internal_api']} {p['version']}, kernel "
                f"{p['architecture']} ({p['threading_layer']})"
            )
    else:
        lines.append(f"  numpy {npi['version']}: BLAS unknown (threadpoolctl not installed)")
    if doc.get("torch"):
        lines.append(
            f"  torch {doc['torch']['version']}: quantize_dynamic qint8, quantized engine "
            f"{doc['torch']['quantized_engine']}"
        )
    if doc.get("onnxruntime"):
        o = doc["onnxruntime"]
        lines.append(
            f"  onnxruntime {o['version']} (onnx {o['onnx_version']}): quantize_dynamic QInt8, "
            "CPUExecutionProvider"
        )
    libs = doc.get("libs", [])
    if any(lib in W4_PAIRS for lib in libs):
        lines.append(
            "  dq w4, dq w4g128, dq w4ch: dynaq with 4-bit weights (least-squares grids) in "
            "groups of 32, 128, per channel; kernels "
            f"{dq.get('kernels', {}).get('gemm_int4', '?')}, one row "
            f"{dq.get('kernels', {}).get('gemv_int4', '?')}"
        )
    if any(lib.startswith("ort-w4") for lib in libs):
        lines.append(
            "  ort w4, ort w4g128: onnxruntime MatMulNBits, 4-bit blocks of 32, 128 (min-max), "
            "accuracy_level 4 (int8 activations per block)"
        )
    for lib, why in doc.get("unavailable", {}).items():
        lines.append(f"  {lib}: skipped, {why}")
    re = doc.get("reexec")
    if re and re.get("removed"):
        removed = ", ".join(f"{k}={v}" for k, v in re["removed"].items())
        lines.append(f"  re-executed without {removed} (OpenBLAS reads them when it loads)")
    if re and re.get("numpy_coretype"):
        coretype = re["numpy_coretype"]
        lines.append(f"  numpy run with OPENBLAS_CORETYPE={coretype} (--numpy-coretype)")
    elif not re:
        for var in BLAS_ENV:
            if doc["env"].get(var) is not None:
                lines.append(f"  WARNING: {var}={doc['env'][var]} is set: numpy may run slower")
    return lines


def _gemm_lines(doc: dict[str, Any]) -> list[str]:
    """The GOP/s table of the linear-layer sweep, its geometric means and flagged cells."""
    cfg, libs, cells = doc["config"], doc["libs"], doc["gemm"]
    lines = [
        "",
        "Linear layer, fp32 in -> fp32 out (quantization included): GOP/s = 2*M*K*N / "
        f"median time; >= {cfg['min_reps']} calls and >= {cfg['min_time']:g} s each.",
    ]
    if cfg.get("rotate", 1) > 1:
        lines.append(
            f"Each library holds {cfg['rotate']} weights per shape (different data) and the "
            "timed calls go round them: weights beyond the last-level cache come from DRAM."
        )
    header = ["M", "K", "N", "thr", *(SHORT[lib] for lib in libs), "dq/np", "dq/best", "best peer"]
    rows: list[list[str]] = []
    problems: list[str] = []
    for c in cells:
        row = [str(c["m"]), str(c["k"]), str(c["n"]), str(c["threads"])]
        for lib in libs:
            r = c["results"].get(lib, {})
            if r.get("gops"):
                row.append(f"{r['gops']:.1f}")
            else:
                row.append("WRONG" if r.get("rel_error") is not None else "FAILED")
                problems.append(
                    f"  M={c['m']} {c['k']}x{c['n']} t={c['threads']} {lib}: {r.get('error')}"
                )
        best = SHORT.get(c["best_peer"] or "", "-")
        row += [_fmt_ratio(c["ratio_vs_numpy"]), _fmt_ratio(c["ratio_vs_best_peer"]), best]
        rows.append(row)
    nlibs = len(libs)
    lines += format_table(header, rows, right=range(6 + nlibs), groups=(4, 4 + nlibs))
    s = doc["summary"]
    g = s["ratio_vs_best_peer"]
    lines.append(
        "geometric mean of dynaq/best-peer: "
        + ", ".join(f"{k}: {_fmt_ratio(v['geomean'])} ({v['cells']} cells)" for k, v in g.items())
    )
    for t, by in s["ratio_vs_best_peer_by_threads"].items():
        means = ", ".join(f"{k}: {_fmt_ratio(v['geomean'])}" for k, v in by.items())
        lines.append(f"  threads={t}: {means}")
    lines.append(f"geometric mean of dynaq/numpy: {_fmt_ratio(s['ratio_vs_numpy']['geomean'])}")
    for lib, by_key in s.get("w4", {}).items():
        base, peer = W4_PAIRS[lib]
        for key, against in (("vs_int8", SHORT[base]), ("vs_peer", SHORT.get(peer or "", ""))):
            g = by_key[key]
            if any(v["cells"] for v in g.values()):
                means = ", ".join(f"{k}: {_fmt_ratio(v['geomean'])}" for k, v in g.items())
                lines.append(f"geometric mean of {SHORT[lib]}/{against}: {means}")
    if problems:
        lines += ["flagged (output wrong or call failed; not timed):", *problems]
    return lines


def _quant_lines(q: dict[str, Any]) -> list[str]:
    """The activation quantization table and the bit-identity verdicts."""
    shapes = list(dict.fromkeys((r["rows"], r["cols"]) for r in q["results"]))
    by_key = {(e["op"], e["lib"], e["rows"], e["cols"]): e for e in q["results"]}
    rows: list[list[str]] = []
    for op, lib in dict.fromkeys((r["op"], r["lib"]) for r in q["results"]):
        row = [op, SHORT[lib]]
        for nrows, ncols in shapes:
            r = by_key.get((op, lib, nrows, ncols))
            if r is None or not r.get("valid"):
                row.append("WRONG" if r else "-")
            else:
                row.append(f"{r['us_per_call'] if nrows == 1 else r['gbps']:.2f}")
        rows.append(row)
    units = [f"{r}x{c} {'us/call' if r == 1 else 'GB/s'}" for r, c in shapes]
    header = ["operation", "lib", *units]
    lines = [
        "",
        f"Activation quantization, {q['threads']} thread (GB/s of float32 input; "
        "us per call for a single row):",
        *format_table(header, rows, right=range(2, 2 + len(shapes))),
    ]
    for shape, same in q["dql_matches_onnxruntime"].items():
        verdict = "bit-identical" if same else "DIFFERENT"
        lines.append(
            f"dynaq.dynamic_quantize_linear vs ORT DynamicQuantizeLinear at {shape}: {verdict}"
        )
    return lines


def _overhead_lines(o: dict[str, Any]) -> list[str]:
    """The call-overhead table."""
    (m, k), n = o["x_shape"], o["weight_shape"][0]
    rows = [
        [r["op"], f"{r['us_per_call']:.2f}" if r.get("valid") else "FAILED"] for r in o["results"]
    ]
    return [
        "",
        f"Call overhead, {o['threads']} thread: dynaq on x of shape ({m}, {k}) and a "
        f"PackedWeight of shape ({n}, {k}); median us per call:",
        *format_table(["call", "us/call"], rows, right=(1,)),
    ]


def format_report(doc: dict[str, Any]) -> str:
    """The header, the GOP/s table, the quantization table and the call-overhead table of a
    :func:`~dynaq.bench.run_bench` result.

    Parameters
    ----------
    doc : dict
        A result of :func:`~dynaq.bench.run_bench` (or its JSON, loaded back).

    Returns
    -------
    str
    """
    lines = _header(doc)
    if doc.get("gemm"):
        lines += _gemm_lines(doc)
    q = doc.get("quant")
    if q and q["results"]:
        lines += _quant_lines(q)
    o = doc.get("overhead")
    if o and o["results"]:
        lines += _overhead_lines(o)
    lines.append("")
    lines.append(f"total wall time {doc['wall_time_s']:.1f} s")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: str) -> None:
    """Writes a :func:`~dynaq.bench.run_bench` result as JSON (infinities as null).

    Parameters
    ----------
    doc : dict
    path : str
    """

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with open(path, "w") as f:
        json.dump(clean(doc), f, indent=2)
        f.write("\n")
