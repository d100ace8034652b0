"""qrecipe checkpoint -> compressed-tensors checkpoint (what vLLM and transformers load).

The compressed-tensors package writes the format: per layer, the exact weight qrecipe
stores (dequantized in float32 from its packed codes) and its scales go through that format's
compressor (pack-quantized for W4A16/W8A16, int-quantized for W8A8, float-quantized for FP8),
which re-derives the same integer (or fp8) codes from them; the quantization_config it
writes into config.json has one config group per distinct scheme whose targets are the exact
module names from the plan (no regex for a loader to re-match), and an ignore list of every
linear layer the plan kept in float. Fused shards (q/k/v, gate/up) land in one group or are
ignored together, as vLLM requires. Mixture-of-experts layers are written per expert in the
hub's layout, one `re:` target per MoE layer, routers ignored (engine/export/moe.py).

Conventions of the format, and what they mean for the numbers:
- Scales are stored in the model's dtype (loaders create them so). W4A16/W8A16 group scales
  are fp16 in qrecipe: exact in a float32 or float16 model; rounded to bfloat16 in a bf16 one.
- Integer codes are signed (q - 2**(bits-1)); zero points likewise, packed along the output
  dimension for pack-quantized. transformers 5.24 with compressed-tensors 0.19/0.20 cannot
  load those packed zero points (it expects them unpacked), so asymmetric weights are
  refused at export until a loader reads them (tests/engine/export/ checks both).
- W8A8 activations: compressed-tensors' own CPU emulation scales tokens by absmax/127.5 into
  [-128, 127] (qrecipe and vLLM's int8 kernels use absmax/127), so its logits differ from
  qrecipe's by the activation rounding alone; FP8 uses absmax/448 in both.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from ...kernels import QuantParams
from ..checkpoint import checkpoint_tensors
from ..models.weights import save_tensors
from ..plan import Plan
from ..schemes import SCHEMES
from ..models.families import moe_layout
from .errors import ExportError
from .moe import ExpertsExport, refuse_unloadable_experts, split_rows

FORMAT = "compressed-tensors"
# Written by this exporter (with the tensors, *.safetensors: one file or a streamed run's
# shards); everything else in the checkpoint folder (tokenizer, generation config, plan.json)
# is copied as it is. qrecipe_quant.json is not: the export is not a qrecipe checkpoint.
_REWRITTEN = ("model.safetensors.index.json", "qrecipe_quant.json", "config.json")


@dataclass(frozen=True)
class LayerSpec:
    name: str
    scheme: str
    in_features: int
    out_features: int
    params: QuantParams

    @classmethod
    def from_meta(cls, name: str, layer: dict[str, Any]) -> "LayerSpec":
        return cls(name, layer["scheme"], layer["in_features"], layer["out_features"],
                   QuantParams(group_size=layer["group_size"], symmetric=layer["symmetric"],
                               activation=layer["activation"]))


def quantization_args(spec: LayerSpec):
    """(weights, input_activations) QuantizationArgs of a layer's scheme."""
    from compressed_tensors.quantization import QuantizationArgs

    fmt = SCHEMES[spec.scheme].weight_format
    p = spec.params
    kind = "float" if fmt.float_codes else "int"
    weights = QuantizationArgs(num_bits=fmt.weight_bits, type=kind, symmetric=p.symmetric,
                               strategy="channel" if p.group_size is None else "group", group_size=p.group_size,
                               dynamic=False)
    if fmt.weight_only:
        return weights, None
    dynamic = p.activation == "dynamic"  # per token at run time; static: one calibrated scale per tensor
    inputs = QuantizationArgs(num_bits=8, type=kind, symmetric=True, strategy="token" if dynamic else "tensor",
                              dynamic=dynamic)
    return weights, inputs


def _refuse_unloadable(specs: list[LayerSpec]) -> None:
    asymmetric = [s.name for s in specs if not s.params.symmetric]
    if asymmetric:
        raise ExportError(
            f"symmetric: {len(asymmetric)} layer(s) have asymmetric weights (e.g. {asymmetric[0]}), whose packed zero "
            f"points transformers {version('transformers')} with compressed-tensors {version('compressed-tensors')} "
            f"cannot load (zero-point shape mismatch); export a variant built with symmetric: true")


def _args_key(spec: LayerSpec) -> tuple[str, Any, Any]:
    """(key, weights args, input args): layers with one key share a config group."""
    weights, inputs = quantization_args(spec)
    key = json.dumps([weights.model_dump(), inputs.model_dump() if inputs else None], sort_keys=True, default=str)
    return key, weights, inputs


