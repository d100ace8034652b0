"""Mixture-of-experts layers in a compressed-tensors export: the hub's per-expert layout.

qrecipe stores an experts module as two stacked tensors (gate_up_proj, down_proj: one packed
buffer set per expert). Checkpoints on the hub, which transformers' conversion mapping merges
into its fused 3-D tensors when it loads them (and writes back when it saves) and which vLLM
loads into its FusedMoE layers, keep one linear per expert and projection, named by the
architecture (engine/models/families.py MoeLayout):

    Qwen3-MoE  model.layers.{i}.mlp.experts.{e}.gate_proj / up_proj / down_proj
    Mixtral    model.layers.{i}.block_sparse_moe.experts.{e}.w1 / w3 / w2   (router: block_sparse_moe.gate)

so the export writes each expert's projections there, each compressed as a linear of the
format (weight_packed + weight_scale + weight_shape for pack-quantized), and the router under
its checkpoint name. Each MoE layer's experts are one config-group target,
`re:model\\.layers\\.{i}\\.<block>\\.experts\\.\\d+\\.` (compressed-tensors and vLLM match
`re:` targets from the start of a name): transformers picks the experts' scheme as the group
whose `re:` targets name experts, and vLLM looks a FusedMoE layer's scheme up under
`{layer}.experts.0.gate_proj` / `.up_proj` / `.down_proj` whatever the checkpoint calls them,
which the prefix covers for Mixtral's w1/w3/w2 too.

What the loaders take (transformers 5.24 with compressed-tensors 0.20, read from their code,
checked by tests/engine/export/test_moe_export.py): transformers dequantizes the experts while
it merges them (CompressedTensorsDequantize), with one scheme for all experts of the model,
for pack-quantized (W4A16, W8A16) and FP8 weights; int-quantized (W8A8 INT8) experts it skips
(no weight_packed), so they do not load. vLLM (its compressed_tensors_moe.py) requires one
scheme per MoE layer for all three projections (qrecipe's plan fuses gate_up and down for
that reason) and runs pack-quantized 4/8-bit (WNA16), FP8 and dynamic per-token INT8 W8A8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..models.families import MoeLayout
from .errors import ExportError


@dataclass(frozen=True)
class ExpertsExport:
    """One experts module of the qrecipe checkpoint and where its experts go in the export."""

    name: str  # the experts module, e.g. model.layers.0.mlp.experts
    layout: MoeLayout
    num_experts: int

    @property
    def block(self) -> str:
        return self.name[: -len(self.layout.experts) - 1]

    def rename(self, inside_block: str) -> str:
        """A name inside the MoE part of the block (`mlp.gate`) as checkpoints spell it."""
        return self.layout.checkpoint_name(self.block, inside_block)

    @property
    def experts_prefix(self) -> str:
        return self.rename(self.layout.experts)

    @property
    def router(self) -> str:
        return self.rename(self.layout.router)

    @property
    def target(self) -> str:
        """The config-group target (or ignore entry) for every projection of every expert."""
        return "re:" + re.escape(self.experts_prefix) + r"\.\d+\."

    def shards(self, tensor: str) -> list[tuple[str, int | None]]:
        """[(checkpoint leaf, which half of the tensor's rows: 0 gate, 1 up; None: all)]."""
        return self.layout.checkpoint_shards_of(tensor)

    def module(self, e: int, leaf: str) -> str:
        return f"{self.experts_prefix}.{e}.{leaf}"


def split_rows(state: dict[str, torch.Tensor], half: int | None) -> dict[str, torch.Tensor]:
    """Half `half` of the output rows of a module state (gate_up -> gate or up); the static
    input scale, one per tensor, belongs to both halves."""
    if half is None:
        return state
    return {k: t if k == "input_scale" else t.chunk(2, dim=0)[half].contiguous() for k, t in state.items()}


def refuse_unloadable_experts(schemes: dict[str, tuple[str, str]]) -> None:
    """schemes: experts module -> (its config-group key, its scheme name)."""
    names = sorted({scheme for _, scheme in schemes.values()})
    if len({key for key, _ in schemes.values()}) > 1:
        raise ExportError(f"plan: the MoE layers' experts use {len(names)} different quantization settings "
                          f"({', '.join(names)}); transformers loads a compressed-tensors checkpoint's experts with "
                          f"one scheme for the whole model; give every expert tensor the same scheme and group size")
    if "W8A8" in names:
        raise ExportError("scheme: W8A8 (int8) experts are written as int-quantized tensors, which transformers' "
                          "compressed-tensors loader does not read for experts (it dequantizes only packed and FP8 "
                          "experts); export experts at W4A16, W8A16 or FP8")
