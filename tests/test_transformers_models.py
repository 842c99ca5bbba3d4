"""dynaq.torch.quantize_dynamic on Hugging Face transformers models built from small random
configs: every projection swapped (GPT-2's ``Conv1D`` too), tied weights kept tied, one warning
for matmul weights left in float, the memory saved, greedy ``generate()`` against float32,
``torch.compile`` under ``inference_mode`` on an encoder and on a decoder that generates, and
``compare()`` on real tokens only."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import dynaq  # noqa: E402
import dynaq.torch as dt  # noqa: E402
from torch import nn  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:torch.*"),
]


def gpt2(seed: int = 0):
    cfg = transformers.GPT2Config(
        vocab_size=400, n_positions=64, n_embd=64, n_layer=2, n_head=4, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(seed: int = 0, tie: bool = False):
    cfg = transformers.LlamaConfig(
        vocab_size=400, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def bert(seed: int = 0):
    cfg = transformers.BertConfig(
        vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=160, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def model_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor storage a model holds (parameters and buffers, persistent
    or not): what it costs in memory."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def expected_bytes(model: nn.Module, swapped: list[nn.Module]) -> int:
    """The memory the quantized model should take: the float32 model, less 3 of the 4 bytes of
    every swapped weight, plus one float32 scale per output channel."""
    total = model_bytes(model)
    for m in swapped:
        out_f, in_f = (m.nf, m.nx) if isinstance(m, Conv1D) else (m.out_features, m.in_features)
        total -= 3 * in_f * out_f - 4 * out_f
    return total


def greedy_agreement(fp: nn.Module, q: nn.Module, prompt: torch.Tensor, n: int = 12) -> float:
    with torch.inference_mode():
        a = fp.generate(prompt, max_new_tokens=n, do_sample=False)[:, prompt.shape[1] :]
        b = q.generate(prompt, max_new_tokens=n, do_sample=False)[:, prompt.shape[1] :]
    return float((a == b).double().mean())


def prompt(seed: int = 3, vocab: int = 400, length: int = 6) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Every projection, tied weights, memory, generate
# --------------------------------------------------------------------------------------------


def test_gpt2_conv1d_swapped_and_lm_head_kept_tied():
    model = gpt2()
    convs = [m for m in model.modules() if isinstance(m, Conv1D)]
    assert len(convs) == 4 * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left unquantized: no warning
        q = dt.quantize_dynamic(model)
    assert not any(isinstance(m, Conv1D) for m in q.modules())
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == len(convs)
    # The lm_head shares the word embedding: it stays float and tied, never a second copy.
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.transformer.wte.weight
    assert model_bytes(q) == expected_bytes(model, convs)
    ratio = model_bytes(model) / model_bytes(q)
    agree = greedy_agreement(model, q, prompt())
    print(f"\nGPT-2 (random, 2 layers): {model_bytes(model)} -> {model_bytes(q)} bytes "
          f"({ratio:.2f}x); greedy tokens equal to float32: {100 * agree:.0f}%")  # fmt: skip
    assert agree >= 0.75


def test_conv1d_orientation_and_scales_per_output_channel():
    torch.manual_seed(1)
    conv = Conv1D(24, 40)  # nf = 24 outputs, nx = 40 inputs; weight (40, 24)
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.1, 10, 24))  # output channels of very different ranges
        conv.bias.normal_()
    q = dt.Linear.from_float(conv)
    assert (q.in_features, q.out_features) == (40, 24)
    pw = dynaq.pack_weight(conv.weight.detach().t().numpy().copy())
    w8, scales = pw.unpack()
    assert torch.equal(q.weight, torch.from_numpy(w8)) and scales.shape == (24,)
    assert torch.equal(q.weight_scale, torch.from_numpy(scales))
    x = torch.randn(3, 5, 40)
    ref = conv(x).detach()
    got = q(x)
    assert got.shape == ref.shape == (3, 5, 24)
    err = float((got - ref).norm() / ref.norm())
    assert err < 0.02
    # The exact answer: dynaq.linear of the transposed weight.
    exact = dynaq.linear(x.reshape(15, 40).numpy(), pw, conv.bias.detach().numpy())
    assert np.array_equal(got.reshape(15, 24).numpy(), exact)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_every_projection_and_memory(tie):
    model = llama(tie=tie)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = dt.quantize_dynamic(model)
    swapped = [m for m in q.modules() if isinstance(m, dt.Linear)]
    projections = 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
    if tie:
        assert len(swapped) == projections and q.lm_head.weight is q.model.embed_tokens.weight
        linears = [m for m in linears if m.weight is not model.model.embed_tokens.weight]
    else:
        assert len(swapped) == projections + 1 and isinstance(q.lm_head, dt.Linear)
    assert model_bytes(q) == expected_bytes(model, linears)
    agree = greedy_agreement(model, q, prompt())
    print(f"\nLlama (random, tie={tie}): {model_bytes(model) / model_bytes(q):.2f}x smaller; "
          f"greedy tokens equal to float32: {100 * agree:.0f}%")  # fmt: skip
    assert agree >= 0.75


def test_bert_every_projection_and_memory():
    model = bert()
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    q = dt.quantize_dynamic(model)
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == len(linears) == 6 * 2 + 1
    assert model_bytes(q) == expected_bytes(model, linears)


def test_a_weight_shared_by_two_linears_is_quantized_once():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 48)
            self.b = nn.Linear(32, 48, bias=False)
            self.b.weight = self.a.weight  # shared, each with its own bias

        def forward(self, x):
            return self.a(x) + self.b(x)

    torch.manual_seed(2)
    model = TwoHeads().eval()
    q = dt.quantize_dynamic(model)
    assert q.a.layer.weight is q.b.layer.weight
    assert q.a.weight_panels.data_ptr() == q.b.weight_panels.data_ptr()
    x = torch.randn(4, 32)
    assert torch.equal(q.b(x), dt.Linear.from_float(model.b)(x))
    # One int8 copy of the weight; each module keeps its own 48 float32 scales.
    assert model_bytes(q) == model_bytes(model) - 3 * 32 * 48 + 2 * 4 * 48


def test_unquantizable_matmul_weights_get_one_warning():
    mixtral = getattr(transformers, "MixtralConfig", None)
    if mixtral is None:
        pytest.skip("this transformers has no Mixtral")
    cfg = mixtral(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg).eval()
    experts = {
        f"{n}.{pn}": p
        for n, m in model.named_modules()
        for pn, p in m._parameters.items()
        if p is not None and p.dim() == 3
    }
    if not experts:
        pytest.skip("this transformers keeps Mixtral's experts as nn.Linear")
    with pytest.warns(UserWarning) as record:
        q = dt.quantize_dynamic(model)
    msgs = [str(w.message) for w in record if "matmul weight" in str(w.message)]
    assert len(msgs) == 1
    for name in experts:
        assert name in msgs[0]
    share = float(msgs[0].split("hold ")[1].split("%")[0])
    left = sum(p.numel() for p in experts.values())
    done = sum(m.in_features * m.out_features for m in q.modules() if isinstance(m, dt.Linear))
    router = [
        m.weight.numel() for m in q.modules()
        if not isinstance(m, (dt.Linear, nn.Embedding)) and "weight" in m._parameters
        and m._parameters["weight"] is not None and m._parameters["weight"].dim() == 2
    ]  # fmt: skip
    left += sum(router)
    assert share == pytest.approx(100 * left / (left + done), abs=0.06)


def test_pytorch_call_is_a_drop_in():
    model = bert()
    q = dt.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == 13
    with pytest.raises(ValueError, match="dtype"):
        dt.quantize_dynamic(model, {nn.Linear}, dtype=torch.float16)


# --------------------------------------------------------------------------------------------
# torch.compile under inference_mode: an encoder, a decoder that generates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_encoder_under_inference_mode(backend, fullgraph):
    q = dt.quantize_dynamic(bert())
    ids = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.inference_mode():
        eager = q(input_ids=ids, attention_mask=mask).last_hidden_state
        torch._dynamo.reset()
        compiled = torch.compile(q, backend=backend, fullgraph=fullgraph)
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    if backend == "aot_eager":
        assert torch.equal(got, eager)
    else:  # inductor fuses the float ops around dynaq's (layer norms, softmax) its own way
        torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_decoder_generates_the_eager_tokens(backend, fullgraph):
    q = dt.quantize_dynamic(llama())
    ids = prompt(5)
    with torch.inference_mode():
        eager = q.generate(ids, max_new_tokens=8, do_sample=False)
    qc = copy.deepcopy(q)
    torch._dynamo.reset()
    qc.forward = torch.compile(qc.forward, backend=backend, fullgraph=fullgraph)
    with torch.inference_mode():
        got = qc.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, eager)


# (transformers' own warnings while torch.jit.trace runs its code: a deprecation, and the
# tracer's about transformers' Python-side checks of shapes)
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_encoder_export_and_trace_record_the_dynaq_ops():
    q = dt.quantize_dynamic(bert())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 400, (2, 12), generator=g)
    ids2 = torch.randint(0, 400, (2, 12), generator=g)
    with torch.no_grad():
        ref2 = q(ids2).last_hidden_state
    program = torch.export.export(q, (ids,))
    assert str(program.graph).count("dynaq.linear") == 6 * 2 + 1
    assert torch.equal(program.module()(ids2).last_hidden_state, ref2)
    # (torch's own trace check trips on transformers' module names, float models too)
    traced = torch.jit.trace(q, (ids,), strict=False, check_trace=False)
    assert "dynaq::linear" in str(traced.inlined_graph)
    assert torch.equal(traced(ids2)["last_hidden_state"], ref2)  # not the traced example's


# --------------------------------------------------------------------------------------------
# compare(): real tokens only
# --------------------------------------------------------------------------------------------


def test_compare_ignores_padded_positions():
    model = bert()
    q = dt.quantize_dynamic(model)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 400, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 11:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    result = dt.compare(model, q, inputs)
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        got = q(**inputs).last_hidden_state
    real = mask.bool()
    err = float((got[real] - ref[real]).double().norm() / ref[real].double().norm())
    assert result.output["rel_error"] == pytest.approx(err, rel=1e-6)
    assert result.output["shape"] == (3, 16, 64)
    # The padded positions change the answer when counted: compare() does not count them.
    everything = float((got - ref).double().norm() / ref.double().norm())
    assert everything != pytest.approx(err, rel=1e-3)
    # Per layer too: a layer's output (batch, seq, features) is measured on the real tokens.
    row = result.rows[0]
    assert row["shape"] == (3, 16, 64)
    explicit = dt.compare(model, q, {"input_ids": ids, "attention_mask": mask},
                          attention_mask=mask)  # fmt: skip
    assert explicit.output["rel_error"] == result.output["rel_error"]
    with pytest.raises(ValueError, match="masks every position"):
        dt.compare(model, q, inputs, attention_mask=torch.zeros_like(mask))
    with pytest.raises(TypeError, match="attention_mask"):
        dt.compare(model, q, inputs, attention_mask=[[1, 1]])
