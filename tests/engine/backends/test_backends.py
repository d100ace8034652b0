"""Which backend each layer gets, and that every backend computes what the packed weights
stand for (a new backend in BACKENDS is checked here without new tests)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qrecipe.engine.backends import BACKENDS, select_backend
from qrecipe.engine.backends.triton_backend import TritonBackend
from qrecipe.engine.modules import QuantLinear
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams, get_format

CPU = torch.device("cpu")
CASES = [("W4A16", QuantParams(32)), ("W4A16", QuantParams(128, symmetric=False)), ("W4A16", QuantParams(None)),
         ("W8A16", QuantParams(None)), ("W8A16", QuantParams(64, symmetric=False)),
         ("W8A8", QuantParams(None, activation="dynamic")), ("FP8", QuantParams(None, activation="dynamic"))]
IDS = [f"{s}-{p.group_size}-{'sym' if p.symmetric else 'asym'}" for s, p in CASES]


def make(scheme: str, p: QuantParams, in_features=256, out_features=96, seed=0, dtype=torch.float32) -> QuantLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_features, out_features).to(dtype)
    return QuantLinear.from_quantized(lin, scheme, p, rtn_quantize(lin.weight.data.float(), SCHEMES[scheme], p))


@pytest.mark.parametrize("scheme, p, in_f, out_f, expected", [
    ("W4A16", QuantParams(32), 256, 96, "cpu-int4pack"),
    ("W4A16", QuantParams(None), 128, 96, "cpu-int4pack"),  # per-channel over 128 columns: one group of 128
    ("W4A16", QuantParams(None), 320, 96, "torch"),  # torch's int4 kernel takes groups of 32..256 only
    ("W4A16", QuantParams(32), 256, 40, "torch"),  # ... and out_features in multiples of 16
    ("W8A16", QuantParams(None), 256, 40, "cpu-int8pack"),
    ("W8A16", QuantParams(None, symmetric=False), 256, 40, "torch"),  # torch's int8 kernel has no zero points
    ("W8A16", QuantParams(64), 256, 40, "torch"),  # ... nor groups
    ("W8A8", QuantParams(None, activation="dynamic"), 256, 40, "torch"),
    ("FP8", QuantParams(None, activation="dynamic"), 256, 40, "emulated"),
])
def test_cpu_backend_choice_for_16_bit_activations(scheme, p, in_f, out_f, expected):
    fmt = get_format(SCHEMES[scheme].format)
    assert select_backend(fmt, p, in_f, out_f, CPU, torch.bfloat16).name == expected


@pytest.mark.parametrize("scheme, p", [("W4A16", QuantParams(32)), ("W8A16", QuantParams(None))])
def test_fp32_activations_take_the_torch_backend(scheme, p):
    # torch's packed CPU kernels are slow with fp32 activations (bench/RESULTS.md).
    assert select_backend(get_format(SCHEMES[scheme].format), p, 256, 96, CPU, torch.float32).name == "torch"


def test_triton_backend_is_for_cuda_only():
    for scheme, p in CASES:
        assert not TritonBackend().supports(get_format(SCHEMES[scheme].format), p, 256, 96, CPU, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_backend_takes_every_format_the_gpu_can_run():
    cuda = torch.device("cuda")
    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    for scheme, p in CASES:
        got = select_backend(get_format(SCHEMES[scheme].format), p, 256, 96, cuda, torch.bfloat16).name
        assert got == ("emulated" if scheme == "FP8" and not fp8 else "triton")


def runnable_backends(q: QuantLinear):
    """Backends that take this layer on the CPU, and the Triton backend where Triton runs here
    (in the interpreter without a GPU)."""
    from qrecipe.kernels.triton_support import can_run_triton

    out = [b for b in BACKENDS if b.supports(q.format, q.params, q.in_features, q.out_features, CPU, q.compute_dtype)]
    return out + ([TritonBackend()] if can_run_triton(CPU) else [])


@pytest.mark.parametrize("scheme, p", CASES, ids=IDS)
def test_every_backend_matches_dequantize_then_matmul(scheme, p):
    q = make(scheme, p)
    x = torch.randn(3, 5, 256)
    if q.format.activation_dtype == "float":
        expect = nn.functional.linear(x, q.dequantized_weight(torch.float32), q.bias)
        tol = 1e-5  # fp32 throughout: only the summation order differs
    else:
        expect = q.format.reference_linear(x, q.packed(), p, q.bias)
        tol = 1e-5  # activations quantized the same way; exact int32 / fp32 products
    names = []
    for backend in runnable_backends(q):
        q.backend = backend
        backend.prepare(q)
        torch.testing.assert_close(backend.linear(q, x), expect, rtol=tol, atol=tol * expect.abs().max().item())
        names.append(backend.name)
    assert "emulated" in names and len(names) >= 2, names


def test_fp16_activations_on_the_cpu_kernels():
    for scheme, p in (("W4A16", QuantParams(64)), ("W8A16", QuantParams(None))):
        q = make(scheme, p).half()
        q.prepare()
        assert q.backend.name.startswith("cpu-")
        x = torch.randn(4, 256, dtype=torch.float16)
        expect = nn.functional.linear(x.float(), q.dequantized_weight(torch.float32), q.bias.float())
        # fp16 output and fp16 scales inside torch's kernels: a few fp16 ulps of the output
        torch.testing.assert_close(q(x).float(), expect, rtol=5e-3, atol=5e-3 * expect.abs().max().item())


def test_state_dict_keeps_the_checkpoint_layout_after_prepare():
    q = make("W4A16", QuantParams(32), dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    assert q.prepare().name == "cpu-int4pack"
    after = q.state_dict()
    assert after.keys() == before.keys()  # the runtime layout is not saved
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_moving_the_module_forgets_its_backend():
    q = make("W4A16", QuantParams(32), dtype=torch.bfloat16)
    assert q.prepare().name == "cpu-int4pack"
    q.to("cpu")  # any move (to a GPU in practice) may change which backend fits
    assert q.backend is None
    q.float()  # a cast changes the activation dtype the backend is chosen for
    x = torch.randn(2, 256)
    torch.testing.assert_close(q(x), nn.functional.linear(x, q.dequantized_weight(), q.bias), rtol=1e-5, atol=1e-5)
    assert q.backend.name == "torch"


def test_choosing_another_backend_drops_the_runtime_layout(monkeypatch):
    from qrecipe.engine.backends import registry

    q = make("W4A16", QuantParams(32), dtype=torch.bfloat16)
    q.prepare()
    assert {"int4pack_weight", "int4pack_scales_zeros"} <= {n for n, _ in q.named_buffers()}
    monkeypatch.setattr(registry, "BACKENDS", [b for b in registry.BACKENDS if b.name != "cpu-int4pack"])
    assert q.prepare().name == "torch"
    assert not {"int4pack_weight", "int4pack_scales_zeros"} & {n for n, _ in q.named_buffers()}