def _check_fused(plan: Plan, group_of: dict[str, str]) -> None:
    """Shards a serving engine fuses must share one config group (or all be ignored)."""
    members: dict[str, set[str]] = {}
    for lp in plan.layers:
        if lp.fused_group:
            members.setdefault(lp.fused_group, set()).add(group_of.get(lp.name, "ignore"))
    for fused, where in members.items():
        if len(where) > 1:
            raise ExportError(f"plan: the fused shards {fused} would land in different config groups "
                              f"({', '.join(sorted(where))}); give them one scheme in the recipe")


def _buffers(f, spec: LayerSpec) -> dict[str, torch.Tensor]:
    """The packed buffers of a layer (an expert tensor's: stacked per expert)."""
    fmt = SCHEMES[spec.scheme].weight_format
    return {n: f.get_tensor(f"{spec.name}.{n}") for n in fmt.buffer_specs(spec.out_features, spec.in_features,
                                                                          spec.params)}


def _module_state(buffers: dict[str, torch.Tensor], spec: LayerSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The layer as compressed-tensors' compressors take it: float weight, scale, zero point."""
    fmt = SCHEMES[spec.scheme].weight_format
    packed = fmt.unpack(buffers, spec.params)
    state = {"weight": fmt.dequantize(buffers, spec.params, torch.float32),  # exact: codes times scales
             "weight_scale": packed.scale.reshape(spec.out_features, -1).to(dtype)}
    if packed.zero is not None:  # qrecipe's unsigned zero point -> the format's signed one
        state["weight_zero_point"] = (packed.zero.to(torch.int32) - 2 ** (fmt.weight_bits - 1)).to(torch.int8)
    if packed.input_scale is not None:
        state["input_scale"] = packed.input_scale.reshape(1).to(dtype)
    return state


def _expert_states(f, x: ExpertsExport, specs: dict[str, LayerSpec], dtype: torch.dtype
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """checkpoint module name -> module state, for every projection of every expert."""
    out = {}
    for tensor, spec in specs.items():
        stacked = _buffers(f, spec)
        for e in range(x.num_experts):
            state = _module_state({n: t[e] for n, t in stacked.items()}, spec, dtype)
            for leaf, half in x.shards(tensor):
                out[x.module(e, leaf)] = split_rows(state, half)
    return out


def _float_experts(f, x: ExpertsExport, lp) -> dict[str, torch.Tensor]:
    """A kept (float) expert tensor in the checkpoint layout: one weight per expert and projection."""
    t = f.get_tensor(lp.name)
    tensor = lp.name.rsplit(".", 1)[1]
    return {f"{x.module(e, leaf)}.weight": (t[e] if half is None else t[e].chunk(2, dim=0)[half]).contiguous()
            for e in range(x.num_experts) for leaf, half in x.shards(tensor)}


def write_compressed_tensors(src: Path, out: Path, *, allow_unloadable: bool = False) -> dict[str, Any]:
    """Write the compressed-tensors form of the qrecipe checkpoint in src into the empty folder out.

    allow_unloadable writes what the installed loaders cannot read anyway (asymmetric zero
    points, int8 or mixed-scheme experts; for the tests that watch the loaders); users get an
    ExportError instead. Returns a summary for the provenance file.
    """
    from compressed_tensors.compressors import BaseCompressor, ModelCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    meta = json.loads((src / "qrecipe_quant.json").read_text())
    plan = Plan.from_dict(json.loads((src / "plan.json").read_text()))
    dtype = getattr(torch, meta["dtype"])
    layout = moe_layout(plan.model_type)
    specs = [LayerSpec.from_meta(name, layer) for name, layer in meta["layers"].items()]
    experts: dict[str, tuple[ExpertsExport, dict[str, LayerSpec]]] = {}
    for name, entry in meta.get("experts", {}).items():
        if layout is None:
            raise ExportError(f"checkpoint {src}: model type {plan.model_type!r} has quantized experts but no MoE "
                              f"layout in engine/models/families.py MOE_LAYOUTS to name them by")
        experts[name] = (ExpertsExport(name, layout, entry["num_experts"]),
                         {t: LayerSpec.from_meta(f"{name}.{t}", spec) for t, spec in entry["tensors"].items()})
    expert_specs = [spec for _, tensors in experts.values() for spec in tensors.values()]
    if not specs and not experts:
        raise ExportError(f"checkpoint {src}: no quantized layer to export; compressed-tensors holds quantized models")
    if not allow_unloadable:
        _refuse_unloadable(specs + expert_specs)
        refuse_unloadable_experts({name: (_args_key(tensors[layout.gate_up])[0], tensors[layout.gate_up].scheme)
                                   for name, (_, tensors) in experts.items()})
    # (target, plan layers it stands for, key, states) per config-group member, in plan order
    members = []
    for spec in specs:
        members.append((spec.name, [spec.name], _args_key(spec), lambda f, spec=spec: {
            spec.name: _module_state(_buffers(f, spec), spec, dtype)}))
    for name, (x, tensors) in experts.items():
        keys = {_args_key(t)[0] for t in tensors.values()}
        if len(keys) > 1:
            raise ExportError(f"plan: {name} has tensors with different schemes; vLLM's FusedMoE takes one scheme for "
                              f"all of a layer's experts: give them one")
        members.append((x.target, [t.name for t in tensors.values()], _args_key(tensors[layout.gate_up]),
                        lambda f, x=x, tensors=tensors: _expert_states(f, x, tensors, dtype)))
    groups: dict[str, tuple[Any, Any, list]] = {}
    for member in members:
        key, weights, inputs = member[2]
        groups.setdefault(key, (weights, inputs, []))[2].append(member)

    config_groups, group_of, state, schemes_of = {}, {}, {}, {}
    by_layer = {s.name: s for s in specs + expert_specs}
    with checkpoint_tensors(src) as f:  # one file or a streamed run's shards
        for i, (weights, inputs, group_members) in enumerate(groups.values()):
            targets = sorted(m[0] for m in group_members)
            probe = QuantizationScheme(targets=targets, weights=weights, input_activations=inputs)
            scheme = probe.model_copy(update={"format": infer_module_format(torch.nn.Linear, probe).value})
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            config_groups[f"group_{i}"] = scheme
            schemes_of[f"group_{i}"] = sorted({by_layer[n].scheme for m in group_members for n in m[1]})
            for _, layers, _, states in group_members:
                group_of.update({n: f"group_{i}" for n in layers})
                for module, module_state in states(f).items():
                    for key, t in compressor.compress(module_state, scheme).items():
                        state[f"{module}.{key}"] = t.contiguous()
        _check_fused(plan, group_of)
        packed_buffers = {f"{s.name}.{n}" for s in specs + expert_specs
                          for n in SCHEMES[s.scheme].weight_format.buffer_specs(s.out_features, s.in_features,
                                                                                     s.params)}
        moe = {x.block: x for x, _ in experts.values()}
        ignore = []
        for lp in plan.layers:
            if lp.name in group_of:
                continue
            if lp.kind == "experts" and layout is not None:  # kept in float: per expert, as checkpoints are
                x = ExpertsExport(lp.name.rsplit(".", 1)[0], layout, lp.num_experts)
                state.update(_float_experts(f, x, lp))
                packed_buffers.add(lp.name)
                moe.setdefault(x.block, x)
                if x.target not in ignore:
                    ignore.append(x.target)
            else:
                ignore.append(lp.name)
        for key in f.keys():  # embeddings, norms, biases, routers, kept layers: as they are
            if key not in packed_buffers:
                state[_checkpoint_name(key, moe, layout)] = f.get_tensor(key)
    ignore = [_checkpoint_name(n, moe, layout) for n in ignore]
    for alias in meta.get("aliases", {}):  # tied weights are stored once; config.json re-ties them
        state.pop(alias, None)
    save_tensors(state, out / "model.safetensors", {"format": "pt"})
    for item in src.iterdir():
        if item.is_file() and item.name not in _REWRITTEN and item.suffix != ".safetensors":
            shutil.copy2(item, out / item.name)
    shutil.copy2(src / "config.json", out / "config.json")
    formats = {s.format for s in config_groups.values()}
    config = QuantizationConfig(config_groups=config_groups, ignore=ignore,
                                format=formats.pop() if len(formats) == 1 else "mixed-precision",
                                quantization_status=QuantizationStatus.COMPRESSED)
    ModelCompressor(quantization_config=config).update_config(str(out))
    return {"config_groups": {g: {"format": s.format, "layers": len(s.targets), "schemes": schemes_of[g]}
                              for g, s in config_groups.items()},
            "ignore": ignore, "versions": {p: version(p) for p in ("compressed-tensors", "transformers", "torch")}}


def _checkpoint_name(name: str, moe: dict[str, ExpertsExport], layout) -> str:
    """A name inside an MoE block as the hub's checkpoints spell it (Mixtral: mlp -> block_sparse_moe)."""
    for block, x in moe.items():
        if name.startswith(block + "."):
            inside = name[len(block) + 1:]
            head = layout.experts.split(".")[0]
            return x.rename(inside) if inside.startswith(head + ".") else name
    return name
