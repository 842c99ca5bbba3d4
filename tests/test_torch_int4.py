"""dynaq's torch modules with 4-bit weights: the same bits as ``dynaq.linear`` and the numpy
layers on every path, state dicts in the stored form, checkpoints and buffers checked,
``quantize_dynamic``'s options. (Compile, export, trace and ONNX: ``test_torch_ops.py``, which
runs every test for int8 and 4-bit weights; Hugging Face: ``test_transformers_hf.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import dynaq  # noqa: E402
import dynaq.torch as dt  # noqa: E402
from dynaq import layers  # noqa: E402
from torch import nn  # noqa: E402

VARIANTS = [
    {"bits": 4},
    {"bits": 4, "group_size": 64, "method": "rtn"},
    {"bits": 4, "group_size": 128, "symmetric": True},
    {"bits": 4, "group_size": None},
]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).detach().norm() / ref.detach().norm())


def _float_linear(n: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n)


@pytest.mark.parametrize("options", VARIANTS)
def test_module_computes_the_layers_bits(isa, options):
    """On every path (the ``isa`` fixture caps the dispatch)."""
    fp = _float_linear(19, 256)
    q = dt.Linear.from_float(fp, **options)
    pw = q.layer.weight
    assert (pw.bits, pw.group_size) == (4, options.get("group_size", 32))
    assert (q.bits, q.group_size, q.symmetric) == (pw.bits, pw.group_size, pw.symmetric)
    x = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(1))
    want = dynaq.linear(x.numpy(), pw, fp.bias.detach().numpy())
    assert torch.equal(q(x), torch.from_numpy(want))  # the direct path
    # The operator (an input that needs a gradient goes through it) computes the same.
    assert torch.equal(q(x.clone().requires_grad_()).detach(), torch.from_numpy(want))
    assert torch.equal(torch.ops.dynaq.linear4(x, *q._op_tensors()), torch.from_numpy(want))
    half = q(x.half())
    assert half.dtype == torch.float16
    assert torch.equal(half, q(x.half().float()).half())
    rel = _rel(q(x), fp(x))
    assert 0 < rel < 0.2


def test_values_and_dequantized_weight():
    q = dt.Linear.from_float(_float_linear(8, 64), bits=4)
    levels, scales, minima = q.layer.weight.unpack()
    assert q.weight.dtype == torch.uint8 and torch.equal(q.weight, torch.from_numpy(levels))
    assert torch.equal(q.dequantized_weight(), torch.from_numpy(q.layer.weight.dequantize()))
    with pytest.raises(ValueError, match="^weight_int8: this module's weight has 4 bits"):
        q.weight_int8()
    assert "dtype=int4, group_size=32, symmetric=False" in repr(q)
    meta = dt.Linear(64, 8, bits=4, group_size=None, device="meta")
    assert meta.weight.dtype == torch.uint8 and meta.weight.device.type == "meta"


def test_conv1d_is_quantized_per_output_channel_groups():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(48, 64)  # nf = 48 outputs, nx = 64 inputs
    q = dt.Linear.from_float(conv, bits=4)
    assert (q.in_features, q.out_features, q.group_size) == (64, 48, 32)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    x = torch.randn(3, 64)
    assert torch.equal(q(x), dt.Linear.from_float(lin, bits=4)(x))


def test_state_dict_is_the_stored_form_and_may_change_the_format():
    fp = _float_linear(9, 64)
    q4 = dt.Linear.from_float(fp, bits=4)
    sd = q4.state_dict()
    stored = dynaq._dynaq.weight_tensors(q4.layer.weight, "weight")
    assert set(sd) == set(stored) | {"bias"}
    for name, a in stored.items():
        assert np.array_equal(sd[name].numpy(), a), name
    x = torch.randn(4, 64)
    # A checkpoint replaces a module's weights whatever their format: int8 <-> 4-bit.
    q8 = dt.Linear.from_float(fp)
    q8.load_state_dict(sd)
    assert q8.bits == 4 and torch.equal(q8(x), q4(x))
    assert q8.weight_panels.dtype == torch.uint8
    q8.load_state_dict(dt.Linear.from_float(fp).state_dict())
    assert q8.bits == 8 and not hasattr(q8, "weight_gscale_panels")
    assert torch.equal(q8(x), dt.Linear.from_float(fp)(x))


def _damaged(sd: dict, key: str, value) -> dict:
    out = dict(sd)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def test_damaged_4_bit_checkpoints_are_refused_and_change_nothing():
    q = dt.Linear.from_float(_float_linear(9, 64), bits=4)
    sd = q.state_dict()
    x = torch.randn(2, 64)
    before = q(x)
    nan = sd["weight_scale"].clone()
    nan[3] = float("nan")
    cases = [
        ("weight_gscale", sd["weight_gscale"][:, :1].contiguous()),  # one group for K = 64
        ("weight_scale", nan),
        ("weight_min", None),  # asymmetric group codes without their minima
        ("weight", sd["weight"].to(torch.int16)),
        ("weight_gmin", sd["weight_gmin"].float()),
    ]
    for key, value in cases:
        with pytest.raises(RuntimeError, match=r"DynaqLinear at '<root>': weight"):
            q.load_state_dict(_damaged(sd, key, value))
        assert torch.equal(q(x), before), key


def test_written_buffers_are_checked_before_use():
    q = dt.Linear.from_float(_float_linear(19, 64), bits=4)
    x = torch.randn(2, 64)
    with torch.no_grad():
        q.weight_panels[-1] = 0x11  # a padding column (columns 19..31 of the second panel)
    with pytest.raises(ValueError, match="padding"):
        q(x)
    q = dt.Linear.from_float(_float_linear(16, 64), bits=4, group_size=None)
    with torch.no_grad():
        q.weight_gscale_panels[0] = 2  # per channel: the codes are 1
    with pytest.raises(ValueError, match="per-channel weight has no group codes"):
        q(x)


def test_recurrent_modules_take_4_bit_weights_of_one_format():
    torch.manual_seed(0)
    fp = nn.GRU(32, 64, num_layers=2, bidirectional=True, batch_first=True)
    q = dt.GRU.from_float(fp, bits=4, group_size=None)
    assert q.bits == 4 and q.group_size is None
    x = torch.randn(3, 5, 32)
    out, h = q(x)
    ref_out, ref_h = q.layer(x.numpy())
    assert torch.equal(out, torch.from_numpy(ref_out)) and torch.equal(h, torch.from_numpy(ref_h))
    op_out, _ = q(x.clone().requires_grad_())
    assert torch.equal(op_out.detach(), out)
    again = dt.GRU.from_float(nn.GRU(32, 64, num_layers=2, bidirectional=True, batch_first=True))
    again.load_state_dict(q.state_dict())
    assert again.bits == 4 and torch.equal(again(x)[0], out)
    with pytest.raises(ValueError, match="weight_ih_l0: group_size 64 does not divide"):
        dt.LSTM.from_float(nn.LSTM(32, 64, device="meta"), bits=4, group_size=64)
    rng = np.random.default_rng(0)
    params = {
        "weight_ih_l0": dynaq.pack_weight(rng.standard_normal((128, 32), np.float32), bits=4),
        "weight_hh_l0": dynaq.pack_weight(rng.standard_normal((128, 32), np.float32)),
    }
    with pytest.raises(ValueError, match="must share one format"):
        dt.LSTM(layers.LSTM(params))


def test_quantize_dynamic_options_per_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.Linear(48, 5))
    with pytest.raises(ValueError, match=r"cannot quantize module '3' .*group_size 32 does not"):
        dt.quantize_dynamic(model, bits=4)
    q = dt.quantize_dynamic(model, bits=4, qconfig_spec={"3": {"bits": 8}, nn.Linear: True})
    assert [getattr(m, "bits", None) for m in q] == [4, None, 4, 8]
    q = dt.quantize_dynamic(model, qconfig_spec={"0": {"bits": 4, "group_size": 64},
                                                 nn.Linear: True})  # fmt: skip
    assert [(m.bits, m.group_size) for m in (q[0], q[2], q[3])] == [(4, 64), (8, None), (8, None)]
    x = torch.randn(3, 64)
    rel = _rel(q(x), model(x))
    assert 0 < rel < 0.2
    with pytest.raises(ValueError, match=r"^quantize_dynamic: group_size must be 32, 64, 128"):
        dt.quantize_dynamic(model, bits=4, group_size=16)
    with pytest.raises(ValueError, match=r"^qconfig_spec\['0'\]: method must be"):
        dt.quantize_dynamic(model, qconfig_spec={"0": {"bits": 4, "method": "gptq"}})
    with pytest.raises(ValueError, match=r"^qconfig_spec\['0'\]: group_size applies to bits=4"):
        dt.quantize_dynamic(model, bits=4, qconfig_spec={"0": {"bits": 8, "group_size": 32}})


def test_a_shared_weight_is_packed_once_at_4_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    model[1].weight = model[0].weight
    q = dt.quantize_dynamic(model, bits=4)
    assert q[0].weight_panels.data_ptr() == q[1].weight_panels.data_ptr()
    # Different options for the two: two weights.
    q = dt.quantize_dynamic(model, bits=4, qconfig_spec={"1": {"group_size": 64}, nn.Linear: True})
    assert q[0].weight_panels.data_ptr() != q[1].weight_panels.data_ptr()


def test_compare_reports_4_bit_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    q8, q4 = dt.quantize_dynamic(model), dt.quantize_dynamic(model, bits=4)
    x = torch.randn(16, 64)
    r8, r4 = dt.compare(model, q8, x), dt.compare(model, q4, x)
    assert len(r4.rows) == 2
    assert r8.output["sqnr_db"] > r4.output["sqnr_db"] > 10
