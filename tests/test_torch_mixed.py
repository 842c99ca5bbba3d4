"""Automatic mixed precision in torch: ``quantize_dynamic`` with a size or accuracy budget, from
the weights alone or measured with sample inputs, on an MLP, a Llama-style decoder and an LSTM
language model; the plan as data (``dynaq.torch.plan``), reapplied to another copy; the
refusals."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest

torch = pytest.importorskip("torch")
import dynaq.torch as dt  # noqa: E402
from dynaq.mixed import Format, Plan  # noqa: E402
from dynaq.torch.budget import module_nbytes  # noqa: E402
from torch import nn  # noqa: E402


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 32)
    ).eval()


class LstmLm(nn.Module):
    """A word-level LSTM language model: embedding, two LSTM layers, a vocabulary head."""

    def __init__(self, vocab: int = 50, width: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


def lstm_lm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LstmLm().eval()


def llama(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=120, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def samples_for(kind: str, count: int = 3) -> list:
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return [torch.randn(8, 64, generator=g) for _ in range(count)]
    if kind == "lstm":
        return [torch.randint(0, 50, (2, 12), generator=g) for _ in range(count)]
    out = []
    for _ in range(count):
        ids = torch.randint(0, 120, (2, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # padding: kept out of every error
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


MODELS = {"mlp": mlp, "lstm": lstm_lm, "llama": llama}


def _outputs(model: nn.Module, sample) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(sample, dict):
            out = model(**sample)
            t = out.logits if hasattr(out, "logits") else out
            return t[sample["attention_mask"] != 0]
        return model(sample)


def measured(fp: nn.Module, q: nn.Module, samples) -> tuple[float, float]:
    """SQNR (dB) and cosine of the quantized model's outputs over all samples, computed here
    independently of dynaq's report."""
    s = n = dot = g = 0.0
    for x in samples:
        a = _outputs(fp, x).double().reshape(-1)
        b = _outputs(q, x).double().reshape(-1)
        s += float(a @ a)
        n += float((a - b) @ (a - b))
        dot += float(a @ b)
        g += float(b @ b)
    return 10 * math.log10(s / n), dot / math.sqrt(s * g)


def dynaq_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (dt.Linear, dt.LSTM, dt.GRU))}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_size_budget_holds_and_the_report_is_truthful(kind):
    fp = MODELS[kind]()
    samples = samples_for(kind)
    q = dt.quantize_dynamic(fp, max_bits_per_weight=6.0, sample_inputs=samples, progress=False)
    p = dt.plan(q)
    assert p.sensitivity == "samples" and p.budget == {"max_bits_per_weight": 6.0}
    assert p.bits_per_weight <= 6.0
    # The bytes are those of the model's modules.
    mods = dynaq_modules(q)
    for layer in p.layers:
        if layer.format.is_float:
            assert layer.name not in mods
        else:
            m = mods[layer.name]
            assert module_nbytes(m) == layer.nbytes
            assert (m.bits, m.group_size if m.bits == 4 else None) == (
                layer.format.bits, layer.format.group_size)  # fmt: skip
    # What it says it measured is what the model does.
    sqnr, cosine = measured(fp, q, samples)
    assert p.measured["sqnr_db"] == pytest.approx(sqnr, abs=1e-9)
    assert p.measured["cosine"] == pytest.approx(cosine, abs=1e-12)
    # And the prediction it chose by is close to it (the errors of the layers add).
    assert abs(p.predicted_sqnr_db - sqnr) < 1.5
    # It beats every uniform plan of the same size or less.
    for name, u in p.uniform.items():
        if u["bits_per_weight"] <= p.bits_per_weight:
            assert p.predicted_sqnr_db >= u["predicted_sqnr_db"] - 1e-9, name


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_accuracy_budget_takes_the_fewest_bytes_that_meet_it(kind):
    """Every plan of the measured table enumerated: none smaller is predicted to meet the
    target, or one that is was measured and missed it."""
    fp = MODELS[kind]()
    samples = samples_for(kind)
    formats = ["int4-channel", "int4", "int8"]
    table = dt.sensitivity(fp, samples, formats=formats, progress=False)
    target = table.predicted_sqnr_db([lay.formats.index(Format(4, 32)) for lay in table.layers])
    target += 4.0  # between uniform int4 and int8
    q = dt.quantize_dynamic(fp, min_sqnr_db=target, sample_inputs=samples, formats=formats,
                            progress=False)  # fmt: skip
    p = dt.plan(q)
    assert measured(fp, q, samples)[0] >= target
    assert p.measured["sqnr_db"] >= target
    chosen = [lay.formats.index(f) for lay, f in zip(table.layers, p.formats().values())]
    assert table.nbytes(chosen) == p.nbytes
    for combo in itertools.product(*[range(len(lay.formats)) for lay in table.layers]):
        if table.nbytes(combo) < p.nbytes and table.predicted_sqnr_db(combo) >= target:
            spec = {lay.name: lay.formats[j].options() for lay, j in zip(table.layers, combo)}
            qq = dt.quantize_dynamic(fp, qconfig_spec=spec)
            assert measured(fp, qq, samples)[0] < target


