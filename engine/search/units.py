"""Units: what the search gives one scheme to. A unit is one linear layer, or a group of
linears that serving engines fuse into one tensor (q/k/v, gate/up: families.FUSED_SHARDS),
which must share a scheme. Which layers are searched is what the composed recipe would
quantize: its `ignore` list and `tied_embeddings` apply (a tied lm_head stays in float).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models.describe import LinearInfo, ModelInfo
from ..models.families import BLOCK_LISTS
from ..recipe import Recipe


@dataclass(frozen=True)
class Unit:
    name: str  # the layer's name, or the fused group's: model.layers.3.self_attn.q_proj+k_proj+v_proj
    layers: tuple[LinearInfo, ...]
    blocks: str | None  # the block list it lives in (model.layers), None outside the blocks
    block: int | None  # its block's index
    kind: tuple[str, ...]  # the layers' names inside the block (self_attn.q_proj, ...); full names outside

    @property
    def numel(self) -> int:
        return sum(li.numel for li in self.layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def kind_label(self) -> str:
        """self_attn.q/k/v_proj, mlp.down_proj."""
        if len(self.kind) == 1:
            return self.kind[0]
        parent, _, _ = self.kind[0].rpartition(".")
        leaves = [k.rpartition(".")[2] for k in self.kind]
        suffix = "_proj" if all(x.endswith("_proj") for x in leaves) else ""
        short = "/".join(x[: len(x) - len(suffix)] if suffix else x for x in leaves)
        return f"{parent}.{short}{suffix}" if parent else f"{short}{suffix}"

    @property
    def kind_slug(self) -> str:
        """For rule names: qkv, gate_up, o, down."""
        leaves = [k.rpartition(".")[2].removesuffix("_proj") for k in self.kind]
        return ("".join(leaves) if all(len(x) == 1 for x in leaves) else "_".join(leaves)).replace(".", "_")


def _block_of(name: str) -> tuple[str, int, str] | None:
    for blocks in BLOCK_LISTS:
        m = re.fullmatch(rf"{re.escape(blocks)}\.(\d+)\.(.+)", name)
        if m:
            return blocks, int(m.group(1)), m.group(2)
    return None


def searched_layers(recipe: Recipe, info: ModelInfo) -> list[LinearInfo]:
    """The linears the search decides: not ignored by the recipe, not a tied lm_head it keeps."""
    out = []
    for li in info.linears:
        if any(m.matches(li.name, li.classes) for m in recipe.ignore):
            continue
        if li.name == info.tied_lm_head and recipe.tied_embeddings == "keep":
            continue
        out.append(li)
    return out


def build_units(recipe: Recipe, info: ModelInfo) -> list[Unit]:
    """Units in model order; a fused group is one unit (if any member is ignored, the group's
    other members still share one scheme)."""
    layers = searched_layers(recipe, info)
    names = {li.name for li in layers}
    by_name = {li.name: li for li in layers}
    group_of: dict[str, tuple[str, ...]] = {}
    for g in info.fused_groups:
        members = tuple(n for n in g if n in names)
        for n in members:
            group_of[n] = members
    units, seen = [], set()
    for li in layers:
        if li.name in seen:
            continue
        members = group_of.get(li.name, (li.name,))
        seen.update(members)
        where = _block_of(members[0])
        if len(members) > 1:
            prefix = members[0].rsplit(".", 1)[0]
            name = f"{prefix}." + "+".join(m.rsplit(".", 1)[1] for m in members)
        else:
            name = members[0]
        if where is not None and all(_block_of(m) and _block_of(m)[:2] == where[:2] for m in members):
            kind = tuple(_block_of(m)[2] for m in members)
            units.append(Unit(name, tuple(by_name[m] for m in members), where[0], where[1], kind))
        else:
            units.append(Unit(name, tuple(by_name[m] for m in members), None, None, members))
    return units
