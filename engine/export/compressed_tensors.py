"""qrecipe checkpoint -> compressed-tensors checkpoint (what vLLM and transformers load).

The compressed-tensors package writes the format: per layer, the exact weight qrecipe
stores (dequantized in float32 from its packed codes) and its scales go through that format's
compressor (pack-quantized for W4A16/W8A16, int-quantized for W8A8, float-quantized for FP8),
which re-derives the same integer (or fp8) codes from them; the quantization_config it
writes into config.json has one config group per distinct scheme whose targets are the exact
module names from the plan (no regex for a loader to re-match), and an ignore list of every
linear layer the plan kept in float. Fused shards (q/k/v, gate/up) land in one group or are
ignored together, as vLLM requires.

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
from safetensors import safe_open
from safetensors.torch import save_file

from ...kernels import QuantParams, get_format
from ..errors import QRecipeError
from ..plan import Plan
from ..schemes import SCHEMES

FORMAT = "compressed-tensors"
# Written by this exporter; everything else in the checkpoint folder (tokenizer, generation
# config, plan.json) is copied as it is. qrecipe_quant.json is not: the export is not a
# qrecipe checkpoint.
_REWRITTEN = ("model.safetensors", "qrecipe_quant.json", "config.json")


class ExportError(QRecipeError):
    """The checkpoint cannot be written in the requested format."""


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


def _group_layers(specs: list[LayerSpec]) -> list[tuple[Any, Any, list[str]]]:
    """[(weights args, input args, layer names)], one entry per distinct scheme, in plan order."""
    groups: dict[str, tuple[Any, Any, list[str]]] = {}
    for spec in specs:
        weights, inputs = quantization_args(spec)
        key = json.dumps([weights.model_dump(), inputs.model_dump() if inputs else None], sort_keys=True, default=str)
        groups.setdefault(key, (weights, inputs, []))[2].append(spec.name)
    return list(groups.values())


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


def _module_state(f, spec: LayerSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The layer as compressed-tensors' compressors take it: float weight, scale, zero point."""
    fmt = get_format(SCHEMES[spec.scheme].format)
    names = fmt.buffer_specs(spec.out_features, spec.in_features, spec.params)
    buffers = {n: f.get_tensor(f"{spec.name}.{n}") for n in names}
    packed = fmt.unpack(buffers, spec.params)
    state = {"weight": fmt.dequantize(buffers, spec.params, torch.float32),  # exact: codes times scales
             "weight_scale": packed.scale.reshape(spec.out_features, -1).to(dtype)}
    if packed.zero is not None:  # qrecipe's unsigned zero point -> the format's signed one
        state["weight_zero_point"] = (packed.zero.to(torch.int32) - 2 ** (fmt.weight_bits - 1)).to(torch.int8)
    if packed.input_scale is not None:
        state["input_scale"] = packed.input_scale.reshape(1).to(dtype)
    return state


def write_compressed_tensors(src: Path, out: Path, *, allow_unloadable: bool = False) -> dict[str, Any]:
    """Write the compressed-tensors form of the qrecipe checkpoint in src into the empty folder out.

    allow_unloadable writes asymmetric zero points anyway (for the test that watches the
    loaders); users get an ExportError instead. Returns a summary for the provenance file.
    """
    from compressed_tensors.compressors import BaseCompressor, ModelCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    meta = json.loads((src / "qrecipe_quant.json").read_text())
    plan = Plan.from_dict(json.loads((src / "plan.json").read_text()))
    dtype = getattr(torch, meta["dtype"])
    specs = [LayerSpec.from_meta(name, layer) for name, layer in meta["layers"].items()]
    if not specs:
        raise ExportError(f"checkpoint {src}: no quantized layer to export; compressed-tensors holds quantized models")
    if not allow_unloadable:
        _refuse_unloadable(specs)
    by_name = {s.name: s for s in specs}
    config_groups, group_of, state = {}, {}, {}
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        for i, (weights, inputs, names) in enumerate(_group_layers(specs)):
            probe = QuantizationScheme(targets=sorted(names), weights=weights, input_activations=inputs)
            scheme = probe.model_copy(update={"format": infer_module_format(torch.nn.Linear, probe).value})
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            config_groups[f"group_{i}"] = scheme
            for name in names:
                group_of[name] = f"group_{i}"
                for key, t in compressor.compress(_module_state(f, by_name[name], dtype), scheme).items():
                    state[f"{name}.{key}"] = t.contiguous()
        _check_fused(plan, group_of)
        packed_buffers = {f"{s.name}.{n}" for s in specs
                          for n in get_format(SCHEMES[s.scheme].format).buffer_specs(s.out_features, s.in_features,
                                                                                     s.params)}
        for key in f.keys():  # embeddings, norms, biases, kept layers: as they are
            if key not in packed_buffers:
                state[key] = f.get_tensor(key)
    for alias in meta.get("aliases", {}):  # tied weights are stored once; config.json re-ties them
        state.pop(alias, None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for item in src.iterdir():
        if item.is_file() and item.name not in _REWRITTEN:
            shutil.copy2(item, out / item.name)
    shutil.copy2(src / "config.json", out / "config.json")
    ignore = [lp.name for lp in plan.layers if lp.name not in group_of]
    formats = {s.format for s in config_groups.values()}
    config = QuantizationConfig(config_groups=config_groups, ignore=ignore,
                                format=formats.pop() if len(formats) == 1 else "mixed-precision",
                                quantization_status=QuantizationStatus.COMPRESSED)
    ModelCompressor(quantization_config=config).update_config(str(out))
    return {"config_groups": {g: {"format": s.format, "layers": len(s.targets),
                                  "schemes": sorted({by_name[t].scheme for t in s.targets})}
                              for g, s in config_groups.items()},
            "ignore": ignore, "versions": {p: version(p) for p in ("compressed-tensors", "transformers", "torch")}}