def test_sensitivity_is_what_the_budget_chose_from():
    fp = mlp()
    samples = samples_for("mlp")
    table = dt.sensitivity(fp, samples, progress=False)
    assert [lay.name for lay in table.layers] == ["0", "2", "4"]
    assert table.calibrated and table.signal > 0
    p = dt.plan(dt.quantize_dynamic(fp, max_bits_per_weight=5.5, sample_inputs=samples,
                                    progress=False))  # fmt: skip
    choice = [lay.index(p.formats()[lay.name]) for lay in table.layers]
    assert table.predicted_sqnr_db(choice) == pytest.approx(p.predicted_sqnr_db)
    # The float model is left as it was.
    ref = mlp()
    for a, b in zip(fp.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert all(type(m) is not dt.Linear for m in fp.modules())


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_weights_only_budgets(kind):
    fp = MODELS[kind]()
    q = dt.quantize_dynamic(fp, max_bits_per_weight=6.0, progress=False)
    p = dt.plan(q)
    assert p.sensitivity == "weights" and p.measured is None and p.bits_per_weight <= 6.0
    q = dt.quantize_dynamic(fp, min_sqnr_db=30.0, progress=False)
    for layer in dt.plan(q).layers:
        assert layer.layer_sqnr_db >= 30.0


def test_per_tensor_int8_options_carry_into_a_budget():
    """``per_channel=False`` is int8's option: a budget's int8 layers take it, its 4-bit ones
    keep their groups, and the bytes measured are those stored."""
    q = dt.quantize_dynamic(mlp(), per_channel=False, max_bits_per_weight=7.0,
                            formats=["int4", "int8"], progress=False)  # fmt: skip
    p = dt.plan(q)
    assert set(p.counts()) == {"int4", "int8"}
    for layer in p.layers:
        m = q.get_submodule(layer.name)
        assert module_nbytes(m) == layer.nbytes
        if layer.format.bits == 8:
            assert not m.per_channel


def test_max_bytes_holds():
    fp = mlp()
    table = dt.sensitivity(fp, progress=False)
    smallest = sum(int(lay.nbytes.min()) for lay in table.layers)
    q = dt.quantize_dynamic(fp, max_bytes=smallest + 3000, progress=False)
    p = dt.plan(q)
    assert p.nbytes <= smallest + 3000 and p.budget == {"max_bytes": smallest + 3000}
    assert p.nbytes == sum(module_nbytes(m) for m in dynaq_modules(q).values())


def test_a_budget_too_small_says_what_the_smallest_plan_takes():
    with pytest.raises(ValueError, match=r"max_bits_per_weight=3 cannot be met.*bits per weight"):
        dt.quantize_dynamic(mlp(), max_bits_per_weight=3)


def test_a_plan_reapplies_to_another_copy_bit_for_bit(tmp_path):
    fp = llama()
    samples = samples_for("llama")
    q = dt.quantize_dynamic(fp, max_bits_per_weight=5.0, sample_inputs=samples, progress=False)
    p = dt.plan(q)
    assert len(p.counts()) >= 2  # mixed
    p.save(tmp_path / "plan.json")
    # The samples calibrated the 4-bit weights: with them, the same bits.
    again = dt.quantize_dynamic(llama(), plan=Plan.load(tmp_path / "plan.json"),
                                sample_inputs=samples)  # fmt: skip
    for x in samples:
        assert torch.equal(_outputs(q, x), _outputs(again, x))
    assert dt.plan(again).formats() == p.formats()
    # A dict of names to formats does too; without samples, the same formats, uncalibrated.
    by_hand = dt.quantize_dynamic(llama(), plan={n: f.name for n, f in p.formats().items()},
                                  sample_inputs=samples)  # fmt: skip
    assert torch.equal(_outputs(by_hand, samples[0]), _outputs(q, samples[0]))
    plain = dt.quantize_dynamic(llama(), plan=p)
    assert dt.plan(plain).formats() == p.formats()


def test_sample_inputs_calibrate_4_bit_weights():
    """Each linear module's importance: the mean square of its input features over the
    samples' real positions; the 4-bit search weighted by it beats the plain one on them."""
    # Inputs whose features have very different scales: where calibration matters.
    g = torch.Generator().manual_seed(5)
    scale = torch.exp(torch.rand(64, generator=g) * math.log(30.0))
    spread = [torch.randn(64, 64, generator=g) * scale for _ in range(4)]
    net = mlp()
    plain = dt.quantize_dynamic(net, bits=4)
    tuned = dt.quantize_dynamic(net, bits=4, sample_inputs=spread[:2])
    assert measured(net, tuned, spread[2:])[0] > measured(net, plain, spread[2:])[0] + 0.3
    int8 = dt.quantize_dynamic(net, sample_inputs=spread)  # int8 has no search: unchanged
    assert torch.equal(int8(spread[0]), dt.quantize_dynamic(net)(spread[0]))
    fp = llama()
    samples = samples_for("llama", 4)
    calibrated = dt.quantize_dynamic(fp, bits=4, sample_inputs=samples)
    # The importance is exactly the inputs' mean square: rebuild one module by hand.
    name = "model.layers.0.mlp.down_proj"
    rows, mask = [], {}
    hook = fp.get_submodule(name).register_forward_pre_hook(
        lambda module, args: rows.append(args[0][mask["now"] != 0])
    )
    for x in samples:
        mask["now"] = x["attention_mask"]
        _outputs(fp, x)
    hook.remove()
    xs = torch.cat(rows).double()
    importance = (xs * xs).mean(0).float().numpy()
    ref = dt.Linear.from_float(fp.get_submodule(name), bits=4, importance=importance)
    got = calibrated.get_submodule(name).state_dict()
    assert all(torch.equal(got[k], t) for k, t in ref.state_dict().items())


def test_the_plan_travels_with_the_model():
    fp = mlp()
    q = dt.quantize_dynamic(fp, max_bits_per_weight=5.0, progress=False)
    p = dt.plan(q)
    assert dt.plan(copy.deepcopy(q)) == p
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([nn.Sequential, nn.GELU, *dt.safe_globals()]):
        loaded = torch.load(buf, weights_only=True)
    assert dt.plan(loaded) == p


def test_plan_of_a_model_quantized_without_a_budget():
    q = dt.quantize_dynamic(mlp(), qconfig_spec={"0": {"bits": 4, "group_size": 64}, "2": {},
                                                 "4": None})  # fmt: skip
    p = dt.plan(q)
    assert p.formats() == {"0": Format(4, 64), "2": Format(8)}
    assert p.budget == {} and p.measured is None
    assert p.nbytes == sum(module_nbytes(m) for m in dynaq_modules(q).values())


def test_progress_bar_names_the_layers(capsys):
    dt.quantize_dynamic(mlp(), max_bits_per_weight=6.0, sample_inputs=samples_for("mlp", 1),
                        progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "[" in err and "the mixed model" in err
    assert all(name in err for name in ("0", "2", "4"))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_bits_per_weight": 5.0, "min_sqnr_db": 20.0}, ValueError, "one budget"),
        ({"formats": ["int8"]}, ValueError, "give one too"),
        ({"plan": {"0": "int8"}, "max_bits_per_weight": 5.0}, ValueError, "no budget"),
        (
            {
                "sample_inputs": [torch.randn(2, 64)],
                "bits": 4,
                "method": "rtn",
                "qconfig_spec": {"0": {"importance": 1}},
            },
            ValueError,
            "unknown option",
        ),
        ({"max_bits_per_weight": 5.0, "sample_inputs": torch.randn(2, 64)}, TypeError, "list"),
        ({"max_bits_per_weight": 5.0, "sample_inputs": []}, ValueError, "empty"),
        ({"max_bits_per_weight": 5.0, "sample_inputs": {"x": 1}}, TypeError, "list"),
        ({"max_bits_per_weight": 5.0, "formats": ["int5"]}, ValueError, "unknown format"),
        ({"max_bits_per_weight": 5.0, "progress": "yes"}, TypeError, "progress"),
        ({"plan": {"9": "int8"}}, ValueError, "'9'"),
        ({"plan": {"2": "int4-g64", "4": "int4-g128"}}, ValueError, "'4'.*int4-g128"),
        ({"plan": 5}, TypeError, "plan must be"),
    ],
)
def test_refusals(kwargs, error, message):
    fp = mlp()
    before = [p.clone() for p in fp.parameters()]
    with pytest.raises(error, match=message):
        dt.quantize_dynamic(fp, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, fp.parameters()))


