"""dynaq.mixed, without a framework: format names, the weights-only measurement, the Pareto front
against brute-force enumeration, budgets, and plans as data."""

from __future__ import annotations

import itertools
import json
import math

import dynaq
import numpy as np
import pytest
from dynaq.mixed import (
    DEFAULT_FORMATS,
    Format,
    LayerCosts,
    Plan,
    PlanLayer,
    Sensitivity,
    check_budget,
    choose,
    frontier,
    measure_weights,
    parse_formats,
)
from dynaq.mixed import plan as plan_mod
from dynaq.mixed.formats import FLOAT


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("float", Format(None)),
        ("int8", Format(8)),
        ("int4", Format(4, 32)),
        ("int4-g64", Format(4, 64)),
        ("int4-128", Format(4, 128)),
        ("int4-channel", Format(4, None)),
        ("int4-g32-sym-rtn", Format(4, 32, True, "rtn")),
        ("INT4-G128-SYM", Format(4, 128, True)),
    ],
)
def test_format_names_round_trip(name, fmt):
    assert Format.parse(name) == fmt
    assert Format.parse(fmt.name) == fmt
    assert Format.parse(fmt.options()) == fmt


@pytest.mark.parametrize(
    "bad", ["int3", "int8-g32", "float-sym", "int4-g48", "int4-g0", "int4-fast", {"bits": 5},
            {"bits": 4, "group": 32}]
)  # fmt: skip
def test_bad_formats_are_refused(bad):
    with pytest.raises(ValueError):
        Format.parse(bad)


def test_format_fits_only_dividing_groups():
    assert Format(4, 32).fits(96) and not Format(4, 64).fits(96)
    assert Format(4, None).fits(7) and Format(8).fits(7) and FLOAT.fits(7)


def test_parse_formats_adds_float_and_needs_a_quantized_one():
    assert parse_formats(["int8"]) == (Format(8), FLOAT)
    assert parse_formats("int4-g128") == (Format(4, 128), FLOAT)
    assert parse_formats(None) == DEFAULT_FORMATS
    with pytest.raises(ValueError, match="at least one quantized"):
        parse_formats(["float"])


def _layer(n: int, k: int, seed: int, formats=DEFAULT_FORMATS, tail: float = 0.0) -> LayerCosts:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if tail:
        w = rng.standard_t(tail, (n, k)).astype(np.float32)
    return measure_weights(f"l{seed}", "Linear", [w], formats)


def test_measure_weights_matches_pack_weight_and_linear():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((48, 128)).astype(np.float32)
    row = measure_weights("w", "Linear", [w], DEFAULT_FORMATS, rows=16, seed=5)
    assert [f.name for f in row.formats] == [f.name for f in DEFAULT_FORMATS]
    x = np.random.default_rng(5).standard_normal((16, 128), dtype=np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    for j, fmt in enumerate(row.formats):
        if fmt.is_float:
            assert row.nbytes[j] == w.nbytes and row.noise[j] == 0.0
            continue
        pw = dynaq.pack_weight(w, **fmt.options())
        stored = sum(a.nbytes for a in dynaq._dynaq.weight_tensors(pw).values())
        assert row.nbytes[j] == stored
        e = ref - dynaq.linear(x, pw)
        assert row.noise[j] == pytest.approx(float((e * e).sum() / (ref * ref).sum()), rel=1e-9)
        d = (w - pw.dequantize()).astype(np.float64)
        energy = float((w.astype(np.float64) ** 2).sum())
        assert row.weight_sqnr_db[j] == pytest.approx(10 * math.log10(energy / (d * d).sum()))


def test_measure_weights_orders_formats_sensibly():
    """More bits, smaller groups: fewer errors, more bytes (Gaussian and heavy-tailed)."""
    for tail in (0.0, 4.0):
        row = _layer(64, 256, 1, tail=tail)
        names = [f.name for f in row.formats]
        order = ["int4-channel", "int4-g128", "int4-g64", "int4", "int8", "float"]
        idx = [names.index(n) for n in order]
        assert (np.diff(row.nbytes[idx]) > 0).all()
        noise = row.noise[idx]
        assert noise[-1] == 0.0 and noise[-2] < noise[3] / 20
        assert noise[3] < noise[0]


def test_a_group_that_does_not_divide_leaves_the_format_out():
    row = _layer(16, 96, 2)
    assert Format(4, 64) not in row.formats and Format(4, 128) not in row.formats
    assert Format(4, 32) in row.formats
    with pytest.raises(ValueError, match="cannot take format int4-g64"):
        row.index(Format(4, 64))


def test_nan_weights_are_refused_naming_the_layer():
    w = np.ones((4, 32), np.float32)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="'bad'"):
        measure_weights("bad", "Linear", [w], DEFAULT_FORMATS)


