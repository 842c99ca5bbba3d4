"""Runtime API: version, cpu_info, ISA caps, threads, environment variables, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dynaq
import numpy as np
import pytest
from util import ALL_ISAS, ARCH, AVAILABLE_ISAS, KNOWN_ISAS, skip_reason

BEST = AVAILABLE_ISAS[-1]
FOREIGN_ISA = {"x86_64": "neon", "aarch64": "avx2"}.get(ARCH)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAQ_")}
    env.update(extra)
    return env


_PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dynaq
info = dynaq.cpu_info()
print(json.dumps({
    "warnings": [[w.category.__name__, str(w.message)] for w in caught],
    "active": info["active_isa"],
    "max": dynaq.get_max_isa(),
    "threads": dynaq.get_num_threads(),
    "info_threads": info["num_threads"],
}))
"""


def _probe(**env: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_version():
    assert isinstance(dynaq.__version__, str) and dynaq.__version__
    assert dynaq.cpu_info()["version"] == dynaq.__version__


def test_cpu_info_contents():
    info = dynaq.cpu_info()
    for key in (
        "features",
        "isas",
        "kernels",
        "active_isa",
        "max_isa",
        "num_threads",
        "arch",
        "version",
    ):
        assert key in info, key
    assert isinstance(info["features"], list)
    assert all(isinstance(f, str) for f in info["features"])
    assert isinstance(info["isas"], list) and info["isas"][0] == "scalar"
    assert len(set(info["isas"])) == len(info["isas"])
    known = KNOWN_ISAS.get(info["arch"], ["scalar"])
    assert [i for i in known if i in info["isas"]] == info["isas"], "isas not in cap order"
    assert info["active_isa"] in info["isas"]
    assert isinstance(info["kernels"], dict)
    for op in ("gemm", "minmax", "quantize"):
        assert isinstance(info["kernels"][op], str) and info["kernels"][op]
    assert info["num_threads"] == dynaq.get_num_threads() >= 1
    assert isinstance(info["arch"], str) and info["arch"]
    if info["arch"] == "x86_64":
        feats = set(info["features"])
        assert ("avx2" in info["isas"]) == ("avx2" in feats)
        if "avx512vnni" in info["isas"]:
            assert {"avx2", "avx512vnni"} <= feats


def test_cpu_info_matches_proc_cpuinfo():
    if ARCH != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs Linux on x86-64")
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    isas = dynaq.cpu_info()["isas"]
    assert ("avx2" in isas) == ("avx2" in flags)
    vnni = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2"} <= set(flags)
    assert ("avx512vnni" in isas) == vnni


def test_use_isa_selects_each_path_and_its_kernels():
    gemm_names = {}
    for name in ALL_ISAS:
        if name not in AVAILABLE_ISAS:
            continue
        with dynaq.use_isa(name):
            info = dynaq.cpu_info()
            assert info["active_isa"] == name
            assert dynaq.get_max_isa() == name
            gemm_names[name] = info["kernels"]["gemm"]
    assert dynaq.cpu_info()["active_isa"] == BEST
    # every path has its own GEMM kernel
    assert len(set(gemm_names.values())) == len(gemm_names), gemm_names


@pytest.mark.parametrize("name", ALL_ISAS)
def test_set_max_isa(name):
    if name not in AVAILABLE_ISAS:
        pytest.skip(skip_reason(name))
    before = dynaq.get_max_isa()
    try:
        assert dynaq.set_max_isa(name) == name
        assert dynaq.get_max_isa() == name
        assert dynaq.cpu_info()["active_isa"] == name
        assert dynaq.cpu_info()["max_isa"] == name
    finally:
        dynaq.set_max_isa(before)


def test_set_max_isa_none_lifts_the_cap():
    before = dynaq.get_max_isa()
    try:
        dynaq.set_max_isa("scalar")
        assert dynaq.set_max_isa(None) == BEST
        assert dynaq.cpu_info()["active_isa"] == BEST
    finally:
        dynaq.set_max_isa(before)


def test_set_max_isa_missing_path_falls_back():
    missing = [i for i in KNOWN_ISAS.get(ARCH, []) if i not in AVAILABLE_ISAS]
    if not missing:
        pytest.skip(f"this CPU has every {ARCH} path: {AVAILABLE_ISAS}")
    before = dynaq.get_max_isa()
    try:
        for name in missing:
            active = dynaq.set_max_isa(name)
            assert active in AVAILABLE_ISAS
            order = KNOWN_ISAS[ARCH]
            assert order.index(active) < order.index(name)
    finally:
        dynaq.set_max_isa(before)


@pytest.mark.parametrize("bad", ["sse9", "", "avx512", "scalar2", "AVX-2"])
def test_set_max_isa_unknown_name(bad):
    before = dynaq.get_max_isa()
    with pytest.raises(ValueError):
        dynaq.set_max_isa(bad)
    assert dynaq.get_max_isa() == before


def test_set_max_isa_foreign_architecture():
    if FOREIGN_ISA is None:
        pytest.skip(f"no foreign ISA defined for {ARCH}")
    before = dynaq.get_max_isa()
    with pytest.raises(ValueError):
        dynaq.set_max_isa(FOREIGN_ISA)
    assert dynaq.get_max_isa() == before
    with pytest.raises(ValueError), dynaq.use_isa(FOREIGN_ISA):
        pass  # pragma: no cover
    assert dynaq.get_max_isa() == before


def test_use_isa_restores_after_exception_and_nests():
    before = dynaq.get_max_isa()
    with pytest.raises(RuntimeError), dynaq.use_isa("scalar"):
        assert dynaq.cpu_info()["active_isa"] == "scalar"
        raise RuntimeError("boom")
    assert dynaq.get_max_isa() == before
    with dynaq.use_isa(BEST):
        with dynaq.use_isa("scalar"):
            assert dynaq.cpu_info()["active_isa"] == "scalar"
        assert dynaq.cpu_info()["active_isa"] == BEST
    assert dynaq.get_max_isa() == before
    with pytest.raises(ValueError), dynaq.use_isa("nonsense"):
        pass  # pragma: no cover
    assert dynaq.get_max_isa() == before


def test_cap_changes_results_not():
    x = np.linspace(-3, 5, 7 * 40, dtype=np.float32).reshape(7, 40)
    pw = dynaq.pack_weight(np.linspace(-1, 1, 9 * 40, dtype=np.float32).reshape(9, 40))
    ys = []
    for name in AVAILABLE_ISAS:
        dynaq.set_max_isa(name)
        ys.append(dynaq.linear(x, pw))
    dynaq.set_max_isa(None)
    for y in ys:
        np.testing.assert_array_equal(y.view(np.uint32), ys[0].view(np.uint32))


def test_num_threads_round_trip():
    before = dynaq.get_num_threads()
    try:
        for n in (1, 3, 2):
            dynaq.set_num_threads(n)
            assert dynaq.get_num_threads() == n
            assert dynaq.cpu_info()["num_threads"] == n
    finally:
        dynaq.set_num_threads(before)
    assert dynaq.get_num_threads() == before


def test_num_threads_invalid():
    before = dynaq.get_num_threads()
    for bad in (0, -1):
        with pytest.raises(ValueError):
            dynaq.set_num_threads(bad)
    with pytest.raises(TypeError):
        dynaq.set_num_threads("2")  # type: ignore[arg-type]
    assert dynaq.get_num_threads() == before


# --- environment variables (fresh interpreters) ---------------------------------------------


def test_import_without_env_is_quiet():
    r = _probe()
    assert r["warnings"] == []
    assert r["active"] == BEST and r["max"] == BEST


@pytest.mark.parametrize("name", ALL_ISAS)
def test_env_max_isa(name):
    r = _probe(DYNAQ_MAX_ISA=name)
    assert r["warnings"] == []
    if name in AVAILABLE_ISAS:
        assert r["active"] == name
        assert r["max"] == name
    else:
        assert r["active"] in AVAILABLE_ISAS


def test_env_max_isa_unknown_warns():
    r = _probe(DYNAQ_MAX_ISA="bogus-isa")
    categories = [c for c, _ in r["warnings"]]
    assert "RuntimeWarning" in categories, r["warnings"]
    assert any("DYNAQ_MAX_ISA" in m for _, m in r["warnings"]), r["warnings"]
    assert r["active"] == BEST


def test_env_max_isa_foreign_does_not_crash():
    if FOREIGN_ISA is None:
        pytest.skip(f"no foreign ISA defined for {ARCH}")
    r = _probe(DYNAQ_MAX_ISA=FOREIGN_ISA)
    assert r["active"] == BEST
    assert all(c == "RuntimeWarning" for c, _ in r["warnings"]), r["warnings"]


def test_env_max_isa_is_overridden_by_set_max_isa():
    code = (
        "import dynaq; a = dynaq.cpu_info()['active_isa']; b = dynaq.set_max_isa(None); print(a, b)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(DYNAQ_MAX_ISA="scalar"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", BEST]


@pytest.mark.parametrize("n", [1, 3])
def test_env_num_threads(n):
    r = _probe(DYNAQ_NUM_THREADS=str(n))
    assert r["threads"] == n and r["info_threads"] == n


def test_env_num_threads_garbage_does_not_crash():
    r = _probe(DYNAQ_NUM_THREADS="lots")
    assert r["threads"] >= 1


# --- command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [None, "scalar"])
def test_cli_info(cap):
    env = _clean_env() if cap is None else _clean_env(DYNAQ_MAX_ISA=cap)
    r = subprocess.run(
        [sys.executable, "-m", "dynaq", "info"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    expected_isa = BEST if cap is None else cap
    with dynaq.use_isa(expected_isa):
        gemm = dynaq.cpu_info()["kernels"]["gemm"]
    assert expected_isa in r.stdout, r.stdout
    assert gemm in r.stdout, r.stdout
    assert r.stderr.strip() == "", r.stderr