def test_a_meta_model_needs_a_plan_not_a_budget():
    with torch.device("meta"):
        fp = nn.Sequential(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="meta device.*plan="):
        dt.quantize_dynamic(fp, max_bits_per_weight=5.0)
    with pytest.raises(ValueError, match="sample_inputs needs the weights.*meta device"):
        dt.quantize_dynamic(fp, max_bits_per_weight=5.0, sample_inputs=[torch.randn(2, 64)])
    skeleton = dt.quantize_dynamic(fp, plan={"0": "int4-g64"})
    assert skeleton[0].group_size == 64


@pytest.mark.parametrize("kind", ["llama", "lstm"])
def test_replaying_the_blocks_before_a_layer_changes_nothing(kind, monkeypatch):
    """The sensitivity pass replays the float model's blocks that ran before each layer (after
    proving the replay on the model): the table is the one of full passes, bit for bit."""
    from dynaq.torch import _replay, budget

    fp, samples = MODELS[kind](), samples_for(kind)
    used = []
    real = budget._replayer

    def spy(*args):
        used.append(real(*args))
        return used[-1]

    monkeypatch.setattr(budget, "_replayer", spy)
    fast = dt.sensitivity(fp, samples, progress=False)
    monkeypatch.setattr(budget, "_replayer", lambda *a: _replay.Replay(nn.Identity(), {}))
    full = dt.sensitivity(fp, samples, progress=False)
    assert used[0].ok == (kind == "llama")  # the LSTM model has no block of two layers
    for a, b in zip(fast.layers, full.layers):
        assert (a.noise == b.noise).all() and (a.layer_sqnr_db == b.layer_sqnr_db).all()


