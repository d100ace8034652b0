"""qrecipe's native checkpoint: lossless, loads back to identical logits.

    model.safetensors     float parameters and the packed buffers of every QuantLinear and
                          QuantExperts (an expert tensor's buffers stacked per expert:
                          model.layers.0.mlp.experts.gate_up_proj.qweight [E, N, K/2])
    qrecipe_quant.json    per-layer scheme parameters ("layers"; "experts": per experts module,
                          its tensors' parameters) and tied-tensor aliases
    plan.json             the plan the checkpoint was built from
    config.json, tokenizer files

Loading builds the model skeleton without allocating weights, swaps in QuantLinear and
QuantExperts modules per qrecipe_quant.json (never re-matching recipe patterns), and assigns the saved tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..kernels import QuantParams
from .errors import QRecipeError
from .files import normal_modes
from .modules import PackedExperts, QuantExperts, QuantLinear, get_module, set_module
from .modules.packed import PackedWeights
from .plan import Plan

QUANT_FILE = "qrecipe_quant.json"
FORMAT_VERSION = 1


def _spec(m: PackedWeights) -> dict:
    p = m.params
    return {"scheme": m.scheme, "in_features": m.in_features, "out_features": m.out_features,
            "group_size": p.group_size, "symmetric": p.symmetric, "activation": p.activation}


def _params(spec: dict) -> QuantParams:
    return QuantParams(group_size=spec["group_size"], symmetric=spec["symmetric"], activation=spec["activation"])


def save_checkpoint(model: nn.Module, tokenizer, plan: Plan, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    layers, experts = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            layers[name] = {**_spec(m), "bias": m.bias is not None}
        elif isinstance(m, QuantExperts):
            experts[name] = {"num_experts": m.num_experts,
                             "tensors": {tensor: _spec(t) for tensor, t in m.tensors().items()}}
    state, aliases, seen = {}, {}, {}
    for key, t in model.state_dict().items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ptr in seen:  # tied weights: store once, record the alias
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        state[key] = t.detach().to("cpu").contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "producer": "qrecipe"})
    (out / QUANT_FILE).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "plan_hash": plan.plan_hash, "model_id": plan.model_id,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "layers": layers, "experts": experts, "aliases": aliases}, indent=2))
    (out / "plan.json").write_text(plan.to_json())
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    normal_modes(out)  # safetensors writes 0600; whoever serves the checkpoint must read it


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model on device with backends bound, tokenizer, quant metadata)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta_file = path / QUANT_FILE
    if not meta_file.is_file():
        raise QRecipeError(f"checkpoint: {path} has no {QUANT_FILE}; pass a folder written by `qrecipe run` "
                           f"(its model/ subfolder)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise QRecipeError(f"checkpoint: {path} has format_version {meta.get('format_version')}, this qrecipe reads "
                           f"{FORMAT_VERSION}; re-run the recipe with this version")
    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    dtype = getattr(torch, meta["dtype"])
    for name, layer in meta["layers"].items():
        set_module(model, name, QuantLinear(layer["in_features"], layer["out_features"], bias=layer["bias"],
                                            scheme=layer["scheme"], params=_params(layer), dtype=dtype, device="meta"))
    for name, entry in meta.get("experts", {}).items():
        tensors = {tensor: PackedExperts(entry["num_experts"], spec["in_features"], spec["out_features"],
                                         scheme=spec["scheme"], params=_params(spec), dtype=dtype, device="meta")
                   for tensor, spec in entry["tensors"].items()}
        set_module(model, name, QuantExperts(tensors["gate_up_proj"], tensors["down_proj"],
                                             get_module(model, name).act_fn))
    # Copied out of the file's memory map: those tensors are only 8-byte aligned, and torch's
    # packed CPU kernels (cpu-int8pack) crash on them.
    state = {k: v.clone() for k, v in load_file(str(path / "model.safetensors")).items()}
    for alias, source in meta.get("aliases", {}).items():
        state[alias] = state[source]
    model.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.to(device).eval()
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantExperts)):
            m.prepare()
    return model, AutoTokenizer.from_pretrained(path), meta
