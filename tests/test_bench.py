"""``python -m dynaq bench`` on a tiny sweep: result structure, table, options, JSON and plot.

Nothing here depends on timing values beyond their being positive; torch and onnxruntime are
timed when installed and reported as unavailable otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import dynaq
import pytest
from dynaq import bench as _bench
from dynaq.__main__ import main
from dynaq._text import Progress
from dynaq.bench import peers as _peers

TINY = _bench.quick_config(min_time=0.0, max_reps=5, quant_shapes=((16, 256), (1, 256)))


def _state() -> tuple[str, int]:
    return dynaq.get_max_isa(), dynaq.get_num_threads()


@pytest.fixture(scope="module")
def run() -> tuple[dict, tuple[str, int], tuple[str, int]]:
    """One in-process run of the tiny sweep, with the process state before and after it."""
    before = _state()
    d = _bench.run_bench(TINY)
    return d, before, _state()


@pytest.fixture
def doc(run) -> dict:
    return run[0]


def _subprocess_env() -> dict[str, str]:
    """This environment, with the dynaq package the tests import first on the path."""
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(dynaq.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return env


def _check_doc(d: dict, cfg: _bench.BenchConfig) -> None:
    """Structure and internal consistency of a result (a run_bench dict or its JSON)."""
    assert d["schema"] == _bench.SCHEMA
    mach = d["machine"]
    assert mach["cpu_model"] and mach["logical_cpus"] >= 1 and mach["physical_cores"] >= 1
    assert d["dynaq"]["version"] == dynaq.__version__
    assert d["dynaq"]["active_isa"] in dynaq.cpu_info()["isas"]
    assert d["dynaq"]["gemm_kernel"] == d["dynaq"]["kernels"]["gemm"]
    assert d["numpy"]["version"]
    assert "dynaq" in d["libs"] and "numpy" in d["libs"]
    for lib in ("torch", "onnxruntime"):
        assert (lib in d["libs"]) != (lib in d["unavailable"])
        assert (d[lib] is not None) == (lib in d["libs"])
    assert d["wall_time_s"] > 0

    threads = d["threads"]
    wanted = {(m, k, n, t) for m in cfg.ms for k, n in cfg.shapes for t in threads}
    got = [(c["m"], c["k"], c["n"], c["threads"]) for c in d["gemm"]]
    assert sorted(got) == sorted(wanted)  # every cell, once
    for c in d["gemm"]:
        assert c["ops"] == 2 * c["m"] * c["k"] * c["n"]
        assert set(c["results"]) == set(d["libs"])
        four_bit = set(_peers.W4_PAIRS) | {p for _, p in _peers.W4_PAIRS.values() if p}
        for lib, r in c["results"].items():
            assert r["valid"], (lib, r)
            limit = _peers.W4_MAX_REL_ERROR if lib in four_bit else _bench.MAX_REL_ERROR
            assert 0 <= r["rel_error"] < limit, lib
            assert r["median_s"] > 0 and r["min_s"] > 0
            assert cfg.min_reps <= r["reps"] <= cfg.max_reps
            assert r["gops"] > 0
            assert r["gops"] == pytest.approx(c["ops"] / r["median_s"] / 1e9)
        res = c["results"]
        assert c["ratio_vs_numpy"] == pytest.approx(
            res["numpy"]["median_s"] / res["dynaq"]["median_s"]
        )
        peers = {
            lib: r["median_s"] for lib, r in res.items() if lib != "dynaq" and lib not in four_bit
        }
        best = min(peers, key=lambda lib: peers[lib])
        assert c["best_peer"] == best
        assert c["ratio_vs_best_peer"] == pytest.approx(peers[best] / res["dynaq"]["median_s"])
        assert c["ratio_vs_best_peer"] <= c["ratio_vs_numpy"] * (1 + 1e-12)
        # Each 4-bit dynaq column against int8 dynaq and the 4-bit peer of its block size.
        for lib, (base, peer) in _peers.W4_PAIRS.items():
            if lib not in res:
                continue
            w4 = c["w4"][lib]
            assert w4["vs_int8"] == pytest.approx(res[base]["median_s"] / res[lib]["median_s"])
            if peer in res:
                assert w4["vs_peer"] == pytest.approx(res[peer]["median_s"] / res[lib]["median_s"])

    small = [c["ratio_vs_best_peer"] for c in d["gemm"] if c["m"] <= 8]
    summary = d["summary"]["ratio_vs_best_peer"]["m<=8"]
    assert summary["cells"] == len(small)
    assert summary["geomean"] == pytest.approx(
        math.exp(sum(math.log(r) for r in small) / len(small))
    )

    q = d["quant"]
    ops = {(r["op"], r["lib"], r["rows"], r["cols"]) for r in q["results"]}
    for rows, cols in cfg.quant_shapes:
        assert ("dynamic_quantize_linear", "dynaq", rows, cols) in ops
        assert ("quantize(granularity='row')", "dynaq", rows, cols) in ops
        assert ("quantize(granularity='tensor')", "dynaq", rows, cols) in ops
        if "onnxruntime" in d["libs"]:
            assert ("DynamicQuantizeLinear", "onnxruntime", rows, cols) in ops
            assert q["dql_matches_onnxruntime"][f"{rows}x{cols}"] is True
    for r in q["results"]:
        assert r["valid"], r
        assert r["median_s"] > 0 and r["reps"] >= cfg.min_reps
        assert r["gbps"] == pytest.approx(4 * r["rows"] * r["cols"] / r["median_s"] / 1e9)
        assert r["us_per_call"] == pytest.approx(r["median_s"] * 1e6)

    o = d["overhead"]
    assert d["config"]["overhead"] is cfg.overhead and (o is not None) == cfg.overhead
    if o is not None:
        assert o["threads"] == 1 and o["x_shape"] == [1, 64] and o["weight_shape"] == [64, 64]
        assert [r["op"] for r in o["results"]] == list(_bench.OVERHEAD_OPS)
        for r in o["results"]:
            assert r["valid"], r
            assert r["median_s"] > 0 and r["us_per_call"] == pytest.approx(r["median_s"] * 1e6)
            assert r["reps"] >= cfg.min_reps and r["calls_per_rep"] >= 1


def test_run_bench_structure(doc):
    _check_doc(doc, TINY)


def test_run_bench_restores_global_state(run):
    doc, before, after = run
    assert after == before  # ISA cap and thread count, as the run found them
    json.dumps(doc)  # JSON-ready as it is


def test_format_report(doc):
    text = _bench.format_report(doc)
    lines = text.splitlines()
    assert dynaq.__version__ in lines[1] and doc["dynaq"]["gemm_kernel"] in lines[1]
    assert doc["machine"]["cpu_model"] in lines[0]
    assert any(line.lstrip().startswith("numpy ") and "BLAS" in line for line in lines)
    head = next(line for line in lines if line.lstrip().startswith("M "))
    for col in ("dynaq", "numpy", "dq/np", "dq/best"):
        assert col in head
    for c in doc["gemm"]:
        row = next(
            line
            for line in lines
            if line.split()[:4] == [str(c["m"]), str(c["k"]), str(c["n"]), str(c["threads"])]
        )
        assert f"{c['results']['dynaq']['gops']:.1f}" in row
        assert f"{c['ratio_vs_numpy']:.2f}x" in row
    assert any(line.startswith("geometric mean of dynaq/best-peer") for line in lines)
    assert "Activation quantization" in text and "dynamic_quantize_linear" in text
    assert "Call overhead" in text
    for r in doc["overhead"]["results"]:
        row = next(line for line in lines if line.startswith(r["op"] + " "))
        assert f"{r['us_per_call']:.2f}" in row


def test_wrong_library_is_flagged_not_timed():
    class Wrong(_bench.peers.NumpyLib):
        def call(self, x, threads):
            w_t, b = self.w_t, self.b
            return lambda: 2 * (x @ w_t) + b

    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 16), dtype=np.float32)
    b = rng.standard_normal(24, dtype=np.float32)
    x = rng.standard_normal((4, 16), dtype=np.float32)
    lib = Wrong()
    lib.prepare(w, b, [1], "")
    r = _bench.sweep.time_lib(lib, x, 1, _bench.sweep.Reference(x, w, b), 1.0, TINY)
    assert r["valid"] is False and r["rel_error"] > _bench.MAX_REL_ERROR
    assert "median_s" not in r and "gops" not in r
    cell = {"results": {"dynaq": {"gops": 2.0}, "numpy": r}}
    _bench.sweep.ratios(cell)
    assert cell["ratio_vs_numpy"] is None and cell["best_peer"] is None


def test_rotation_checks_every_copy_and_goes_round_them():
    import numpy as np

    calls = []

    class Counted(_bench.peers.NumpyLib):
        def call(self, x, threads):
            inner = super().call(x, threads)
            return lambda: calls.append(id(self)) or inner()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16), dtype=np.float32)
    weights = [(rng.standard_normal((24, 16), dtype=np.float32),
                rng.standard_normal(24, dtype=np.float32)) for _ in range(3)]  # fmt: skip
    refs = [_bench.sweep.Reference(x, w, b) for w, b in weights]
    copies = [Counted() for _ in weights]
    for c, (w, b) in zip(copies, weights):
        c.prepare(w, b, [1], "")
    r = _bench.sweep.time_lib(copies, x, 1, refs, 1.0, TINY)
    assert r["valid"] is True
    timed = calls[3:]  # after the three checked warm-up calls
    assert len(timed) >= 3 and set(timed) == {id(c) for c in copies}
    assert all(a != b for a, b in zip(timed, timed[1:]))  # never the same weight twice running
    # One copy prepared with another copy's weight: its output is refused.
    wrong = Counted()
    wrong.prepare(*weights[0], [1], "")
    r = _bench.sweep.time_lib([copies[0], wrong], x, 1, refs[:2], 1.0, TINY)
    assert r["valid"] is False and "median_s" not in r


def test_cli_rotate(tmp_path, capsys):
    out = tmp_path / "out.json"
    argv = ["bench", "--quick", "--no-quant", "--no-overhead", "--libs", "dynaq,numpy"]
    assert main([*argv, "--m", "1", "--rotate", "3", "--quiet", "--json", str(out)]) == 0
    assert "holds 3 weights per shape" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["config"]["rotate"] == 3
    assert all(c["rotate"] == 3 and c["results"]["dynaq"]["valid"] for c in d["gemm"])


def test_cli_quick_subprocess(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dynaq", "bench", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dq/best" in proc.stdout and f"wrote {out}" in proc.stdout
    d = json.loads(out.read_text())
    _check_doc(d, _bench.quick_config())
    # No OpenBLAS variable reaches numpy: the command removes them (re-executing if needed).
    assert all(d["env"][var] is None for var in _bench.BLAS_ENV)


@pytest.mark.skipif(dynaq.cpu_info()["arch"] != "x86_64", reason="Haswell is an x86-64 kernel")
def test_cli_numpy_coretype_subprocess(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "dynaq", "bench", "--quick", "--no-quant", "--libs"]
    cmd += ["dynaq,numpy", "--numpy-coretype", "Haswell", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "re-executing" in proc.stderr and "OPENBLAS_CORETYPE=Haswell" in proc.stdout
    d = json.loads(out.read_text())
    assert d["reexec"]["numpy_coretype"] == "Haswell"
    assert d["env"]["OPENBLAS_CORETYPE"] == "Haswell" and d["env"]["OPENBLAS_L2_SIZE"] is None
    for blas in d["numpy"]["blas"]:
        if blas["internal_api"] == "openblas":  # OpenBLAS took the kernel it was told to
            assert blas["architecture"].lower() == "haswell"


def test_cli_in_process_options(tmp_path, capsys):
    out = tmp_path / "out.json"
    argv = ["bench", "--quick", "--no-quant", "--libs", "dynaq,numpy", "--m", "2,3"]
    argv += ["--shapes", "32x40,48x8", "--threads", "1,all", "--repeats", "4", "--quiet"]
    argv += ["--min-time", "0", "--isa", "scalar", "--json", str(out)]
    before = _state()
    assert main(argv) == 0
    assert _state() == before
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet
    d = json.loads(out.read_text())
    assert d["libs"] == ["dynaq", "numpy"]
    assert d["quant"] is None
    assert d["dynaq"]["active_isa"] == "scalar" and d["dynaq"]["isa_cap"] == "scalar"
    assert d["dynaq"]["gemm_kernel"] == d["dynaq"]["kernels"]["gemm"]
    cells = {(c["m"], c["k"], c["n"], c["threads"]) for c in d["gemm"]}
    threads = sorted({1, dynaq.get_num_threads()})
    assert cells == {(m, k, n, t) for m in (2, 3) for k, n in ((32, 40), (48, 8)) for t in threads}
    assert all(r["reps"] >= 4 for c in d["gemm"] for r in c["results"].values())


def test_cli_quant_only(capsys):
    assert main(["bench", "--quick", "--quant-only", "--libs", "dynaq", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Activation quantization" in text and "Linear layer" not in text
    assert "Call overhead" not in text


def test_cli_no_overhead(tmp_path, capsys):
    out = tmp_path / "out.json"
    argv = ["bench", "--quick", "--no-quant", "--no-overhead", "--libs", "dynaq", "--m", "1"]
    assert main([*argv, "--quiet", "--json", str(out)]) == 0
    assert "Call overhead" not in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["overhead"] is None and d["config"]["overhead"] is False
    assert d["gemm"] and d["quant"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shapes", "768by768"], "KxN"),
        (["--shapes", "0x8"], "KxN"),
        (["--m", "1,x"], "integer"),
        (["--m", "0"], "at least 1"),
        (["--threads", "some"], "integer"),
        (["--libs", "tensorflow"], "unknown library"),
        (["--isa", "sse9"], "invalid choice"),
        (["--repeats", "0"], "at least 1"),
        (["--rotate", "0"], "at least 1"),
        (["--min-time", "-1"], ">= 0"),
        (["--no-quant", "--quant-only"], "not allowed"),
        (["--numpy-coretype", "Haswell"], "new process"),
    ],
)
def test_cli_bad_options(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_cli_bad_shapes_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "dynaq", "bench", "--shapes", "768x"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "KxN" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_library_named(monkeypatch, capsys):
    monkeypatch.setattr(_bench.peers, "lib_missing", lambda name: "not installed (test)")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--quiet", "--libs", "torch"])
    assert exc.value.code == 2
    assert "torch: not installed (test)" in capsys.readouterr().err


def test_progress_modes():
    import io

    for mode, expect_cr in (("bar", True), ("lines", False), ("off", False)):
        stream = io.StringIO()
        bar = Progress(3, mode, stream)
        bar.section("section one")
        for i in range(3):
            bar.step(f"step {i}")
        bar.close()
        text = stream.getvalue()
        assert ("\r" in text) == expect_cr
        assert ("section one" in text) == (mode != "off")


def test_info_still_works(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == dynaq.__version__


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)
def test_plot(doc, tmp_path):
    path = tmp_path / "bench.png"
    _bench.write_plot(doc, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(_bench.plot, "matplotlib_missing", lambda: "--plot needs matplotlib (test)")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--quiet", "--plot", str(tmp_path / "p.png")])
    assert exc.value.code == 2
    assert "--plot needs matplotlib (test)" in capsys.readouterr().err