def test_replay_is_refused_when_it_would_change_the_output():
    """A block whose output depends on more than its inputs (here a counter of calls) fails
    the proof, and nothing is replayed."""
    from dynaq.torch import _replay

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.b(self.a(x)) + self.calls

    model = nn.Sequential(Counting(), nn.Linear(8, 8)).eval()
    targets = {"0.a": model[0].a, "0.b": model[0].b, "1": model[1]}
    replay = _replay.Replay(model, targets)
    x = torch.randn(2, 8)
    with torch.no_grad():
        ref = model(x)

    def run() -> bool:
        replay.begin_sample(0)
        with torch.no_grad():
            return torch.equal(model(x), ref)

    replay.record(1, run)
    assert replay.ok and replay.before("1") == [model[0]]
    replay.prove(run)
    assert not replay.ok and replay.before("1") == []


@pytest.mark.parametrize("kind", ["mlp", "llama"])
def test_a_cosine_target_on_the_models_output(kind):
    fp, samples = MODELS[kind](), samples_for(kind)
    int4 = measured(fp, dt.quantize_dynamic(fp, bits=4, sample_inputs=samples), samples)[1]
    target = 1.0 - (1.0 - int4) / 4  # a quarter of uniform 4-bit's distance from 1
    q = dt.quantize_dynamic(fp, min_cosine=target, sample_inputs=samples, progress=False)
    p = dt.plan(q)
    assert p.budget == {"min_cosine": target}
    assert measured(fp, q, samples)[1] >= target
    assert p.measured["cosine"] == pytest.approx(measured(fp, q, samples)[1], abs=1e-12)
    assert 0 < p.nbytes < sum(4 * n * k for lay in p.layers for n, k in lay.shapes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_cosine": 0.99}, "needs sample_inputs"),
        ({"min_cosine": 1.0, "sample_inputs": [torch.randn(2, 64)]}, "between 0 and 1"),
        ({"min_cosine": 0.9, "min_sqnr_db": 20, "sample_inputs": [torch.randn(2, 64)]},
         "one budget"),
    ],
)  # fmt: skip
def test_cosine_target_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dt.quantize_dynamic(mlp(), **kwargs)


def test_samples_that_calibrate_nothing_cost_no_pass():
    """int8 weights (and round-to-nearest 4-bit ones) have no search to weight: the samples are
    not run at all."""
    net = mlp()
    calls = []
    net.register_forward_pre_hook(lambda m, a: calls.append(1))
    dt.quantize_dynamic(net, sample_inputs=[torch.randn(2, 64)])
    dt.quantize_dynamic(net, bits=4, method="rtn", sample_inputs=[torch.randn(2, 64)])
    assert calls == []
    dt.quantize_dynamic(net, bits=4, sample_inputs=[torch.randn(2, 64)])
    assert len(calls) == 1
