"""Conformance cases for the Triton kernels: every format with a kernel (kernels/ops.py) is
checked over every parameter combination its schemes allow (engine/schemes.py), so a new
format gets the same checks by declaring its scheme and its op.

Tests run on CUDA when there is one, else in Triton's interpreter on the CPU (tests/conftest.py
sets TRITON_INTERPRET). The interpreter's bf16 tl.dot is wrong (Triton 3.9), so bf16 runs only
on a GPU; fp16 runs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import pytest
import torch

from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES, Scheme
from qrecipe.kernels import QuantParams, WeightFormat, get_format
from qrecipe.kernels.act_quant import FP8_E4M3_MAX, INT8_MAX
from qrecipe.kernels.ops import has_triton_kernel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ACTIVATION_QMAX = {"int8": INT8_MAX, "fp8": FP8_E4M3_MAX}


@dataclass(frozen=True)
class KernelCase:
    scheme: Scheme
    fmt: WeightFormat
    params: QuantParams

    @property
    def id(self) -> str:
        p = self.params
        group = "channel" if p.group_size is None else f"g{p.group_size}"
        return f"{self.fmt.name}-{group}-{'sym' if p.symmetric else 'asym'}" + \
            (f"-{p.activation}" if p.activation != "none" else "")

    def in_features(self, groups: int, per_channel: int) -> int:
        """`groups` whole groups, or for per-channel layers `per_channel` columns."""
        return self.params.group_size * groups if self.params.group_size else per_channel

    def make(self, n: int, k: int, x_example: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Packed buffers of a random weight quantized by RTN (static scales from x_example)."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, k, generator=g) * 0.05
        qw = rtn_quantize(w, self.scheme, self.params)
        if self.params.activation == "static":
            qmax = ACTIVATION_QMAX[self.fmt.activation_dtype]
            qw.input_scale = (x_example.abs().amax().float() / qmax).reshape(1)
        return {name: t.to(DEVICE) for name, t in self.fmt.pack(qw, self.params).items()}


def kernel_cases() -> list[KernelCase]:
    cases, seen = [], set()
    for scheme in SCHEMES.values():
        if scheme.keeps_float or not has_triton_kernel(scheme.format):
            continue
        fmt = get_format(scheme.format)
        for group, sym, act in product((None, *scheme.group_sizes), (True, False) if scheme.asymmetric_ok else (True,),
                                       scheme.activation_modes or ("none",)):
            case = KernelCase(scheme, fmt, QuantParams(group_size=group, symmetric=sym, activation=act))
            if case.id not in seen:
                seen.add(case.id)
                cases.append(case)
    return cases


CASES = kernel_cases()
WEIGHT_ONLY_CASES = [c for c in CASES if c.fmt.activation_dtype == "float"]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> KernelCase:
    return request.param


@pytest.fixture(params=WEIGHT_ONLY_CASES, ids=[c.id for c in WEIGHT_ONLY_CASES])
def weight_only_case(request) -> KernelCase:
    return request.param


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def case_named():
    """case_named("w4a16-g128-asym") -> that KernelCase."""
    return {c.id: c for c in CASES}.__getitem__