def _random_table(rng: np.random.Generator, layers: int, options: int) -> Sensitivity:
    rows = []
    for i in range(layers):
        nbytes = np.sort(rng.integers(10, 200, options))
        noise = np.sort(rng.random(options))[::-1].copy()
        # Some options dominated (more bytes and more noise) on purpose.
        noise[rng.integers(0, options)] *= 3
        rows.append(LayerCosts(
            name=f"l{i}", kind="Linear", shapes=[(4, 8)], formats=DEFAULT_FORMATS[:options],
            nbytes=nbytes, layer_sqnr_db=-10 * np.log10(noise), weight_sqnr_db=noise * 0,
            noise=noise,
        ))  # fmt: skip
    return Sensitivity(rows, signal=1.0, calibrated=True)


@pytest.mark.parametrize("seed", range(6))
def test_front_is_the_exact_pareto_front(seed):
    """Every plan enumerated: none beats a front point on both counts, and every budget's
    choice is the enumerated optimum."""
    rng = np.random.default_rng(seed)
    table = _random_table(rng, layers=int(rng.integers(2, 6)), options=int(rng.integers(2, 5)))
    plans = list(itertools.product(*[range(len(lay.formats)) for lay in table.layers]))
    costs = np.array([table.nbytes(p) for p in plans])
    noises = np.array([sum(lay.noise[j] for lay, j in zip(table.layers, p)) for p in plans])
    front = frontier(table)
    for point in range(len(front.nbytes)):
        choice = front.choice(point)
        assert table.nbytes(choice) == front.nbytes[point]
        assert sum(lay.noise[j] for lay, j in zip(table.layers, choice)) == pytest.approx(
            front.noise[point]
        )
        assert not np.any((costs <= front.nbytes[point]) & (noises < front.noise[point] - 1e-12))
    for budget in np.linspace(costs.min(), costs.max(), 9):
        best = noises[costs <= budget].min()
        choice, _ = choose(table, {"max_bytes": float(budget)})
        assert table.nbytes(choice) <= budget
        assert sum(lay.noise[j] for lay, j in zip(table.layers, choice)) == pytest.approx(best)
    for target_db in (-3.0, 0.0, 3.0, 10.0):
        allowed = 10 ** (-target_db / 10)
        ok = noises <= allowed
        if not ok.any():
            with pytest.raises(ValueError, match="cannot be met"):
                choose(table, {"min_sqnr_db": target_db})
            continue
        choice, _ = choose(table, {"min_sqnr_db": target_db})
        assert table.nbytes(choice) == costs[ok].min()
        assert table.predicted_sqnr_db(choice) >= target_db - 1e-9


