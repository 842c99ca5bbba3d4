"""Concurrency, fork, leak and allocation-failure checks (docs/CONTRACT.md).

- Many Python threads calling the kernels on shared weights get exactly the single-threaded
  results, with the native pool in use, and never deadlock.
- A process forked after the pool ran still computes the right answer and never hangs.
- Resident memory stays flat over many calls of each entry point.
- Impossible allocations raise MemoryError instead of aborting.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import dynaq
import dynaq.layers
import dynaq.safetensors
import numpy as np
import pytest
from dynaq.layers import LSTM

F32 = np.float32
TIMEOUT = 60.0  # seconds: far above the real run time, so only a deadlock or hang trips it


@pytest.fixture
def two_threads():
    previous = dynaq.get_num_threads()
    dynaq.set_num_threads(2)
    try:
        yield
    finally:
        dynaq.set_num_threads(previous)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((96, 64)).astype(F32)
    b = rng.standard_normal(96).astype(F32)
    H = 16
    params = {
        "weight_ih_l0": rng.standard_normal((4 * H, 64)).astype(F32),
        "weight_hh_l0": rng.standard_normal((4 * H, H)).astype(F32),
        "bias_ih_l0": rng.standard_normal(4 * H).astype(F32),
        "bias_hh_l0": rng.standard_normal(4 * H).astype(F32),
    }
    return dynaq.pack_weight(w), b, LSTM(params, batch_first=True)


def _run_threads(target, n, timeout=TIMEOUT):
    errors: list[BaseException] = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s (deadlock?): {alive}"
    if errors:
        raise errors[0]


_GIL_PROBE = """
import threading, time
import numpy as np
import dynaq
from dynaq import _dynaq
from dynaq.layers import LSTMCell

rng = np.random.default_rng(0)
x = rng.standard_normal((4, 32), dtype=np.float32)
w = rng.standard_normal((16, 32), dtype=np.float32)
pw = dynaq.pack_weight(w)
cell = LSTMCell(rng.standard_normal((64, 32), dtype=np.float32),
                rng.standard_normal((64, 16), dtype=np.float32))
ops = {
    "linear": lambda: dynaq.linear(x, pw),
    "linear-float-weight": lambda: dynaq.linear(x, w),
    "quantize": lambda: dynaq.quantize(x, granularity="row"),
    "quantize-symmetric": lambda: dynaq.quantize(x, symmetric=True),
    "dynamic_quantize_linear": lambda: dynaq.dynamic_quantize_linear(x),
    "matmul_integer": lambda: dynaq.matmul_integer(np.ones((3, 5), np.uint8),
                                                   np.ones((5, 2), np.int8)),
    "pack_weight": lambda: dynaq.pack_weight(w),
    "from_quantized": lambda: dynaq.PackedWeight.from_quantized(*pw.unpack()),
    "to_bytes": lambda: pw.to_bytes(),
    "LSTMCell": lambda: cell(x),
}
for name, op in ops.items():
    want = op()
    got = []
    _dynaq._hold_detached_calls(True)
    t = threading.Thread(target=lambda: got.append(op()))
    t.start()
    # This loop runs only because the call released the GIL: the thread is inside the call,
    # held where it computes without the GIL. Nothing here depends on timing.
    while _dynaq._held_calls() == 0:
        # A call that never releases the GIL is never held: it ends, and so does the thread.
        assert t.is_alive(), f"{name} finished without releasing the GIL"
        time.sleep(0)
    assert not got, name
    _dynaq._hold_detached_calls(False)
    t.join()
    assert len(got) == 1, name
    print(name, "released the GIL")
