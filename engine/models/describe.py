"""What plan resolution needs to know about a model, read off its meta-device skeleton."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .families import LLAMA_STYLE_SHARDS, fused_shards


@dataclass(frozen=True)
class LinearInfo:
    name: str
    classes: tuple[str, ...]  # its own class name, then its ancestors' (nearest first)
    in_features: int
    out_features: int
    bias: bool

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


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
    linears: tuple[LinearInfo, ...]
    tied_lm_head: str | None  # name of the output linear that shares the input embeddings
    other_params: int  # parameters outside the linear layers (embeddings, norms, biases)
    fused_groups: tuple[tuple[str, ...], ...]  # full names of layers a serving engine fuses
    notes: tuple[str, ...] = ()  # assumptions made about this model (shown with the plan)

    def linear(self, name: str) -> LinearInfo:
        return next(li for li in self.linears if li.name == name)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def describe(model: nn.Module, config, model_id: str) -> ModelInfo:
    cfg = _text_config(config)
    classes_of: dict[str, tuple[str, ...]] = {"": (type(model).__name__,)}
    linears: list[LinearInfo] = []
    linear_params: set[int] = set()
    for name, module in model.named_modules():
        if not name:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        classes_of[name] = (type(module).__name__,) + classes_of[parent]
        if isinstance(module, nn.Linear):
            linears.append(LinearInfo(name, classes_of[name], module.in_features, module.out_features,
                                      module.bias is not None))
            linear_params.add(id(module.weight))

    tied = None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tie_flag = getattr(cfg, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))
    if out is not None and isinstance(out, nn.Linear) and tie_flag:
        tied = next(n for n, m in model.named_modules() if m is out)

    seen: set[int] = set()
    other = 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or id(p) in linear_params:
            continue
        seen.add(id(p))
        other += p.numel()
    num_heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", None) or (hidden // num_heads if num_heads else 0))

    names = {li.name for li in linears}
    groups = []
    model_type = str(getattr(cfg, "model_type", "unknown"))
    shards = fused_shards(model_type)
    notes = []
    if shards is None:
        shards = LLAMA_STYLE_SHARDS
        notes.append(f"model type {model_type!r} is not in engine/models/families.py FUSED_SHARDS: assumed that "
                     f"serving engines fuse {' and '.join('/'.join(g) for g in shards)} as in Llama, where its "
                     f"layers have those names")
    for shard_names in shards:
        for li in linears:
            prefix, _, leaf = li.name.rpartition(".")
            if leaf == shard_names[0]:
                members = tuple(f"{prefix}.{s}" for s in shard_names)
                if all(m in names for m in members):
                    groups.append(members)
    return ModelInfo(
        model_id=model_id,
        model_type=model_type,
        num_layers=int(getattr(cfg, "num_hidden_layers", 0) or 0),
        hidden_size=hidden,
        num_heads=num_heads,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        vocab_size=int(getattr(cfg, "vocab_size", 0) or 0),
        linears=tuple(linears),
        tied_lm_head=tied,
        other_params=other,
        fused_groups=tuple(groups),
        notes=tuple(notes),
    )


def dtype_bytes(dtype: torch.dtype | str) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype).element_size()
