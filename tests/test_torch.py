"""dynaq.torch: quantize_dynamic on PyTorch models, the swapped modules, save/load, compare.

Skipped as a whole when torch is missing; the BERT tests also need transformers.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import dynaq  # noqa: E402
import dynaq.layers  # noqa: E402
import dynaq.torch as dt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# Models and helpers
# --------------------------------------------------------------------------------------------


class RNNLanguageModel(nn.Module):
    """Embedding -> 2-layer LSTM (or GRU) -> Linear over the vocabulary."""

    def __init__(self, rnn: type = nn.LSTM, vocab: int = 300, emb: int = 48, hidden: int = 96):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = rnn(emb, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        y, state = self.rnn(self.embed(ids), state)
        return self.head(y), state


def make_lm(rnn: type = nn.LSTM, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return RNNLanguageModel(rnn).eval()


def lm_inputs(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 300, (4, 24), generator=g)


def make_bert(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def bert_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (4, 48), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def first(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def run(model, inputs):
    with torch.no_grad():
        if isinstance(inputs, dict):
            return first(model(**inputs))
        return first(model(inputs))


def torch_quantize(model):
    """torch's own dynamic quantization (deprecated in torch; its warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, dtype=torch.qint8)


def run_torch_q(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(model, inputs)


def rel_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return float((ref - got).norm() / ref.norm())


def assert_beats_torch(name: str, model, inputs) -> None:
    ref = run(model, inputs)
    ours = rel_error(ref, run(dt.quantize_dynamic(model), inputs))
    theirs = rel_error(ref, run_torch_q(torch_quantize(model), inputs))
    print(
        f"\n{name}: relative L2 error vs float32: dynaq {ours:.3e} "
        f"(SQNR {-20 * np.log10(ours):.1f} dB), torch.ao quantize_dynamic {theirs:.3e} "
        f"(SQNR {-20 * np.log10(theirs):.1f} dB), ratio {theirs / ours:.2f}x"
    )
    # Per-row activation and per-channel weight scales: comfortably lower, not just lower.
    assert 0 < ours < 0.75 * theirs


def roundtrip_whole(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def roundtrip_state_dict(model, fresh):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    result = fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    return fresh


# --------------------------------------------------------------------------------------------
# Import behaviour
# --------------------------------------------------------------------------------------------


def test_import_dynaq_does_not_import_torch():
    code = "import sys, dynaq, dynaq.layers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_without_torch_is_a_clear_importerror():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n"
        "    import dynaq.torch\n"
        "except ImportError as e:\n"
        "    assert 'needs PyTorch' in str(e) and 'pip install' in str(e), str(e)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_linear_matches_numpy_layer(per_channel, granularity):
    torch.manual_seed(0)
    fl = nn.Linear(37, 19)
    q = dt.Linear.from_float(fl, per_channel=per_channel, granularity=granularity)
    layer = dynaq.layers.Linear.from_float(
        fl.weight.detach().numpy(),
        fl.bias.detach().numpy(),
        per_channel=per_channel,
        granularity=granularity,
    )
    x = torch.randn(3, 5, 37)
    y = q(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 19)
    np.testing.assert_array_equal(y.numpy(), layer(x.numpy()))
    ref = fl(x).detach()
    assert rel_error(ref, y) < 2e-2
    assert (q.in_features, q.out_features) == (37, 19)
    assert q.per_channel is per_channel and q.granularity == granularity


def test_linear_weight_and_bias_accessors():
    torch.manual_seed(0)
    fl = nn.Linear(16, 8)
    q = dt.Linear.from_float(fl)
    w = q.dequantized_weight()
    assert w.dtype == torch.float32 and w.shape == (8, 16)
    assert rel_error(fl.weight.detach(), w) < 1e-2
    values, scales = q.weight_int8()
    assert values.dtype == torch.int8 and scales.shape == (8,)
    assert torch.equal(values, q.weight) and torch.equal(scales, q.weight_scale)
    torch.testing.assert_close(values.float() * scales[:, None], w)
    torch.testing.assert_close(q.bias, fl.bias.detach())
    no_bias = dt.Linear.from_float(nn.Linear(16, 8, bias=False))
    assert no_bias.bias is None
    assert no_bias(torch.randn(2, 16)).shape == (2, 8)


def test_linear_dtypes_grad_and_views():
    torch.manual_seed(0)
    q = dt.Linear.from_float(nn.Linear(32, 12))
    x = torch.randn(6, 32)
    y = q(x)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        yd = q(x.to(dtype))
        assert yd.dtype == dtype
        if dtype == torch.float64:
            np.testing.assert_array_equal(yd.float().numpy(), y.numpy())
    xg = x.clone().requires_grad_(True)
    yg = q(xg)  # inference only: a backward through it raises, never a silent zero gradient
    np.testing.assert_array_equal(yg.detach().numpy(), y.numpy())
    with pytest.raises(RuntimeError, match="dynaq.linear has no gradient"):
        yg.sum().backward()
    with torch.no_grad():
        assert not q(xg).requires_grad
    xt = torch.randn(32, 6).t()  # non-contiguous view
    np.testing.assert_array_equal(q(xt).numpy(), q(xt.contiguous()).numpy())
    with torch.inference_mode():
        np.testing.assert_array_equal(q(x).numpy(), y.numpy())


def test_linear_bad_input():
    q = dt.Linear.from_float(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="floating-point tensor.*torch.int64"):
        q(torch.ones(2, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point tensor.*torch.bool"):
        q(torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="device 'meta'.*CPU"):
        q(torch.empty(2, 8, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q(np.ones((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="in_features = 8"):
        q(torch.ones(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        q(torch.full((2, 8), float("nan")))
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        dt.Linear.from_float(nn.LSTM(4, 4))
    with pytest.raises(ValueError, match="granularity"):
        dt.Linear(4, 4, granularity="col")


# --------------------------------------------------------------------------------------------
# LSTM / GRU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "bidirectional,batch_first,with_state",
    [(False, False, False), (True, True, True), (True, False, True), (False, True, True)],
)
def test_recurrent_semantics(kind, bidirectional, batch_first, with_state):
    torch.manual_seed(0)
    fm = getattr(nn, kind)(
        13, 21, num_layers=2, bidirectional=bidirectional, batch_first=batch_first
    )
    fm.eval()
    qm = getattr(dt, kind).from_float(fm)
    dirs = 2 if bidirectional else 1
    x = torch.randn((3, 7, 13) if batch_first else (7, 3, 13))
    hx = None
    if with_state:
        h0 = torch.randn(2 * dirs, 3, 21) * 0.5
        hx = (h0, torch.randn(2 * dirs, 3, 21) * 0.5) if kind == "LSTM" else h0
    with torch.no_grad():
        ref_out, ref_state = fm(x, hx)
    out, state = qm(x, hx)
    assert out.shape == ref_out.shape and out.dtype == torch.float32
    assert rel_error(ref_out, out) < 2e-2
    refs = ref_state if kind == "LSTM" else (ref_state,)
    gots = state if kind == "LSTM" else (state,)
    for r, g in zip(refs, gots):
        assert g.shape == r.shape
        assert rel_error(r, g) < 2e-2
    # The same numbers as the numpy layer.
    np_hx = None
    if hx is not None:
        np_hx = tuple(t.numpy() for t in hx) if kind == "LSTM" else hx.numpy()
    np_out, _ = qm.layer(x.numpy(), np_hx)
    np.testing.assert_array_equal(out.numpy(), np_out)
    assert (qm.input_size, qm.hidden_size, qm.num_layers) == (13, 21, 2)
    assert (qm.bidirectional, qm.batch_first) == (bidirectional, batch_first)


def test_recurrent_unbatched_dtype_and_flatten():
    torch.manual_seed(0)
    fm = nn.LSTM(6, 10).eval()
    qm = dt.LSTM.from_float(fm)
    qm.flatten_parameters()  # no-op, for code written for nn.LSTM
    x = torch.randn(5, 6, dtype=torch.float64)
    out, (h, c) = qm(x)
    assert out.shape == (5, 10) and h.shape == (1, 10) and c.shape == (1, 10)
    assert out.dtype == h.dtype == c.dtype == torch.float64
    with torch.no_grad():
        ref, _ = fm(x.float())
    assert rel_error(ref, out) < 2e-2


def test_recurrent_bad_input():
    torch.manual_seed(0)
    lstm = dt.LSTM.from_float(nn.LSTM(4, 6, batch_first=True))
    gru = dt.GRU.from_float(nn.GRU(4, 6))
    x = torch.randn(2, 3, 4)
    packed = nn.utils.rnn.pack_padded_sequence(x, [3, 2], batch_first=True)
    for m in (lstm, gru):
        with pytest.raises(TypeError, match="PackedSequence"):
            m(packed)
        with pytest.raises(TypeError, match="floating-point"):
            m(torch.ones(2, 3, 4, dtype=torch.int32))
        with pytest.raises(ValueError, match="device 'meta'"):
            m(torch.empty(2, 3, 4, device="meta"))
        with pytest.raises(ValueError, match="input_size = 4"):
            m(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        lstm(x, torch.zeros(1, 2, 6))
    with pytest.raises(ValueError, match="h_0 must have shape"):
        gru(x, torch.zeros(1, 5, 6))
    with pytest.raises(ValueError, match="proj_size"):
        dt.LSTM.from_float(nn.LSTM(4, 6, proj_size=3))
    with pytest.raises(TypeError, match="torch.nn.GRU"):
        dt.GRU.from_float(nn.LSTM(4, 6))


# --------------------------------------------------------------------------------------------
# Acceptance: more accurate than torch's dynamic quantization
# --------------------------------------------------------------------------------------------


def test_bert_encoder_error_lower_than_torch():
    model = make_bert()
    assert_beats_torch("BERT-like encoder (3 layers, hidden 128)", model, bert_inputs())


def test_lstm_language_model_error_lower_than_torch():
    assert_beats_torch("2-layer LSTM language model", make_lm(nn.LSTM), lm_inputs())


def test_gru_language_model_error_lower_than_torch():
    assert_beats_torch("2-layer GRU language model", make_lm(nn.GRU), lm_inputs())


def test_bert_swaps_every_linear_and_keeps_the_float_model():
    model = make_bert()
    before = copy.deepcopy(model.state_dict())
    q = dt.quantize_dynamic(model)
    assert not any(type(m) is nn.Linear for m in q.modules())
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == n_linear == 3 * 6 + 1
    after = model.state_dict()  # not inplace: the float model is untouched
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_rnn_lm_save_load_exact(rnn):
    q = dt.quantize_dynamic(make_lm(rnn))
    ids = lm_inputs()
    ref = run(q, ids)
    np.testing.assert_array_equal(run(roundtrip_whole(q), ids).numpy(), ref.numpy())
    fresh = dt.quantize_dynamic(make_lm(rnn, seed=5))
    assert not torch.equal(run(fresh, ids), ref)
    np.testing.assert_array_equal(run(roundtrip_state_dict(q, fresh), ids).numpy(), ref.numpy())
    np.testing.assert_array_equal(run(copy.deepcopy(q), ids).numpy(), ref.numpy())


def test_bert_save_load_exact():
    model = make_bert()
    q = dt.quantize_dynamic(model, per_channel=False, exclude=("pooler",))
    inputs = bert_inputs()
    ref = run(q, inputs)
    np.testing.assert_array_equal(run(roundtrip_whole(q), inputs).numpy(), ref.numpy())
    fresh = dt.quantize_dynamic(make_bert(seed=3), per_channel=False, exclude=("pooler",))
    loaded = roundtrip_state_dict(q, fresh)
    np.testing.assert_array_equal(run(loaded, inputs).numpy(), ref.numpy())
    assert not loaded.encoder.layer[0].output.dense.per_channel
    assert type(loaded.pooler.dense) is nn.Linear


def test_linear_skeleton_loads_a_state_dict():
    torch.manual_seed(0)
    q = dt.Linear.from_float(nn.Linear(24, 10), granularity="tensor")
    skeleton = dt.Linear(24, 10)
    assert torch.equal(skeleton(torch.ones(1, 24)), torch.zeros(1, 10))
    skeleton.load_state_dict(q.state_dict())
    x = torch.randn(3, 24)
    np.testing.assert_array_equal(skeleton(x).numpy(), q(x).numpy())
    assert skeleton.granularity == "tensor"
    with pytest.raises(RuntimeError, match="bias=True; this module has .*bias=False"):
        dt.Linear(24, 10, bias=False).load_state_dict(q.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key.*extra"):
        dt.Linear(24, 10).load_state_dict({**q.state_dict(), "extra": torch.zeros(1)})


def test_state_dict_layout(tmp_path):
    q = dt.quantize_dynamic(make_lm())
    sd = q.state_dict()
    rnn = {
        f"rnn.{p}_l{layer}{sfx}"
        for layer in (0, 1)
        for p, sfx in [
            ("weight_ih", ""), ("weight_ih", "_scale"), ("weight_hh", ""), ("weight_hh", "_scale"),
            ("bias_ih", ""), ("bias_hh", ""),
        ]
    }  # fmt: skip
    assert set(sd) == {"embed.weight", "head.weight", "head.weight_scale", "head.bias"} | rnn
    # Plain tensors, as what they are: int8 values, float32 scales and biases.
    assert sd["head.weight"].dtype == torch.int8 and tuple(sd["head.weight"].shape) == (300, 96)
    assert sd["head.weight_scale"].dtype == torch.float32
    assert tuple(sd["head.weight_scale"].shape) == (300,)
    assert sd["rnn.weight_hh_l1"].dtype == torch.int8
    assert sd["head.bias"].dtype == torch.float32
    values, scales = q.head.weight_int8()
    assert torch.equal(sd["head.weight"], values) and torch.equal(sd["head.weight_scale"], scales)
    assert sd._metadata["head"]["version"] == dynaq._dynaq.FORMAT_VERSION
    # Every tool reads it: torch.load with weights_only (the default), and safetensors.
    torch.save(sd, tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)
    fresh = dt.quantize_dynamic(make_lm(seed=9))
    fresh.load_state_dict(loaded)
    ids = lm_inputs()
    np.testing.assert_array_equal(run(fresh, ids).numpy(), run(q, ids).numpy())
    st_torch = pytest.importorskip("safetensors.torch")
    st_torch.save_file(sd, str(tmp_path / "sd.safetensors"))
    fresh = dt.quantize_dynamic(make_lm(seed=9))
    fresh.load_state_dict(st_torch.load_file(str(tmp_path / "sd.safetensors")))
    np.testing.assert_array_equal(run(fresh, ids).numpy(), run(q, ids).numpy())
    # Per-tensor scales are scalars.
    qt = dt.quantize_dynamic(make_lm(), per_channel=False)
    assert qt.state_dict()["head.weight_scale"].shape == ()


def test_state_dict_keeps_the_granularity():
    torch.manual_seed(0)
    q = dt.Linear.from_float(nn.Linear(8, 5), granularity="tensor")
    sd = q.state_dict()
    assert sd._metadata[""]["dynaq"]["granularity"] == "tensor"
    skeleton = dt.Linear(8, 5)
    skeleton.load_state_dict(sd)
    assert skeleton.granularity == "tensor"
    # Without the metadata (a safetensors file, say), the module keeps its own.
    bare = dict(sd)
    skeleton = dt.Linear(8, 5)
    skeleton.load_state_dict(bare)
    assert skeleton.granularity == "row"


def test_state_dict_mismatch_is_a_clear_error():
    q = dt.quantize_dynamic(make_lm())
    sd = q.state_dict()
    other = RNNLanguageModel(nn.LSTM, hidden=64).eval()
    wrong = dt.quantize_dynamic(other)
    sd_wrong = {k: v for k, v in sd.items() if k != "embed.weight"}
    sd_wrong["embed.weight"] = other.embed.weight.detach()
    with pytest.raises(RuntimeError) as e:
        wrong.load_state_dict(sd_wrong)
    msg = str(e.value)
    assert "size mismatch for head" in msg and "in_features=96" in msg
    assert "in_features=64" in msg and "size mismatch for rnn" in msg
    assert "hidden_size=96" in msg

    fresh = dt.quantize_dynamic(make_lm())
    bad = dict(sd)
    bad["head.weight"] = sd["head.weight"][:-10]
    with pytest.raises(RuntimeError, match=r"head.*scales .* do not fit a weight of shape \(290"):
        fresh.load_state_dict(bad)
    bad = dict(sd)
    bad["head.weight"] = sd["head.weight"].float()
    with pytest.raises(RuntimeError, match="head.weight must be an int8 array, got dtype float32"):
        fresh.load_state_dict(bad)
    bad = dict(sd)
    bad["head.weight_scale"] = torch.zeros(300)
    with pytest.raises(RuntimeError, match="head.*scales must be finite and positive"):
        fresh.load_state_dict(bad)
    bad = {k: v for k, v in sd.items() if k != "rnn.weight_ih_l0_scale"}
    bad["rnn.dynaq_weight_ih_l0"] = torch.zeros(3)
    with pytest.raises(RuntimeError) as e:
        fresh.load_state_dict(bad)
    assert "rnn.weight_ih_l0_scale" in str(e.value) and "rnn.dynaq_weight_ih_l0" in str(e.value)
    # Nothing was half-loaded into the module that failed, and strict=False skips what's missing.
    ids = lm_inputs()
    before = run(fresh, ids)
    fresh.load_state_dict({"embed.weight": sd["embed.weight"]}, strict=False)
    np.testing.assert_array_equal(run(fresh, ids).numpy(), before.numpy())


# --------------------------------------------------------------------------------------------
# qconfig_spec, exclude and friends
# --------------------------------------------------------------------------------------------


def kinds(model) -> dict:
    return {n: type(m).__name__ for n, m in model.named_children()}


def test_qconfig_spec_types_names_and_dicts():
    model = make_lm()
    assert kinds(dt.quantize_dynamic(model, {nn.Linear})) == {
        "embed": "Embedding",
        "rnn": "LSTM",
        "head": "Linear",
    }
    assert type(dt.quantize_dynamic(model, {nn.Linear}).head) is dt.Linear
    assert type(dt.quantize_dynamic(model, ["rnn"]).rnn) is dt.LSTM
    assert type(dt.quantize_dynamic(model, ["rnn"]).head) is nn.Linear
    q = dt.quantize_dynamic(model, {nn.Linear: None, nn.LSTM: {"granularity": "tensor"}})
    assert type(q.head) is nn.Linear and q.rnn.granularity == "tensor"
    q = dt.quantize_dynamic(model, {"": {"per_channel": False}, "head": None})
    assert type(q.head) is nn.Linear and not q.rnn.per_channel
    q = dt.quantize_dynamic(model, {nn.Linear: object(), nn.LSTM: False})
    assert type(q.head) is dt.Linear and type(q.rnn) is nn.LSTM


def test_qconfig_spec_bad_entries():
    model = make_lm()
    with pytest.raises(TypeError, match=r"torch.nn.modules.conv.Conv2d.*cannot quantize"):
        dt.quantize_dynamic(model, {nn.Linear, nn.Conv2d})
    with pytest.raises(TypeError, match="Embedding"):
        dt.quantize_dynamic(model, {nn.Embedding: True})
    with pytest.raises(TypeError, match=r"'embed' \(Embedding\).*contains none"):
        dt.quantize_dynamic(model, {"embed"})
    with pytest.raises(ValueError, match="'decoder', which is not in the model"):
        dt.quantize_dynamic(model, {"decoder"})
    with pytest.raises(TypeError, match="module types or module names"):
        dt.quantize_dynamic(model, {3})
    with pytest.raises(TypeError, match="qconfig_spec must be"):
        dt.quantize_dynamic(model, "head")
    with pytest.raises(ValueError, match="unknown option"):
        dt.quantize_dynamic(model, {"head": {"bitz": 4}})
    with pytest.raises(ValueError, match="granularity"):
        dt.quantize_dynamic(model, granularity="column")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        dt.quantize_dynamic(lambda x: x)


def test_exclude_prefix_glob_and_typos():
    model = make_bert()
    q = dt.quantize_dynamic(model, exclude=("encoder.layer.1", "*.output.dense"))
    names = {n for n, m in q.named_modules() if isinstance(m, dt.Linear)}
    assert "encoder.layer.0.attention.self.query" in names
    assert "encoder.layer.2.intermediate.dense" in names and "pooler.dense" in names
    assert not any(n.startswith("encoder.layer.1.") for n in names)
    assert not any(n.endswith(".output.dense") for n in names)
    with pytest.raises(ValueError, match="'encoder.layer.7' matches no module"):
        dt.quantize_dynamic(model, exclude=["encoder.layer.7"])
    with pytest.raises(ValueError, match="matches no module"):
        dt.quantize_dynamic(model, exclude="encoder.lay")  # prefixes match whole names


def test_warning_names_only_matmul_weights_left_in_float():
    class Tokens(nn.Module):  # ViT-style tables held as raw parameters: looked up, not multiplied
        def __init__(self):
            super().__init__()
            self.position_embeddings = nn.Parameter(torch.randn(1, 17, 16))
            self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
            self.mask_embedding = nn.Parameter(torch.randn(4, 16))

    class Experts(nn.Module):  # a stack of expert matrices: a matmul weight dynaq cannot take
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(4, 32, 16))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = Tokens()
            self.rnn = nn.LSTM(16, 16)
            self.experts = Experts()
            self.head = nn.Linear(16, 8)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dt.quantize_dynamic(nn.Sequential(Tokens(), nn.Linear(16, 8)))  # nothing left: silent
    with pytest.warns(UserWarning) as record:
        dt.quantize_dynamic(Model())
    (msg,) = [str(w.message) for w in record]
    assert "left 1 matmul weight(s)" in msg and "experts.gate_up_proj" in msg
    assert "position_embeddings" not in msg and "cls_token" not in msg
    # The share counts every weight dynaq took, the LSTM's included: 4*32*16 floats left of
    # 4*32*16 + LSTM (64*16 + 64*16) + head 8*16.
    left, done = 4 * 32 * 16, 2 * 64 * 16 + 8 * 16
    assert f"{100 * left / (left + done):.1f}%" in msg


def test_inplace_shared_modules_hooks_and_root():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    seen = []
    shared.register_forward_hook(lambda m, a, o: seen.append(type(m).__name__))
    q = dt.quantize_dynamic(model, inplace=True)
    assert q is model and q[0] is q[2] and isinstance(q[0], dt.Linear)
    q(torch.randn(2, 8))
    assert seen == ["Linear", "Linear"]
    root = dt.quantize_dynamic(nn.Linear(4, 3))
    assert isinstance(root, dt.Linear)
    mha = nn.TransformerEncoderLayer(16, 2, 32, batch_first=False).eval()
    # MultiheadAttention calls its projections' weights directly: they stay float, and say so.
    with pytest.warns(UserWarning, match=r"left 2 matmul weight\(s\) in float.*in_proj_weight"):
        qm = dt.quantize_dynamic(mha)
    assert type(qm.self_attn.out_proj) is type(mha.self_attn.out_proj)  # read by MHA directly
    assert isinstance(qm.linear1, dt.Linear)
    x = torch.randn(5, 2, 16)
    assert rel_error(run(mha, x), run(qm, x)) < 2e-2


def test_bad_weights_name_the_module():
    model = make_lm()
    with torch.no_grad():
        model.head.weight[3, 4] = float("inf")
    with pytest.raises(ValueError, match="cannot quantize module 'head'"):
        dt.quantize_dynamic(model)


# --------------------------------------------------------------------------------------------
# repr and compare
# --------------------------------------------------------------------------------------------


def test_repr_shows_what_was_swapped():
    q = dt.quantize_dynamic(make_lm(), exclude=["head"])
    text = repr(q)
    assert (
        "(rnn): DynaqLSTM(48, 96, num_layers=2, batch_first=True, dtype=int8, per_channel=True, "
        "granularity='row')" in text
    )
    assert "(head): Linear(in_features=96, out_features=300, bias=True)" in text
    lin = dt.quantize_dynamic(nn.Linear(5, 7, bias=False), per_channel=False, granularity="tensor")
    assert repr(lin) == (
        "DynaqLinear(in_features=5, out_features=7, bias=False, dtype=int8, per_channel=False, "
        "granularity='tensor')"
    )
    gru = dt.quantize_dynamic(nn.GRU(3, 4, bidirectional=True, bias=False))
    assert repr(gru) == (
        "DynaqGRU(3, 4, num_layers=1, bias=False, bidirectional=True, dtype=int8, "
        "per_channel=True, granularity='row')"
    )


def test_compare_on_bert():
    model = make_bert()
    q = dt.quantize_dynamic(model)
    result = dt.compare(model, q, bert_inputs())
    names = [r["name"] for r in result.rows]
    assert names[:4] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.output.dense",
    ]
    assert len(names) == 3 * 6 + 1 and names[-1] == "pooler.dense"
    keys = {"name", "kind", "shape", "sqnr_db", "cosine", "max_abs_error", "rel_error", "calls"}
    for row in result.rows:
        assert set(row) == keys
        assert row["kind"] == "DynaqLinear" and row["calls"] == 1
        assert 25 < row["sqnr_db"] < 80 and 0.99 < row["cosine"] <= 1.0 + 1e-12
    assert result.rows[4]["shape"] == (4, 48, 512)
    out = result.output
    assert out["name"] == "<output>" and out["shape"] == (4, 48, 128)
    real = bert_inputs()["attention_mask"] != 0  # the padding of row 1 is not measured
    ref, got = run(model, bert_inputs())[real], run(q, bert_inputs())[real]
    assert out["max_abs_error"] == pytest.approx(float((ref - got).abs().max()), rel=1e-6)
    assert out["rel_error"] == pytest.approx(rel_error(ref, got), rel=1e-6)
    text = result.table()
    assert str(result) == text
    assert "SQNR dB" in text and "encoder.layer.2.output.dense" in text and "<output>" in text
    assert repr(result).startswith("Comparison(19 layers, output SQNR")


def test_compare_inputs_tuple_tensor_and_torch_model():
    model = make_lm()
    q = dt.quantize_dynamic(model)
    ids = lm_inputs()
    a = dt.compare(model, q, ids)
    b = dt.compare(model, q, (ids,))
    assert [r["name"] for r in a.rows] == ["rnn", "head"]
    assert a.rows[0]["kind"] == "DynaqLSTM" and a.rows[0]["shape"] == (4, 24, 96)
    assert a.output["sqnr_db"] == b.output["sqnr_db"] > 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq = torch_quantize(model)
        c = dt.compare(model, tq, ids)
    assert [r["name"] for r in c.rows] == ["rnn", "head"]
    assert c.output["sqnr_db"] < a.output["sqnr_db"]
    same = dt.compare(model, model, ids)
    assert same.rows == [] and same.output["sqnr_db"] == float("inf")
    with pytest.raises(TypeError, match="model_q"):
        dt.compare(model, "q", ids)


# --------------------------------------------------------------------------------------------
# The example script
# --------------------------------------------------------------------------------------------


def test_example_quantize_torch_model_runs(tmp_path):
    script = os.path.join(ROOT, "examples", "quantize_torch_model.py")
    proc = subprocess.run(
        [sys.executable, "-W", "error", script, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SQNR" in proc.stdout and "reloaded outputs identical: True" in proc.stdout


# --------------------------------------------------------------------------------------------
# Sharing torch's OpenMP threads
# --------------------------------------------------------------------------------------------

_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()
needs_openmp = pytest.mark.skipif(not _OPENMP, reason="torch does not run on OpenMP here")


@pytest.fixture
def shared_two_threads():
    """Two dynaq threads on torch's OpenMP team; restores the previous settings."""
    threads, torch_threads = dynaq.get_num_threads(), torch.get_num_threads()
    dynaq.set_num_threads(2)
    torch.set_num_threads(2)
    assert dt.share_torch_threads(True)
    yield
    dynaq.set_num_threads(threads)
    torch.set_num_threads(torch_threads)
    dt.share_torch_threads(False)


def _big_linear_case(seed: int = 0):
    # 256 x 512 x 384 = 50M multiply-adds: above the 16M from which the team is used.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 384)).astype(np.float32)
    pw = dynaq.pack_weight(rng.standard_normal((512, 384)).astype(np.float32))
    b = rng.standard_normal(512).astype(np.float32)
    return x, pw, b


@needs_openmp
def test_sharing_torch_threads_is_an_explicit_switch():
    # In a fresh interpreter: importing dynaq.torch changes nothing; the call switches it on.
    code = (
        "import dynaq, dynaq.torch as dt; print(dynaq._dynaq.sharing_openmp_team()); "
        "print(dt.share_torch_threads()); print(dynaq._dynaq.sharing_openmp_team()); "
        "print(dt.share_torch_threads(False)); print(dynaq._dynaq.sharing_openmp_team())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True", "False", "False"]
    from dynaq.torch.threads import _torch_openmp_library

    path = _torch_openmp_library()
    assert path is not None and os.path.basename(path).startswith(("libgomp", "libiomp", "libomp"))


@needs_openmp
def test_shared_team_results_are_bit_identical(shared_two_threads):
    x, pw, b = _big_linear_case()
    xq = np.clip(x * 20 + 128, 0, 255).astype(np.uint8)
    wq = np.ascontiguousarray(pw.unpack()[0].T)
    shared = [dynaq.linear(x, pw, b), dynaq.matmul_integer(xq, wq)]
    dt.share_torch_threads(False)
    assert not dynaq._dynaq.sharing_openmp_team()
    own = [dynaq.linear(x, pw, b), dynaq.matmul_integer(xq, wq)]
    for a, o in zip(shared, own):
        np.testing.assert_array_equal(a, o, strict=True)
    with dynaq.use_isa("scalar"):
        np.testing.assert_array_equal(dynaq.linear(x, pw, b), own[0], strict=True)


def test_share_openmp_team_rejects_a_library_that_is_not_loaded():
    before = dynaq._dynaq.sharing_openmp_team()
    with pytest.raises(OSError, match="not loaded"):
        dynaq._dynaq.share_openmp_team("/nonexistent/libgomp.so.1")
    assert dynaq._dynaq.sharing_openmp_team() == before


@needs_openmp
def test_shared_team_with_many_python_threads(shared_two_threads):
    import threading

    cases = [_big_linear_case(s) for s in range(3)]
    want = [dynaq.linear(*c) for c in cases]
    bad: list[str] = []

    def worker(i: int) -> None:
        for r in range(4):
            k = (i + r) % 3
            if not np.array_equal(dynaq.linear(*cases[k]), want[k]):
                bad.append(f"thread {i} round {r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not bad, bad


_FORK_CHILD = """
import sys, numpy as np, torch, dynaq, dynaq.torch, multiprocessing as mp
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 384)).astype(np.float32)
pw = dynaq.pack_weight(rng.standard_normal((512, 384)).astype(np.float32))
dynaq.set_num_threads(2); torch.set_num_threads(2)
assert dynaq.torch.share_torch_threads()
want = dynaq.linear(x, pw)  # the OpenMP team now exists in the parent

def child(conn):
    conn.send((dynaq._dynaq.sharing_openmp_team(), dynaq.linear(x, pw)))

ctx = mp.get_context("fork")
a, b = ctx.Pipe(duplex=False)
p = ctx.Process(target=child, args=(b,))
p.start()
assert a.poll(60), "forked child gave no result"
shared_in_child, got = a.recv()
p.join(60)
assert p.exitcode == 0
assert not shared_in_child, "the child must not use the parent's OpenMP team"
assert np.array_equal(got, want)
assert np.array_equal(dynaq.linear(x, pw), want)
print("fork ok")
"""


@needs_openmp
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_fork_after_sharing_torch_threads():
    # In a fresh interpreter: a fork of this multi-threaded test process proves nothing more.
    out = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fork ok" in out.stdout


def test_quantize_dynamic_takes_pytorch_calls_unchanged():
    """PyTorch's own call runs as it is: dtype=torch.qint8 (by keyword or position)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 8)
    want = dt.quantize_dynamic(model)(x)
    for q in (
        dt.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8),
        dt.quantize_dynamic(model, {nn.Linear}, torch.qint8),
        dt.quantize_dynamic(model, qconfig_spec={nn.Linear}, dtype=torch.qint8, inplace=False),
    ):
        assert isinstance(q[0], dt.Linear) and torch.equal(q(x), want)
    for dtype in (torch.float16, torch.quint8, torch.int8):
        with pytest.raises(ValueError, match=f"dtype={dtype}: dynaq quantizes weights to int8"):
            dt.quantize_dynamic(model, {nn.Linear}, dtype=dtype)
    with pytest.raises(ValueError, match="mapping: dynaq swaps modules for its own"):
        dt.quantize_dynamic(model, {nn.Linear}, torch.qint8, {nn.Linear: nn.Linear})
