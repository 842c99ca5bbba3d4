"""The hand-written stub of the native module matches the module (mypy.stubtest)."""

import subprocess
import sys

import pytest


def test_native_stub_matches_runtime() -> None:
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dynaq._dynaq"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
