"""The mixture-of-experts forward, and the per-expert form of an experts module that
calibration works on.

transformers 5 keeps a MoE layer's experts as two fused 3-D tensors of one module
(engine/models/families.py MoeLayout); its forward takes (hidden_states [T, H], top_k_index
[T, k], top_k_weights [T, k]) from the router and returns [T, H]. `route` is that forward
(the eager one of transformers' Qwen3MoeExperts / MixtralExperts), given how to run one
expert on the tokens routed to it. QuantExperts and UnfusedExperts both use it, so they
route exactly as the model they replace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.families import MoeLayout


def route(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int,
          run_expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum over a token's top-k experts e of weight * run_expert(e, tokens routed to e)."""
    out = torch.zeros_like(hidden_states)
    with torch.no_grad():
        # index num_experts marks a dropped slot (expert parallelism), as in transformers
        mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)  # [E + 1, k, T]
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist()
    for e in hit:
        if e == num_experts:
            continue
        slot, token = torch.where(mask[e])
        y = run_expert(e, hidden_states[token]) * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _view_linear(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear whose weight is `weight` itself (a view into the fused tensor, no copy)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


class ExpertMLP(nn.Module):
    """One expert as three linears: down(act(gate(x)) * up(x))."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, act_fn):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.Module):
    """An experts module as per-expert linears named {e}.gate_proj / up_proj / down_proj whose
    weights are views of the fused tensors: the calibration driver hooks and quantizes them as
    it does any linear, and each sees only the tokens the router sends its expert. The fused
    gate_up tensor's two halves are its gate and up (they read one input, and quantization is
    per output row, so quantizing the halves is quantizing the tensor)."""

    def __init__(self, experts: nn.Module, layout: MoeLayout):
        gate_up = getattr(experts, layout.gate_up).data
        down = getattr(experts, layout.down).data
        half = gate_up.shape[1] // 2
        super().__init__()
        self.num_experts = gate_up.shape[0]
        for e in range(self.num_experts):  # children "0", "1", ...: the experts' linears are {e}.gate_proj, ...
            self.add_module(str(e), ExpertMLP(_view_linear(gate_up[e, :half]), _view_linear(gate_up[e, half:]),
                                              _view_linear(down[e]), experts.act_fn))

    @property
    def act_fn(self):
        return self[0].act_fn

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, e: int) -> ExpertMLP:
        return self._modules[str(e)]

    def __iter__(self):
        return (self[e] for e in range(self.num_experts))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return route(hidden_states, top_k_index, top_k_weights, len(self), lambda e, x: self[e](x))
