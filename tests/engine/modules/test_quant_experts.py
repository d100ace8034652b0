"""QuantExperts against the float experts module it replaces, per format and per backend.

A transformers Qwen3MoeExperts (4 experts, hidden 128, intermediate 128, seeded weights at the
0.05 scale of the kernel tests) is quantized per expert with RTN; its QuantExperts must
compute what the packed weights stand for, on the tokens the router sends each expert:
- weight-only formats: the transformers module itself with the dequantized weights (fp32;
  only the summation order differs: rtol and atol 1e-5 x max |y|, as the linear backends);
- W8A8 and FP8: each expert's two layers through the format's reference numerics
  (activations quantized per token as the kernels do; 1e-5 likewise).
Every backend that runs experts here is checked: torch and emulated on this CPU, and the
Triton kernels (in Triton's interpreter without a GPU, fp32 activations).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qrecipe.engine.backends import BACKENDS
from qrecipe.engine.backends.triton_backend import TritonBackend
from qrecipe.engine.models.families import moe_layout
from qrecipe.engine.modules import PackedExperts, QuantExperts, UnfusedExperts
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams
from qrecipe.kernels.triton_support import can_run_triton

CASES = [("W4A16", QuantParams(64)), ("W4A16", QuantParams(128, symmetric=False)), ("W8A16", QuantParams(None)),
         ("W8A8", QuantParams(None, activation="dynamic")), ("FP8", QuantParams(None, activation="dynamic"))]
IDS = [f"{s}-{p.group_size}-{'sym' if p.symmetric else 'asym'}" for s, p in CASES]
E, H, I, T, K = 4, 128, 128, 24, 2  # experts, hidden, intermediate, tokens, top-k


def float_experts(seed: int = 0) -> nn.Module:
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    config = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K)
    config._experts_implementation = "eager"
    m = Qwen3MoeExperts(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.gate_up_proj.copy_(torch.randn(m.gate_up_proj.shape, generator=g) * 0.05)
        m.down_proj.copy_(torch.randn(m.down_proj.shape, generator=g) * 0.05)
    return m


def quantize(m: nn.Module, scheme: str, p: QuantParams) -> QuantExperts:
    def packed(w: torch.Tensor) -> PackedExperts:
        weights = [rtn_quantize(w[e], SCHEMES[scheme], p) for e in range(E)]
        return PackedExperts.from_quantized(weights, w.shape[2], w.shape[1], scheme, p, torch.float32,
                                            torch.device("cpu"))

    return QuantExperts(packed(m.gate_up_proj.data), packed(m.down_proj.data), m.act_fn)


def routing(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    logits = torch.randn(T, E, generator=g)
    logits[:, 3] -= 100  # expert 3 gets no token: it must be skipped, not run on nothing
    weights, index = torch.topk(logits.softmax(-1), K, dim=-1)
    return x, index, weights / weights.sum(-1, keepdim=True)


def reference(q: QuantExperts, m: nn.Module, x, index, weights) -> torch.Tensor:
    gate_up, down = q.gate_up_proj, q.down_proj
    if gate_up.format.weight_only:
        with torch.no_grad():
            m.gate_up_proj.copy_(gate_up.dequantized_weight())
            m.down_proj.copy_(down.dequantized_weight())
            return m(x, index, weights)
    out = torch.zeros_like(x)
    for t in range(T):
        for slot in range(K):
            e = int(index[t, slot])
            h = gate_up.format.reference_linear(x[t:t + 1], gate_up.expert(e).packed(), gate_up.params, None)
            g, u = h.chunk(2, dim=-1)
            y = down.format.reference_linear(m.act_fn(g) * u, down.expert(e).packed(), down.params, None)
            out[t] += weights[t, slot] * y[0]
    return out


def expert_backends(q: QuantExperts):
    t = q.gate_up_proj
    cpu = torch.device("cpu")
    out = [b for b in BACKENDS if b.runs_experts and b.supports(t.format, t.params, t.in_features, t.out_features,
                                                                  cpu, torch.float32)]
    return out + ([TritonBackend()] if can_run_triton(cpu) else [])


@pytest.mark.parametrize("scheme, p", CASES, ids=IDS)
def test_every_expert_backend_matches_the_dequantized_experts(scheme, p):
    m = float_experts()
    q = quantize(m, scheme, p)
    x, index, weights = routing()
    expect = reference(q, m, x, index, weights)
    names = []
    for backend in expert_backends(q):
        for tensor in q.tensors().values():
            tensor.backend = backend
        got = q(x, index, weights)
        tol = 1e-5 * expect.abs().max().item()
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=tol, msg=lambda s, b=backend.name: f"{b}: {s}")
        names.append(backend.name)
    assert "emulated" in names and len(names) >= 2, names
    assert can_run_triton(torch.device("cpu")) == ("triton" in names)
    assert (expect != 0).any(dim=-1).all()  # every token got its experts' output


def test_the_plan_picks_the_cpu_backend_per_format():
    expected = {"W4A16": "torch", "W8A16": "torch", "W8A8": "torch", "FP8": "emulated"}
    for scheme, p in CASES:
        q = quantize(float_experts(), scheme, p)
        assert q.prepare() == {"gate_up_proj": expected[scheme], "down_proj": expected[scheme]}


def test_bf16_activations_skip_the_backends_that_re_lay_out_a_module():
    """cpu-int4pack keeps a re-laid-out copy per module, so experts take the torch backend."""
    q = quantize(float_experts(), "W4A16", QuantParams(64)).to(torch.bfloat16)
    assert q.prepare()["gate_up_proj"] == "torch"
    x, index, weights = routing()
    assert q(x.bfloat16(), index, weights.bfloat16()).dtype == torch.bfloat16


def test_state_dict_stacks_the_formats_packing_per_expert():
    from qrecipe.kernels import get_format

    m = float_experts()
    q = quantize(m, "W4A16", QuantParams(64))
    sd = q.state_dict()
    assert set(sd) == {"gate_up_proj.qweight", "gate_up_proj.scales", "down_proj.qweight", "down_proj.scales"}
    assert sd["gate_up_proj.qweight"].shape == (E, 2 * I, H // 2) and sd["gate_up_proj.scales"].shape == (E, 2 * I, H // 64)
    fmt = get_format("w4a16")
    for e in range(E):  # expert e's slice is exactly that format's packing of its own weight
        own = fmt.pack(rtn_quantize(m.down_proj.data[e], SCHEMES["W4A16"], QuantParams(64)), QuantParams(64))
        assert torch.equal(sd["down_proj.qweight"][e], own["qweight"])
        assert torch.equal(sd["down_proj.scales"][e], own["scales"])
    assert q.gate_up_proj.weight_nbytes() == E * fmt.nbytes(2 * I, H, QuantParams(64))


def test_unfused_experts_route_as_the_fused_module():
    m = float_experts()
    x, index, weights = routing()
    unfused = UnfusedExperts(m, moe_layout("qwen3_moe"))
    assert len(unfused) == E and unfused[2].up_proj.weight.data_ptr() == m.gate_up_proj[2, I:].data_ptr()  # views
    with torch.no_grad():
        torch.testing.assert_close(unfused(x, index, weights), m(x, index, weights), rtol=1e-6, atol=1e-6)
