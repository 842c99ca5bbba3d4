"""``python -m dynaq quantize IN OUT``: the table, the options, the progress bar and errors."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import dynaq
import numpy as np
import pytest
from dynaq import _quantize_cli
from dynaq import safetensors as ds
from dynaq.__main__ import main

F32 = np.float32


def _model(path, seed=0):
    rng = np.random.default_rng(seed)
    ds.write(
        path,
        {
            "layer.0.weight": (rng.standard_normal((32, 48)) * 0.05).astype(F32),
            "layer.0.bias": rng.standard_normal(32).astype(F32),
            "layer.1.weight": rng.standard_normal((8, 32)).astype(np.float16),
            "embed.weight": rng.standard_normal((20, 48)).astype(F32),
            "steps": np.arange(3, dtype=np.int64),
        },
        {"format": "pt"},
    )
    return path


def _files(d) -> list[str]:
    return sorted(os.listdir(d))


def _run(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "dynaq", "quantize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_quantize_command_end_to_end(tmp_path):
    src = _model(tmp_path / "model.safetensors")
    dst = tmp_path / "model.int8.safetensors"
    r = _run(src, dst)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # not a terminal: no progress bar
    lines = r.stdout.splitlines()
    assert (
        lines[0].split() == "tensor shape dtype before after format SQNR dB out dB action".split()
    )
    row = next(line for line in lines if line.startswith("layer.0.weight"))
    cells = row.split()
    assert cells[1:3] == ["32x48", "F32"]
    assert " ".join(cells[3:5]) == "6.00 KiB"  # 32 * 48 * 4 bytes
    assert " ".join(cells[5:7]) == "1.62 KiB"  # 32 * 48 + 4 * 32 bytes
    assert cells[7] == "int8" and 30 < float(cells[8]) < 60
    assert cells[9:] == ["-", "quantized"]  # no budget: no output SQNR measured
    assert next(line for line in lines if line.startswith("layer.0.bias")).endswith("kept")
    total = next(line for line in lines if line.startswith("total:"))
    assert "5 tensors, 3 quantized, 2 kept" in total
    assert lines[-1] == f"wrote {dst}"
    loaded = ds.load_quantized(dst)
    w = ds.read(src)["layer.0.weight"]
    assert loaded["layer.0.weight"] == dynaq.pack_weight(w)


def test_options_in_process(tmp_path, capsys):
    src = _model(tmp_path / "m.safetensors")
    dst = tmp_path / "q.safetensors"
    rc = main(["quantize", str(src), str(dst), "--per-tensor", "--exclude", "embed.*",
               "--exclude", "layer.1.*"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    actions = {line.split()[0]: line.split()[-1] for line in out.splitlines()[2:-2]}
    assert actions == {
        "layer.0.weight": "quantized",
        "layer.0.bias": "kept",
        "layer.1.weight": "excluded",
        "embed.weight": "excluded",
        "steps": "kept",
    }
    meta = ds.read_metadata(dst)
    assert meta["format"] == "pt"
    assert json.loads(meta["dynaq.quantized"]) == ["layer.0.weight"]
    assert ds.read(dst)["layer.0.weight_scale"].shape == ()  # --per-tensor: one scale


def test_min_sqnr_option(tmp_path, capsys):
    src = _model(tmp_path / "m.safetensors")
    # With --bits, int8 or float per tensor. A threshold every tensor meets: each one's output
    # SQNR measured (the "out dB" column).
    assert main(["quantize", str(src), str(tmp_path / "a.safetensors"), "--bits", "8",
                 "--min-sqnr", "-1000"]) == 0  # fmt: skip
    rows = capsys.readouterr().out.splitlines()
    sqnr = {line.split()[0]: float(line.split()[-2]) for line in rows if "quantized" in line}
    cut = sorted(sqnr.values())[1]  # keeps the worst tensor in float
    assert main(["quantize", str(src), str(tmp_path / "b.safetensors"), "--bits", "8",
                 "--min-sqnr", str(cut)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    worst = min(sqnr, key=sqnr.__getitem__)
    assert f"{worst}" in out and "kept-low-sqnr" in out
    assert "1 kept for low SQNR" in out
    loaded = ds.load_quantized(tmp_path / "b.safetensors")
    assert isinstance(loaded[worst], np.ndarray)
    assert sum(isinstance(v, dynaq.PackedWeight) for v in loaded.values()) == 2


def _bad_inputs(tmp_path) -> dict:
    good = _model(tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "text.safetensors").write_text("just some text, not tensors\n")
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 64])
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    header = json.dumps({"w.odd": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    (tmp_path / "dtype.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    nan = np.ones((4, 4), F32)
    nan[2, 3] = np.inf
    ds.write(tmp_path / "inf.safetensors", {"bad.weight": nan})
    return {
        "missing.safetensors": "missing.safetensors: No such file or directory",
        "text.safetensors": "text.safetensors: not a safetensors file",
        "cut.safetensors": "cut.safetensors: tensor",
        "tiny.safetensors": "tiny.safetensors: not a safetensors file (2 bytes",
        "dtype.safetensors": "dtype.safetensors: tensor 'w.odd': unsupported dtype 'Q4'",
        "inf.safetensors": "inf.safetensors: tensor 'bad.weight' contains NaN or infinity",
    }


def test_errors_in_process_exit_1_and_write_nothing(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    for name, message in cases.items():
        before = _files(tmp_path)
        rc = main(["quantize", str(tmp_path / name), str(tmp_path / "out.safetensors")])
        captured = capsys.readouterr()
        assert rc == 1, name
        assert captured.out == ""
        assert message in captured.err, (name, captured.err)
        assert captured.err.startswith("dynaq quantize: error: ")
        assert captured.err.count("\n") == 1, captured.err
        assert _files(tmp_path) == before, name  # no output, no temporary files


def test_errors_in_a_subprocess_have_no_traceback(tmp_path):
    cases = _bad_inputs(tmp_path)
    for name in ("missing.safetensors", "cut.safetensors", "dtype.safetensors"):
        r = _run(tmp_path / name, tmp_path / "out.safetensors")
        assert r.returncode == 1, (name, r.stderr)
        assert cases[name] in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "out.safetensors").exists()
    # the output's directory must exist; the message names the output
    r = _run(tmp_path / "good.safetensors", tmp_path / "no" / "such" / "dir.safetensors")
    assert r.returncode == 1 and "dir.safetensors: its directory does not exist" in r.stderr
    # an existing output survives a failed run untouched
    keep = tmp_path / "keep.safetensors"
    keep.write_bytes(b"precious")
    r = _run(tmp_path / "text.safetensors", keep)
    assert r.returncode == 1 and keep.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "args,match",
    [
        ([], "the following arguments are required: IN, OUT"),
        (["a"], "required: OUT"),
        (["a", "b", "--min-sqnr", "lots"], "not a number"),
        (["a", "b", "--min-sqnr", "inf"], "must be finite"),
        (["a", "b", "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", *args])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_other_commands_still_work(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active_isa"] == dynaq.cpu_info()["active_isa"]
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--help"])
    assert e.value.code == 0
    assert "--min-sqnr DB" in capsys.readouterr().out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _args(src, dst, **kw):
    import argparse

    parser = argparse.ArgumentParser()
    _quantize_cli.add_arguments(parser)
    ns = parser.parse_args([str(src), str(dst)])  # every option at its default
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    src = _model(tmp_path / "m.safetensors")
    monkeypatch.setattr(_quantize_cli, "PROGRESS_MIN_BYTES", 0)
    err = _Tty()
    assert _quantize_cli.run(_args(src, tmp_path / "q.safetensors"), stderr=err) == 0
    text = err.getvalue()
    frames = text.split("\r")
    assert any("100%" in f and "#" * 30 in f for f in frames), text
    assert frames[1].startswith("[") and frames[-1] == ""  # drawn, then erased
    assert "layer.0.weight" in text
    assert "total:" in capsys.readouterr().out  # the table goes to stdout, not the bar's stream
    # not a terminal, or a small file: no bar
    plain = io.StringIO()
    assert _quantize_cli.run(_args(src, tmp_path / "q.safetensors"), stderr=plain) == 0
    assert plain.getvalue() == ""
    monkeypatch.setattr(_quantize_cli, "PROGRESS_MIN_BYTES", 1 << 40)
    quiet = _Tty()
    assert _quantize_cli.run(_args(src, tmp_path / "q.safetensors"), stderr=quiet) == 0
    assert quiet.getvalue() == ""


def test_progress_bar_erased_on_error(tmp_path, monkeypatch):
    src = tmp_path / "nan.safetensors"
    bad = np.ones((4, 4), F32)
    bad[0, 0] = np.nan
    ds.write(src, {"a": np.ones((64, 64), F32), "b": bad})
    monkeypatch.setattr(_quantize_cli, "PROGRESS_MIN_BYTES", 0)
    err = _Tty()
    assert _quantize_cli.run(_args(src, tmp_path / "q.safetensors"), stderr=err) == 1
    last = err.getvalue().split("\r")[-1]
    assert last.startswith("dynaq quantize: error: ") and "'b'" in last


def test_progress_bar_drawing():
    err = _Tty()
    bar = _quantize_cli.ProgressBar(err, True, width=10)
    bar(0, 200, "a")
    bar(100, 200, "x" * 100)
    bar(200, 200, "b")
    bar.close()
    frames = err.getvalue().split("\r")
    assert frames[1].startswith("[..........]   0%")
    assert frames[2].startswith("[#####.....]  50%") and "..." + "x" * 37 in frames[2]
    assert frames[3].startswith("[##########] 100%")
    assert len(frames[3]) == len(frames[2])  # padded over the longer previous line
    assert frames[4].strip() == "" and frames[-1] == ""
    off = io.StringIO()
    bar = _quantize_cli.ProgressBar(off, False)
    bar(1, 2, "a")
    bar.close()
    assert off.getvalue() == ""


def test_progress_bar_on_a_real_terminal(tmp_path):
    """A file above the threshold, stderr a pseudo-terminal: the bar is drawn and erased."""
    pty = pytest.importorskip("pty")
    src = tmp_path / "big.safetensors"
    n = _quantize_cli.PROGRESS_MIN_BYTES // 4 // 1024 + 8
    rng = np.random.default_rng(0)
    ds.write(src, {f"w{i}": rng.standard_normal((n // 4, 1024), dtype=F32) for i in range(4)})
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dynaq", "quantize", str(src), str(tmp_path / "q.safetensors")],
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=120,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "100%" in err and "w3" in err and "\r" in err
    assert "total: 4 tensors, 4 quantized" in proc.stdout.decode()


def _mixed_model(path, seed=0):
    """Tensors of several widths (64: no group of 128 divides it) and spreads."""
    rng = np.random.default_rng(seed)
    tensors = {
        "a.weight": rng.standard_normal((48, 128)).astype(F32),
        "b.weight": rng.standard_t(3, (64, 256)).astype(F32),
        "c.weight": (rng.standard_normal((32, 64)) * 0.1).astype(np.float16),
        "d.weight": rng.standard_normal((96, 128)).astype(F32),
        "d.bias": rng.standard_normal(96).astype(F32),
    }
    ds.write(path, tensors)
    return tensors


def _stored_bits(loaded, names) -> float:
    nbytes = weights = 0
    for n in names:
        w = loaded[n]
        nbytes += sum(a.nbytes for a in dynaq._dynaq.weight_tensors(w).values())
        weights += w.shape[0] * w.shape[1]
    return 8 * nbytes / weights


def test_max_bits_chooses_a_format_per_tensor(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    tensors = _mixed_model(src)
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), str(dst), "--max-bits", "6"]) == 0
    out = capsys.readouterr().out
    assert "budget: max_bits_per_weight = 6" in out and "predicted mean layer SQNR" in out
    plan = dynaq.mixed.Plan.from_json(ds.read_metadata(dst)["dynaq.plan"])
    assert plan.bits_per_weight <= 6 and plan.sensitivity == "weights"
    assert len(set(plan.formats().values())) >= 2
    loaded = ds.load_quantized(dst)
    weights = [n for n in tensors if n.endswith("weight")]
    assert _stored_bits(loaded, weights) == pytest.approx(plan.bits_per_weight)
    for name, fmt in plan.formats().items():
        # Each stored weight is exactly what pack_weight makes of it in its format.
        assert loaded[name] == dynaq.pack_weight(tensors[name], **fmt.options())
    assert plan.formats()["c.weight"] != dynaq.mixed.Format(4, 128)  # 64 columns
    np.testing.assert_array_equal(loaded["d.bias"], tensors["d.bias"])


def test_min_sqnr_takes_each_tensors_smallest_format_that_reaches_it(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    tensors = _mixed_model(src)
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), str(dst), "--min-sqnr", "24"]) == 0
    report = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    plan = dynaq.mixed.Plan.from_json(ds.read_metadata(dst)["dynaq.plan"])
    for name, fmt in plan.formats().items():
        row = dynaq.mixed.measure_weights(
            name, "tensor", [tensors[name]], dynaq.mixed.DEFAULT_FORMATS,
            float_itemsize=tensors[name].itemsize,
        )  # fmt: skip
        j = row.index(fmt)
        assert row.layer_sqnr_db[j] >= 24
        assert not np.any((row.nbytes < row.nbytes[j]) & (row.layer_sqnr_db >= 24))
        assert report[name][7] == fmt.name  # after the two sizes (number, unit)


def test_a_saved_plan_applies_again(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    _mixed_model(src)
    first = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), str(first), "--max-bits", "5.5"]) == 0
    plan = dynaq.mixed.Plan.from_json(ds.read_metadata(first)["dynaq.plan"])
    plan.save(tmp_path / "plan.json")
    for source in (first, tmp_path / "plan.json"):
        again = tmp_path / "again.safetensors"
        assert main(["quantize", str(src), str(again), "--plan", str(source)]) == 0
        assert ds.read(again).keys() == ds.read(first).keys()
        for name, t in ds.read(first).items():
            np.testing.assert_array_equal(ds.read(again)[name], t)
    capsys.readouterr()


def test_plot_writes_the_curve(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    src = tmp_path / "m.safetensors"
    _mixed_model(src)
    png = tmp_path / "curve.png"
    assert main(["quantize", str(src), str(tmp_path / "q.safetensors"), "--max-bits", "5",
                 "--plot", str(png)]) == 0  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-bits", "5", "--min-sqnr", "30"], "one of --max-bits and --min-sqnr"),
        (["--max-bits", "5", "--bits", "4"], "name the candidates with --formats"),
        (["--formats", "int8"], "--formats names the candidates"),
        (["--plot", "x.png"], "--plot draws a budget"),
        (["--plan", "p.json", "--max-bits", "5"], "--plan applies a saved plan"),
        (["--plan", "missing.json"], "missing.json"),
        (["--max-bits", "2"], "cannot be met"),
        (["--plan", "m.safetensors"], "no plan in its metadata"),
    ],
)
def test_budget_errors_exit_1_naming_the_flags(tmp_path, args, message, capsys):
    src = tmp_path / "m.safetensors"
    _mixed_model(src)
    (tmp_path / "p.json").write_text(json.dumps({"a.weight": "int8"}))
    args = [a if not a.endswith((".json", ".safetensors")) else str(tmp_path / a) for a in args]
    dst = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), str(dst), *args]) == 1
    assert message in capsys.readouterr().err
    assert not dst.exists()


def test_unknown_formats_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "a", "b", "--max-bits", "5", "--formats", "int8,int5"])
    assert e.value.code == 2 and "unknown format 'int5'" in capsys.readouterr().err