def test_thinned_front_keeps_real_plans_within_the_budget():
    rng = np.random.default_rng(7)
    table = _random_table(rng, layers=30, options=5)
    front = frontier(table)
    small = frontier(table, max_points=50)
    assert len(small.nbytes) <= 50 < len(front.nbytes)
    for point in range(len(small.nbytes)):
        choice = small.choice(point)
        assert table.nbytes(choice) == small.nbytes[point]
    budget = float(np.median(front.nbytes))
    full_noise = front.noise[front.within_bytes(budget)]
    thin_noise = small.noise[small.within_bytes(budget)]
    assert thin_noise >= full_noise and small.nbytes[small.within_bytes(budget)] <= budget


def test_weights_only_accuracy_budget_is_per_layer():
    table = Sensitivity([_layer(32, 128, s) for s in range(4)], signal=4.0, calibrated=False)
    choice, _ = choose(table, check_budget(min_sqnr_db=25.0))
    for lay, j in zip(table.layers, choice):
        assert lay.layer_sqnr_db[j] >= 25.0
        cheaper = lay.nbytes < lay.nbytes[j]
        assert not np.any(lay.layer_sqnr_db[cheaper] >= 25.0)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_bits_per_weight": 5.0, "min_sqnr_db": 20.0}, "one budget"),
        ({"max_bits_per_weight": 0.0}, "finite positive"),
        ({"max_bits_per_weight": math.inf}, "finite positive"),
        ({"max_bytes": 10.5}, "whole number"),
        ({"min_sqnr_db": math.nan}, "finite"),
        ({"max_bits_per_weight": "5"}, "must be a number"),
        ({"max_bytes": True}, "must be a number"),
        ({"max_bytes": -4}, "finite positive"),
    ],
)
def test_bad_budgets(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        check_budget(**kwargs)


def test_a_size_below_the_smallest_plan_says_what_the_smallest_takes():
    table = Sensitivity([_layer(32, 128, 0)], signal=1.0, calibrated=False)
    with pytest.raises(ValueError, match=r"max_bits_per_weight=3 cannot be met.*4\.\d+ bits"):
        choose(table, check_budget(max_bits_per_weight=3))


def _plan() -> Plan:
    table = Sensitivity([_layer(32, 128, s) for s in range(3)], signal=3.0, calibrated=False)
    budget = check_budget(max_bits_per_weight=6.0)
    choice, front = choose(table, budget)
    return plan_mod.build(table, choice, budget=budget, front=front)


def test_plan_reports_its_sizes_and_round_trips(tmp_path):
    p = _plan()
    assert p.bits_per_weight <= 6.0
    assert p.nbytes == sum(lay.nbytes for lay in p.layers)
    assert p.weights == 3 * 32 * 128
    assert set(p.uniform) >= {"int8", "int4", "float"}
    assert p.uniform["float"]["predicted_sqnr_db"] == math.inf
    assert len(p.curve) >= 2 and p.curve[0][0] < p.curve[-1][0]
    text = p.table()
    assert "bits per weight" in text and "l0" in text and "predicted mean layer SQNR" in text
    assert Plan.from_json(p.to_json()) == p
    json.loads(p.to_json())  # plain JSON: infinities as strings
    p.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == p
    spec = p.qconfig_spec()
    assert set(spec) == {"l0", "l1", "l2"}
    for lay in p.layers:
        assert spec[lay.name] == lay.format.options()


def test_plan_by_hand_and_refusals():
    p = Plan.from_dict({"a": "int8", "b": "int4-g64", "c": "float"})
    assert p.qconfig_spec() == {"a": {"bits": 8}, "b": Format(4, 64).options(), "c": None}
    with pytest.raises(ValueError, match="newer"):
        Plan.from_dict({"version": 99, "layers": []})
    with pytest.raises(ValueError, match="malformed"):
        Plan.from_dict({"layers": [{"format": "int8"}]})
    with pytest.raises(ValueError, match="unknown format"):
        Plan.from_dict({"a": "int5"})
    with pytest.raises(ValueError, match="JSON"):
        Plan.from_json("{not json")
    with pytest.raises(ValueError, match="once"):
        Plan([PlanLayer("a", "", (), Format(8), 0)] * 2)
