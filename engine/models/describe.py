"""What plan resolution needs to know about a model, read off its meta-device skeleton.

The plan's units are linears and expert tensors. A mixture-of-experts block in transformers 5
holds its experts as fused 3-D parameters of one experts module (Qwen3MoeExperts.gate_up_proj
[experts, 2 x intermediate, hidden]); each such tensor is one unit of kind "experts", planned
like a linear of its per-expert shape (one scheme, one scale set per expert). The router beside
it is a unit of kind "router": listed, and always kept in float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .families import LLAMA_STYLE_SHARDS, fused_shards, moe_layout

LINEAR, EXPERTS, ROUTER = "linear", "experts", "router"


@dataclass(frozen=True)
class UnitInfo:
    name: str  # a linear's module name; an expert tensor's full parameter name
    # its own class name, then its ancestors' (nearest first); an expert tensor starts with its
    # experts module's class and ends with "Linear" (each expert is a linear, and class:Linear
    # rules cover experts, as llm-compressor's and vLLM's "Linear" targets do)
    classes: tuple[str, ...]
    in_features: int  # per expert for expert tensors
    out_features: int
    bias: bool
    kind: str = LINEAR  # linear | experts | router
    num_experts: int = 1  # the leading dimension of an expert tensor

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features * self.num_experts

    @property
    def quantizable(self) -> bool:
        """Rules match it (routers are always kept)."""
        return self.kind != ROUTER


LinearInfo = UnitInfo


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    units: tuple[UnitInfo, ...]  # linears, expert tensors and routers, in module order
    tied_lm_head: str | None  # name of the output linear that shares the input embeddings
    other_params: int  # parameters outside the units (embeddings, norms)
    fused_groups: tuple[tuple[str, ...], ...]  # full names of units a serving engine fuses
    notes: tuple[str, ...] = ()  # assumptions made about this model (shown with the plan)
    experts_per_token: int = 0  # the router's top-k (0: no mixture of experts)
    input_embedding_params: int = 0  # the input embedding table (read one row per token)

    @property
    def linears(self) -> tuple[UnitInfo, ...]:
        return tuple(u for u in self.units if u.kind == LINEAR)

    def unit(self, name: str) -> UnitInfo:
        return next(u for u in self.units if u.name == name)

    linear = unit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        units = tuple(UnitInfo(**{**u, "classes": tuple(u["classes"])}) for u in d["units"])
        return cls(**{**d, "units": units, "fused_groups": tuple(tuple(g) for g in d["fused_groups"]),
                      "notes": tuple(d["notes"])})


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _expert_units(model: nn.Module, classes_of: dict[str, tuple[str, ...]]) -> list[tuple[str, UnitInfo]]:
    """(module name, unit) for every 3-D parameter held directly by a module (convolutions'
    kernels aside)."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3:
                e, n, k = p.shape
                out.append((name, UnitInfo(f"{name}.{pname}", classes_of[name] + ("Linear",), int(k), int(n), False,
                                           EXPERTS, int(e))))
    return out


def describe(model: nn.Module, config, model_id: str) -> ModelInfo:
    cfg = _text_config(config)
    model_type = str(getattr(cfg, "model_type", "unknown"))
    layout = moe_layout(model_type)
    classes_of: dict[str, tuple[str, ...]] = {"": (type(model).__name__,)}
    for name, module in model.named_modules():
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            classes_of[name] = (type(module).__name__,) + classes_of[parent]
    experts = _expert_units(model, classes_of)
    experts_modules = {m for m, _ in experts}
    routers = set()
    if layout is not None:
        suffix = "." + layout.experts
        routers = {m[: -len(suffix)] + "." + layout.router for m in experts_modules if m.endswith(suffix)}

    units: list[UnitInfo] = []
    counted: set[int] = set()  # parameters the units account for
    by_module = {}
    for m, u in experts:
        by_module.setdefault(m, []).append(u)
    for name, module in model.named_modules():
        if name in routers:
            w = module.weight
            units.append(UnitInfo(name, classes_of[name], int(w.shape[-1]), int(w.shape[0]),
                                  getattr(module, "bias", None) is not None, ROUTER))
            counted.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, nn.Linear):
            units.append(UnitInfo(name, classes_of[name], module.in_features, module.out_features,
                                  module.bias is not None))
            counted.update(id(p) for p in module.parameters(recurse=False))  # weight and bias
        for u in by_module.get(name, []):
            units.append(u)
            counted.add(id(module.get_parameter(u.name.rsplit(".", 1)[1])))

    tied = None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tie_flag = getattr(cfg, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))
    if out is not None and isinstance(out, nn.Linear) and tie_flag:
        tied = next(n for n, m in model.named_modules() if m is out)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_params = emb.weight.numel() if isinstance(getattr(emb, "weight", None), torch.Tensor) else 0

    seen: set[int] = set()
    other = 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or id(p) in counted:
            continue
        seen.add(id(p))
        other += p.numel()
    num_heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", None) or (hidden // num_heads if num_heads else 0))

    names = {u.name for u in units}
    groups = []
    shards = fused_shards(model_type)
    notes = []
    if shards is None:
        shards = LLAMA_STYLE_SHARDS
        notes.append(f"model type {model_type!r} is not in engine/models/families.py FUSED_SHARDS: assumed that "
                     f"serving engines fuse {' and '.join('/'.join(g) for g in shards)} as in Llama, where its "
                     f"layers have those names")
    for shard_names in shards:
        for u in units:
            prefix, _, leaf = u.name.rpartition(".")
            if u.kind == LINEAR and leaf == shard_names[0]:
                members = tuple(f"{prefix}.{s}" for s in shard_names)
                if all(m in names for m in members):
                    groups.append(members)
    if layout is not None:  # a serving engine runs one MoE layer's experts as one fused layer
        for m in sorted(experts_modules, key=list(classes_of).index):
            members = (f"{m}.{layout.gate_up}", f"{m}.{layout.down}")
            if all(x in names for x in members):
                groups.append(members)
    top_k = int(getattr(cfg, "num_experts_per_tok", 0) or 0) if experts else 0
    return ModelInfo(
        model_id=model_id,
        model_type=model_type,
        num_layers=int(getattr(cfg, "num_hidden_layers", 0) or 0),
        hidden_size=hidden,
        num_heads=num_heads,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        vocab_size=int(getattr(cfg, "vocab_size", 0) or 0),
        units=tuple(units),
        tied_lm_head=tied,
        other_params=other,
        fused_groups=tuple(groups),
        notes=tuple(notes),
        experts_per_token=top_k,
        input_embedding_params=emb_params,
    )


def dtype_bytes(dtype: torch.dtype | str) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype).element_size()