print("all released the GIL")
"""


def test_every_kernel_call_releases_the_gil():
    """Each native call runs its kernel with the GIL released. A test seam of the native module
    holds such calls at the point where they run without the GIL: a call started in a thread
    waits there while the main thread keeps running Python code, which it could not do if the
    call held the GIL. In a subprocess, so that a regression (a call that keeps the GIL, and
    therefore blocks the main thread for good) fails on the timeout instead of hanging."""
    r = subprocess.run(
        [sys.executable, "-c", _GIL_PROBE], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all released the GIL" in r.stdout


def test_threads_get_single_threaded_results(two_threads):
    pw, b, lstm = _weights()
    rng = np.random.default_rng(1)
    # Several inputs, some big enough (M * N * K) for the native pool to split the work.
    sizes = (1, 7, 256, 1024)
    xs = [rng.standard_normal((m, 64)).astype(F32) * (1 + i) for i, m in enumerate(sizes)]
    seqs = [rng.standard_normal((3, 5, 64)).astype(F32) for _ in range(2)]

    def compute(i):
        x = xs[i % len(xs)]
        s = seqs[i % len(seqs)]
        out, (h, c) = lstm(s)
        q = dynaq.quantize(x, granularity="row")
        qs = dynaq.quantize(x, symmetric=True)
        y, sc, zp = dynaq.dynamic_quantize_linear(x)
        return (
            dynaq.linear(x, pw, b),
            dynaq.linear(x, pw, b, granularity="tensor"),
            out, h, c,
            q.values, q.scale, q.zero_point, qs.values, qs.scale,
            y, np.float32(sc), np.uint8(zp),
        )  # fmt: skip

    # compute(j) depends only on j mod 4 (4 inputs xs, 2 sequences): the references.
    want = [compute(j) for j in range(4)]
    n_threads, rounds = 8, 30
    mismatches: list[str] = []

    def worker(i):
        for r in range(rounds):
            got = compute(i + r)
            for k, (g, e) in enumerate(zip(got, want[(i + r) % 4])):
                if g.dtype != e.dtype or g.shape != e.shape or g.tobytes() != e.tobytes():
                    mismatches.append(f"thread {i} round {r} output {k}")

    _run_threads(worker, n_threads)
    assert not mismatches, mismatches[:10]


def _child_linear(conn, x, blob, b):
    try:
        pw = dynaq.PackedWeight.from_bytes(blob)
        conn.send(("ok", dynaq.linear(x, pw, b), dynaq.get_num_threads()))
    except BaseException as e:  # pragma: no cover - reported to the parent
        conn.send(("error", repr(e), 0))
    finally:
        conn.close()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_after_pool_started(two_threads):
    pw, b, _ = _weights()
    x = np.random.default_rng(2).standard_normal((256, 64)).astype(F32)
    want = dynaq.linear(x, pw, b)  # the pool's workers now exist in the parent
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_linear, args=(child_conn, x, pw.to_bytes(), b))
    p.start()
    child_conn.close()
    try:
        assert parent_conn.poll(TIMEOUT), f"forked child gave no result within {TIMEOUT} s"
        status, got, threads = parent_conn.recv()
        p.join(TIMEOUT)
        assert not p.is_alive(), "forked child did not exit"
    finally:
        if p.is_alive():
            p.kill()
            p.join(5)
        parent_conn.close()
    assert status == "ok", got
    assert threads == 2
    np.testing.assert_array_equal(got, want, strict=True)
    assert p.exitcode == 0
    # And the parent's pool still works after the fork.
    np.testing.assert_array_equal(dynaq.linear(x, pw, b), want, strict=True)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_rng = np.random.default_rng(3)
_X = _rng.standard_normal((2, 16)).astype(F32)
_W = _rng.standard_normal((8, 16)).astype(F32)
_PW = dynaq.pack_weight(_W)
_B = _rng.standard_normal(8).astype(F32)
_A8 = _rng.integers(0, 256, (2, 16), dtype=np.uint8)
_B8 = _rng.integers(-128, 128, (16, 8), dtype=np.int8)
_OUT = np.empty((2, 8), F32)
_LAYER = dynaq.layers.Linear.from_float(_W, _B)
_STATIC = dynaq.layers.Linear.from_float(_W, _B)
_STATIC.calibrate(_X)
_LSTM = LSTM(
    {
        "weight_ih_l0": _rng.standard_normal((32, 16)).astype(F32),
        "weight_hh_l0": _rng.standard_normal((32, 8)).astype(F32),
        "bias_ih_l0": _rng.standard_normal(32).astype(F32),
        "bias_hh_l0": _rng.standard_normal(32).astype(F32),
    },
    batch_first=True,
)
_SEQ = _rng.standard_normal((2, 3, 16)).astype(F32)
_GRU_CELL = dynaq.layers.GRUCell(
    _rng.standard_normal((24, 16)).astype(F32),
    _rng.standard_normal((24, 8)).astype(F32),
    _rng.standard_normal(24).astype(F32),
    _rng.standard_normal(24).astype(F32),
)
_QDIR = tempfile.mkdtemp(prefix="dynaq-leak-")
atexit.register(shutil.rmtree, _QDIR, True)
dynaq.safetensors.write(os.path.join(_QDIR, "w.safetensors"), {"fc.weight": _W})
_QFILE = os.path.join(_QDIR, "q.safetensors")
dynaq.safetensors.quantize_file(os.path.join(_QDIR, "w.safetensors"), _QFILE)

LEAK_CALLS = {
    "linear": lambda: dynaq.linear(_X, _PW, _B),
    "linear-out-float64-x": lambda: dynaq.linear(_X.astype(np.float64), _PW, _B, out=_OUT),
    "quantize": lambda: dynaq.quantize(_X, granularity="row"),
    "quantize-symmetric": lambda: dynaq.quantize(_X, symmetric=True),
    "dynamic_quantize_linear": lambda: dynaq.dynamic_quantize_linear(_X),
    "matmul_integer": lambda: dynaq.matmul_integer(_A8, _B8, 3, np.arange(8, dtype=np.int8)),
    "pack_weight-to_bytes-from_bytes": lambda: dynaq.PackedWeight.from_bytes(
        dynaq.pack_weight(_W).to_bytes()
    ),
    "error-path": lambda: _swallow(lambda: dynaq.linear(np.full((2, 16), np.nan, F32), _PW)),
    "unpack-dequantize": lambda: (_PW.unpack(), _PW.dequantize()),
    "layers.Linear": lambda: _LAYER(_X),
    "layers.Linear-static": lambda: _STATIC(_X),
    "layers.LSTM": lambda: _LSTM(_SEQ),
    "layers.GRUCell": lambda: _GRU_CELL(_X),
    "safetensors.load_quantized": lambda: dynaq.safetensors.load_quantized(_QFILE),
}
N_CALLS = 100_000


def _swallow(f):
    try:
        f()
    except ValueError:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("name", list(LEAK_CALLS))
def test_resident_memory_stays_flat(name):
    call = LEAK_CALLS[name]
    for _ in range(2_000):  # warm-up: allocator pools, caches, lazily built state
        call()
    before = _rss_bytes()
    for _ in range(N_CALLS):
        call()
    grown = _rss_bytes() - before
    # A leak of even 64 bytes per call would add 6.4 MB.
    assert grown < 4 * 2**20, f"{name}: RSS grew by {grown / 2**20:.1f} MiB over {N_CALLS} calls"


HUGE = 2**20  # HUGE x HUGE elements: terabytes


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda: dynaq.pack_weight(np.broadcast_to(F32(1), (HUGE, HUGE))), id="pack_weight"
        ),
        pytest.param(
            lambda: dynaq.PackedWeight.from_quantized(
                np.broadcast_to(np.int8(1), (HUGE, HUGE)), F32(1)
            ),
            id="from_quantized",
        ),
        pytest.param(
            lambda: dynaq.matmul_integer(
                np.ones((HUGE, 1), np.uint8), np.ones((1, HUGE), np.uint8)
            ),
            id="matmul_integer-output",
        ),
        pytest.param(
            lambda: dynaq.linear(np.ones((HUGE, 1)), dynaq.pack_weight(np.ones((HUGE, 1), F32))),
            id="linear-output-float64-x",
        ),
        pytest.param(
            lambda: dynaq.quantize(np.broadcast_to(F32(1), (HUGE, HUGE)), granularity="row"),
            id="quantize",
        ),
    ],
)
def test_huge_allocation_is_memory_error(call):
    with pytest.raises(MemoryError):
        call()


_NATIVE_HUGE = """
import numpy as np, dynaq
pw = dynaq.pack_weight(np.ones((2**20, 1), np.float32))
try:
    dynaq.linear(np.ones((2**20, 1), np.float32), pw)
except BaseException as e:
    print(type(e).__name__)
"""


def test_huge_native_output_is_memory_error():
    # In a subprocess: the bug leaves an unraisable exception behind that would leak into
    # whichever test runs next.
    r = subprocess.run(
        [sys.executable, "-c", _NATIVE_HUGE],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RUST_BACKTRACE": "0"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "MemoryError", r.stdout + r.stderr[-2000:]
