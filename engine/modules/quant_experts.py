"""QuantExperts: a drop-in for a transformers experts module (Qwen3MoeExperts, MixtralExperts)
holding its two expert tensors packed, one scale set per expert.

Each tensor is a PackedExperts: the buffers of its format (kernels/<format>/pack.py) for every
expert, stacked along a leading experts dimension (`gate_up_proj.qweight` [E, N, K/2] for
W4A16), which is also the checkpoint layout. Its forward routes tokens as the module it
replaces (engine/modules/experts.py) and runs each expert on the tokens routed to it through
the backend chosen for the tensor: the backends take one expert at a time through an
ExpertView, which looks to them like a QuantLinear without bias (the Triton kernels on CUDA;
dequantize-then-matmul on a CPU; the reference numerics where a format is emulated).
"""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import QuantizedWeight, QuantParams
from ..backends import Backend
from .experts import route
from .packed import PackedWeights


class ExpertView:
    """One expert of a PackedExperts, as a backend reads a QuantLinear: format, parameters,
    shape, packed buffers (slices of the stacked ones, not copies) and no bias."""

    bias = None

    def __init__(self, owner: "PackedExperts", e: int):
        self.format, self.params = owner.format, owner.params
        self.in_features, self.out_features = owner.in_features, owner.out_features
        self._packed = {name: t[e] for name, t in owner.packed().items()}

    def packed(self) -> dict[str, torch.Tensor]:
        return self._packed

    def __getattr__(self, name: str) -> torch.Tensor:  # qweight, scales, weight_scale, input_scale...
        packed = self.__dict__.get("_packed", {})
        if name in packed:
            return packed[name]
        raise AttributeError(name)


class PackedExperts(PackedWeights):
    """One fused expert tensor [E, out, in], quantized per expert."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, *, scheme: str, params: QuantParams,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, scheme=scheme, params=params, dtype=dtype, device=device,
                         experts=num_experts)

    @classmethod
    def from_quantized(cls, weights: list[QuantizedWeight], in_features: int, out_features: int, scheme: str,
                       params: QuantParams, dtype: torch.dtype, device: torch.device) -> "PackedExperts":
        m = cls(len(weights), in_features, out_features, scheme=scheme, params=params, dtype=dtype, device=device)
        packed = [m.format.pack(w, params) for w in weights]
        for name in m.packed():
            setattr(m, name, torch.stack([p[name] for p in packed]).to(device))
        return m

    def expert(self, e: int) -> ExpertView:
        return ExpertView(self, e)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[E, out, in]."""
        return torch.stack([self.format.dequantize(self.expert(e).packed(), self.params, dtype)
                            for e in range(self.experts)])

    def prepare(self) -> Backend:
        self.backend = self._select_backend()
        return self.backend

    def linear(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """x [T, in] through expert e: [T, out]."""
        if self.backend is None:
            self.prepare()
        return self.backend.linear(self.expert(e), x)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One QuantizedWeight of stacked output rows (an expert's gate and up halves -> gate_up).
    Their static input scales, measured on the one input they share, are equal; the larger is
    kept should rounding ever make them differ."""
    zero = None if any(p.zero is None for p in parts) else torch.cat([p.zero for p in parts])
    scales = [p.input_scale for p in parts if p.input_scale is not None]
    return QuantizedWeight(q=torch.cat([p.q for p in parts]), scale=torch.cat([p.scale for p in parts]), zero=zero,
                           input_scale=torch.stack(scales).amax(dim=0) if scales else None)


class QuantExperts(nn.Module):
    """forward(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H], as the
    experts module it replaces; gate_up_proj holds each expert's gate rows then its up rows."""

    def __init__(self, gate_up_proj: PackedExperts, down_proj: PackedExperts, act_fn):
        super().__init__()
        if gate_up_proj.experts != down_proj.experts:
            raise ValueError(f"gate_up_proj has {gate_up_proj.experts} experts, down_proj {down_proj.experts}")
        self.num_experts = gate_up_proj.experts
        self.gate_up_proj, self.down_proj = gate_up_proj, down_proj
        self.act_fn = act_fn

    def tensors(self) -> dict[str, PackedExperts]:
        return {"gate_up_proj": self.gate_up_proj, "down_proj": self.down_proj}

    def prepare(self) -> dict[str, str]:
        return {name: t.prepare().name for name, t in self.tensors().items()}

    def run_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj.linear(e, x).chunk(2, dim=-1)
        return self.down_proj.linear(e, self.act_fn(gate) * up)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return route(hidden_states, top_k_index, top_k_weights, self.num_experts, self.run_expert)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}"
