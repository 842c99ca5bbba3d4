"""dynaq's registered PyTorch operators (``torch.ops.dynaq``) and what they make possible:
``torch.compile`` (``fullgraph=True``), ``torch.export``, ``torch.jit.trace``, the ONNX exporter,
meta-device skeletons, whole-model pickles, one copy of every weight; each for int8 weights and
4-bit weights (groups of 32, and per channel)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import dynaq.torch as dt  # noqa: E402
from dynaq.torch import ops  # noqa: E402
from torch import nn  # noqa: E402

# torch's own deprecations (torch.jit, the TorchScript ONNX exporter, modules inductor imports).
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:torch.*"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
]


class Net(nn.Module):
    """Every module dynaq swaps, in one graph; ``w`` scales every width (4 makes each a multiple
    of 32, for 4-bit weights in groups of 32)."""

    def __init__(self, w: int = 1) -> None:
        super().__init__()
        self.a = nn.Linear(8 * w, 16 * w)
        self.lstm = nn.LSTM(16 * w, 8 * w, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(16 * w, 8 * w, batch_first=True)
        self.b = nn.Linear(8 * w, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        o, _ = self.lstm(h)
        o, _ = self.gru(o)
        return self.b(o)


#: The weight formats every test runs with: quantize_dynamic's options, Net's width factor.
FORMATS = {
    "int8": ({}, 1),
    "int4-g32": ({"bits": 4}, 4),
    "int4-channel": ({"bits": 4, "group_size": None}, 1),
}


@pytest.fixture(scope="module", params=list(FORMATS))
def fmt(request):
    return request.param


@pytest.fixture(scope="module")
def qnet(fmt):
    torch.manual_seed(0)
    options, w = FORMATS[fmt]
    net = dt.quantize_dynamic(Net(w).eval(), **options)
    net.width = w
    return net


def _linear_op(net) -> str:
    return "linear" if net.a.bits == 8 else "linear4"


def _inputs(net=None):
    g = torch.Generator().manual_seed(1)
    k = 8 * (net.width if net is not None else 1)
    return torch.randn(4, 2, k, generator=g), torch.randn(5, 3, k, generator=g)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("fullgraph", [False, True])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_matches_eager_bit_for_bit(qnet, mode, fullgraph, backend):
    x, x2 = _inputs(qnet)
    eager, eager2 = qnet(x), qnet(x2)
    torch._dynamo.reset()
    compiled = torch.compile(qnet, fullgraph=fullgraph, backend=backend)
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
           "inference_mode": torch.inference_mode}[mode]  # fmt: skip
    with ctx():
        y, y2 = compiled(x), compiled(x2)  # a second shape: recompiled or dynamic, never stale
    assert torch.equal(y, eager) and torch.equal(y2, eager2)


def test_compile_has_no_graph_break(qnet):
    x, _ = _inputs(qnet)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(qnet)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    ops_in_graph = {
        str(n.target).removesuffix(".default")
        for g in explanation.graphs
        for n in g.graph.nodes
        if n.op == "call_function"
    }
    assert {f"dynaq.{_linear_op(qnet)}", "dynaq.lstm", "dynaq.gru"} <= ops_in_graph


def test_export_names_the_ops_and_runs(qnet):
    x, x2 = _inputs(qnet)
    ep = torch.export.export(qnet, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    linear = f"dynaq.{_linear_op(qnet)}.default"
    assert {linear, "dynaq.lstm.default", "dynaq.gru.default"} <= targets
    assert torch.equal(ep.module()(x), qnet(x))
    # Saved and loaded, the program carries the panels and still computes the same bits.
    f = io.BytesIO()
    torch.export.save(ep, f)
    f.seek(0)
    loaded = torch.export.load(f)
    y = loaded.module()(x)
    assert torch.equal(y, qnet(x))
    ep2 = torch.export.export(qnet, (x2,))
    assert torch.equal(ep2.module()(x2), qnet(x2))


def test_jit_trace_records_the_operator(qnet):
    x, _ = _inputs(qnet)
    x2 = torch.randn(x.shape)
    traced = torch.jit.trace(qnet, (x,))
    graph = str(traced.inlined_graph)
    assert f"dynaq::{_linear_op(qnet)}(" in graph and "dynaq::lstm(" in graph
    assert torch.equal(traced(x2), qnet(x2))  # a new input gives its own output
    assert not torch.equal(traced(x2), traced(x))


def test_onnx_export_writes_custom_domain_nodes(qnet):
    onnx = pytest.importorskip("onnx")
    x, _ = _inputs(qnet)
    f = io.BytesIO()
    torch.onnx.export(qnet, (x,), f, dynamo=False)
    graph = onnx.load_from_string(f.getvalue()).graph
    nodes = [(n.domain, n.op_type) for n in graph.node]
    op = "Linear" if qnet.a.bits == 8 else "Linear4"
    assert nodes.count(("dynaq", op)) == 2
    assert ("dynaq", "LSTM") in nodes and ("dynaq", "GRU") in nodes
    assert len(graph.input) >= 1
    linear = next(n for n in graph.node if n.op_type == op)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in linear.attribute}
    assert {"out_features", "in_features", "granularity", "layout"} <= set(attrs)
    assert linear.input[0] == graph.input[0].name
    if qnet.a.bits == 8:
        assert len(linear.input) >= 3 and attrs["layout"] == b"K4N16"
    else:
        # The input, the weight's five tensors, the bias; its format in the attributes.
        assert len(linear.input) == 7 and attrs["layout"] == b"K8N16"
        assert attrs["group_size"] == (qnet.a.group_size or 0)
        assert attrs["symmetric"] == 0
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    lstm_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lstm.attribute}
    assert lstm_attrs["bits"] == qnet.a.bits


def test_backward_raises_instead_of_a_silent_zero_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    q = dt.quantize_dynamic(model, exclude=["0"])  # the first layer stays float, trainable
    y = q(torch.randn(3, 4))
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="dynaq.linear has no gradient"):
        y.sum().backward()
    lstm = dt.LSTM.from_float(nn.LSTM(4, 3))
    out, _ = lstm(torch.randn(2, 1, 4, requires_grad=True))
    with pytest.raises(RuntimeError, match="dynaq.lstm has no gradient"):
        out.sum().backward()
    with torch.no_grad():
        assert not q(torch.randn(3, 4)).requires_grad


@pytest.mark.parametrize("options", [{}, {"bits": 4}])
def test_weights_are_held_once(options):
    """The panels buffers are the PackedWeight's own memory: no second copy of any weight, also
    after a whole-model pickle or a deepcopy."""
    torch.manual_seed(0)
    q = dt.quantize_dynamic(nn.Sequential(nn.Linear(64, 32), nn.LSTM(32, 32)), **options)

    def shared(m):
        lin, lstm = m[0], m[1]
        ok = lin.weight_panels.data_ptr() == lin.layer.weight.panels.ctypes.data
        if lin.bits == 4:
            codes = lin.layer.weight.code_panels
            ok = ok and lin.weight_gscale_panels.data_ptr() == codes[0].ctypes.data
            ok = ok and lin.weight_gmin_panels.data_ptr() == codes[1].ctypes.data
        cell = lstm.layer.cells[0][0]
        return ok and lstm.weight_hh_l0_panels.data_ptr() == cell.w_hh.panels.ctypes.data

    assert shared(q)
    assert shared(copy.deepcopy(q))
    f = io.BytesIO()
    torch.save(q, f)
    f.seek(0)
    with torch.serialization.safe_globals([nn.Sequential, *dt.safe_globals()]):
        again = torch.load(f, weights_only=True)
    assert shared(again)
    x = torch.randn(5, 64)
    assert torch.equal(again[0](x), q[0](x))


def test_whole_model_loads_with_weights_only(qnet):
    f = io.BytesIO()
    torch.save(qnet, f)
    f.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(f, weights_only=True)
    f.seek(0)
    with torch.serialization.safe_globals([Net, *dt.safe_globals()]):
        again = torch.load(f, weights_only=True)
    x, _ = _inputs(qnet)
    assert torch.equal(again(x), qnet(x))


def test_meta_skeleton_loads_a_checkpoint(qnet, fmt):
    with torch.device("meta"):
        skeleton_float = Net(qnet.width)
    skeleton = dt.quantize_dynamic(skeleton_float, **FORMATS[fmt][0])
    assert all(b.device.type == "meta" for b in skeleton.buffers())
    # The skeleton's state dict has the checkpoint's very names, shapes and dtypes.
    want = {k: (v.shape, v.dtype) for k, v in qnet.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in skeleton.state_dict().items()} == want
    assert {k: (v.shape, v.dtype) for k, v in skeleton.named_buffers()} == {
        k: (v.shape, v.dtype) for k, v in qnet.named_buffers()
    }
    x, _ = _inputs(qnet)
    k = x.shape[-1]
    with pytest.raises(ValueError, match="on the meta device .a skeleton.: load a checkpoint"):
        skeleton.a(torch.randn(2, k))  # a skeleton does not compute on real input
    assert skeleton.a(torch.empty(2, k, device="meta")).shape == (2, 2 * k)  # shapes only
    skeleton.load_state_dict(qnet.state_dict())
    assert all(b.device.type == "cpu" for b in skeleton.buffers())
    assert torch.equal(skeleton(x), qnet(x))


@pytest.mark.parametrize("options", [{}, {"bits": 4, "group_size": None}])
def test_in_place_writes_rebuild_the_native_layer(options):
    torch.manual_seed(0)
    q = dt.Linear.from_float(nn.Linear(6, 4), **options)
    x = torch.randn(3, 6)
    y = q(x)
    with torch.no_grad():
        q.bias.add_(1.0)  # bumps the version counter
    y1 = q(x)
    torch.testing.assert_close(y1, y + 1.0)
    with torch.no_grad():
        q.weight_scale.mul_(2.0)
        if q.bits == 4:
            q.weight_min.mul_(2.0)  # a 4-bit weight's value: scale * level + minimum
    y2 = q(x)
    np.testing.assert_allclose(y2.numpy(), (2 * (y1 - q.bias) + q.bias).numpy(), rtol=1e-5)
    assert not torch.allclose(y2, y1)


@pytest.mark.parametrize("options", [{}, {"bits": 4, "group_size": None}])
def test_casting_keeps_scales_and_biases_float32(options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4))
    q = dt.quantize_dynamic(model, **options)
    x = torch.randn(3, 6)
    q.half()
    assert q[1].weight.dtype == torch.float16  # float modules are cast as usual
    assert q[0].weight_scale.dtype == torch.float32 and q[0].bias.dtype == torch.float32
    if options:
        assert q[0].weight_min.dtype == torch.float32
        assert q[0].weight_panels.dtype == torch.uint8
    else:
        assert q[0].weight_panels.dtype == torch.int8
    y16 = q[0](x.half())
    assert y16.dtype == torch.float16
    assert torch.equal(y16, q[0](x.half().float()).half())


def test_op_refuses_bad_input_at_trace_time(qnet):
    k = qnet.a.in_features
    with pytest.raises(Exception, match=f"in_features = {k}"):
        torch.export.export(qnet.a, (torch.randn(2, k + 1),))


def test_cache_entries_die_with_their_module():
    import gc

    gc.collect()
    before = len(ops.PREPARED)
    q = dt.quantize_dynamic(nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 3)))
    assert len(ops.PREPARED) == before + 2
    del q
    gc.collect()
    assert len(ops.PREPARED) == before
