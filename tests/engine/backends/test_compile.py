"""torch.compile(fullgraph=True) traces a model of QuantLinear modules without graph breaks,
whichever backend the layers run on: the Triton kernels as qrecipe:: custom ops with fakes
(here in the interpreter), torch's CPU kernels as aten ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qrecipe.engine.backends.triton_backend import TritonBackend
from qrecipe.engine.modules import QuantLinear
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams
from qrecipe.kernels.triton_support import can_run_triton

LAYERS = [("W4A16", QuantParams(32)), ("W8A16", QuantParams(None)), ("W8A16", QuantParams(64, symmetric=False)),
          ("W8A8", QuantParams(None, activation="dynamic"))]


def model_of(layers, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    mods = []
    for scheme, p in layers:
        lin = nn.Linear(128, 128).to(dtype)
        mods += [QuantLinear.from_quantized(lin, scheme, p, rtn_quantize(lin.weight.data.float(), SCHEMES[scheme], p)),
                 nn.ReLU()]
    return nn.Sequential(*mods).eval()


def compiled_matches_eager(model, x):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


def test_cpu_backends_compile_without_graph_breaks():
    model = model_of(LAYERS, torch.bfloat16)  # torch's packed CPU kernels take 16-bit activations
    names = {m.prepare().name for m in model if isinstance(m, QuantLinear)}
    assert names == {"cpu-int4pack", "cpu-int8pack", "torch"}
    compiled_matches_eager(model, torch.randn(4, 128, dtype=torch.bfloat16))


@pytest.mark.skipif(not can_run_triton(torch.device("cpu")) and not torch.cuda.is_available(),
                    reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_custom_ops_compile_without_graph_breaks():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_of(LAYERS + [("FP8", QuantParams(None, activation="dynamic"))], torch.float16).to(device)
    for m in model:
        if isinstance(m, QuantLinear):
            m.backend = TritonBackend()
    compiled_matches_eager(model, torch.randn(3, 128, dtype=torch.float16, device=device))


def test_custom_op_fakes_give_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from qrecipe.kernels.ops import triton_linear

    for scheme, p in LAYERS:
        q = model_of([(scheme, p)])[0]
        with FakeTensorMode(allow_non_fake_inputs=True):
            y = triton_linear(q.format.name, torch.empty(2, 7, 128, dtype=torch.float16), q.packed(), p.group_size, None)
        assert y.shape == (2, 7, 128) and y.dtype == torch.float16
