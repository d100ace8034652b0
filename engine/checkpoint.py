"""qrecipe's native checkpoint: lossless, loads back to identical logits.

    model.safetensors     float parameters and the packed buffers of every QuantLinear and
                          QuantExperts (an expert tensor's buffers stacked per expert:
                          model.layers.0.mlp.experts.gate_up_proj.qweight [E, N, K/2])
    qrecipe_quant.json    per-layer scheme parameters ("layers"; "experts": per experts module,
                          its tensors' parameters) and tied-tensor aliases
    plan.json             the plan the checkpoint was built from
      or model-0000i-of-0000N.safetensors + model.safetensors.index.json (a streamed run
      writes one shard per decoder block as it goes, engine/streaming/writer.py)
    config.json, tokenizer files

Loading builds the model skeleton without allocating weights, swaps in QuantLinear and
QuantExperts modules per qrecipe_quant.json (never re-matching recipe patterns), and assigns
the saved tensors, read one at a time (models/weights.py), so loading holds one copy of them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..kernels import QuantParams
from .errors import QRecipeError
from .files import normal_modes
from .models.weights import SINGLE_FILE, read_tensor, save_tensors, tensor_files
from .modules import PackedExperts, QuantExperts, QuantLinear, get_module, set_module
from .modules.packed import PackedWeights
from .plan import Plan

QUANT_FILE = "qrecipe_quant.json"
FORMAT_VERSION = 1
METADATA = {"format": "pt", "producer": "qrecipe"}


def _spec(m: PackedWeights) -> dict:
    p = m.params
    return {"scheme": m.scheme, "in_features": m.in_features, "out_features": m.out_features,
            "group_size": p.group_size, "symmetric": p.symmetric, "activation": p.activation}


def _params(spec: dict) -> QuantParams:
    return QuantParams(group_size=spec["group_size"], symmetric=spec["symmetric"], activation=spec["activation"])


def quant_modules(model: nn.Module) -> tuple[dict[str, dict], dict[str, dict]]:
    """qrecipe_quant.json's `layers` and `experts`: what each quantized module of the model is
    (the model may be a meta skeleton: only the modules' attributes are read)."""
    layers, experts = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            layers[name] = {**_spec(m), "bias": m.bias is not None}
        elif isinstance(m, QuantExperts):
            experts[name] = {"num_experts": m.num_experts,
                             "tensors": {tensor: _spec(t) for tensor, t in m.tensors().items()}}
    return layers, experts


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, on the CPU; aliases): tied weights are stored once under their first name."""
    out, aliases, seen = {}, {}, {}
    for key, t in state.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ptr in seen:
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        out[key] = t.detach().to("cpu").contiguous()
    return out, aliases


def write_metadata(out: Path, model: nn.Module, tokenizer, plan: Plan, dtype: torch.dtype,
                   aliases: dict[str, str]) -> None:
    """Everything of the checkpoint but its tensors (`model` may be a meta skeleton)."""
    layers, experts = quant_modules(model)
    (out / QUANT_FILE).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "plan_hash": plan.plan_hash, "model_id": plan.model_id,
        "dtype": str(dtype).replace("torch.", ""), "layers": layers, "experts": experts, "aliases": aliases},
        indent=2))
    (out / "plan.json").write_text(plan.to_json())
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    normal_modes(out)  # safetensors writes 0600; whoever serves the checkpoint must read it


def save_checkpoint(model: nn.Module, tokenizer, plan: Plan, out: Path) -> None:
    """The whole model in one file (a streamed run writes shards: engine/streaming/writer.py)."""
    out.mkdir(parents=True, exist_ok=True)
    state, aliases = unique_tensors(model.state_dict())
    save_tensors(state, out / SINGLE_FILE, METADATA)
    write_metadata(out, model, tokenizer, plan, next(model.parameters()).dtype, aliases)


@contextmanager
def checkpoint_tensors(path: str | Path):
    """A reader of a checkpoint's tensors, one file or shards: `.keys()`, `.get_tensor(name)`."""
    files = tensor_files(Path(path))
    if not files:
        raise QRecipeError(f"checkpoint: {path} holds no safetensors files; pass a folder written by `qrecipe run`")
    yield _Reader(files)


class _Reader:
    def __init__(self, files: dict[str, Path]):
        self.files = files

    def keys(self) -> list[str]:
        return list(self.files)

    def get_tensor(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        return read_tensor(self.files[name], name, device)


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
    # Copied out of the file's memory map straight onto the device (read_tensor): mapped tensors
    # are only 8-byte aligned, and torch's packed CPU kernels (cpu-int8pack) crash on them.
    with checkpoint_tensors(path) as reader:
        state = {k: reader.get_tensor(k, device) for k in reader.keys()}
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
