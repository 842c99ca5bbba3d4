"""pytest-benchmark suite: ``dynaq.linear`` per kernel path against numpy float32, one thread.

fp32 in, fp32 out, activation quantization included, weight packed once outside the timing.
Run with ``python -m pytest benches/ --benchmark-only``; not part of the test run.
"""

from __future__ import annotations

from collections.abc import Iterator

import dynaq
import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

SHAPES = [(1, 768, 768), (8, 768, 3072), (32, 3072, 768), (128, 768, 768), (128, 3072, 3072)]
ISAS = dynaq.cpu_info()["isas"]


def _ids(s: tuple[int, int, int]) -> str:
    return "M{}_K{}_N{}".format(*s)


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


def _layer(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([m, k, n])
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mkn", SHAPES, ids=_ids)
def test_linear(benchmark, mkn, isa):
    benchmark.group = f"linear {_ids(mkn)}"
    x, w, b = _layer(*mkn)
    pw = dynaq.pack_weight(w)
    with dynaq.use_isa(isa) as active:
        assert active == isa
        y = benchmark(dynaq.linear, x, pw, b)
    ref = x @ w.T + b
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 5e-2


@pytest.mark.parametrize("mkn", SHAPES, ids=_ids)
def test_linear_tensor_granularity(benchmark, mkn):
    benchmark.group = f"linear {_ids(mkn)}"
    x, w, b = _layer(*mkn)
    pw = dynaq.pack_weight(w)
    y = benchmark(dynaq.linear, x, pw, b, granularity="tensor")
    assert y.shape == (mkn[0], mkn[2])


@pytest.mark.parametrize("mkn", SHAPES, ids=_ids)
def test_numpy_float32(benchmark, mkn):
    benchmark.group = f"linear {_ids(mkn)}"
    x, w, b = _layer(*mkn)
    w_t = w.T  # a view, as in `x @ w.T + b`
    y = benchmark(lambda: x @ w_t + b)
    assert y.shape == (mkn[0], mkn[2])


@pytest.mark.benchmark(group="pack_weight")
@pytest.mark.parametrize("kn", [(768, 768), (3072, 3072)], ids=lambda s: f"K{s[0]}_N{s[1]}")
def test_pack_weight(benchmark, kn):
    _, w, _ = _layer(1, *kn)
    pw = benchmark(dynaq.pack_weight, w)
    assert pw.shape == (kn[1], kn[0])
