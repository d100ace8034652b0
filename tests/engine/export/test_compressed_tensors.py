"""`qrecipe export --format compressed-tensors`, checked with the real libraries: the exported
folder loads in transformers with the compressed-tensors package (on CPU it decompresses on the
first forward) and its logits match qrecipe's own on real TinyStories text.

Tolerances (float32 TinyStories-656K, 4 x 128 tokens of its validation text, logits ~20):
- weight-only (W4A16; W8A16 + W4A16): max |diff| <= 1e-4 against qrecipe's logits (seen: 0).
- activations quantized (W8A8 dynamic and static; W8A8 + W4A16; FP8): activation rounding turns any
  float32 difference into whole quantization steps now and then, so these are checked twice.
  Against qrecipe's weights run the way compressed-tensors emulates activations on CPU
  (fake-quantize, then a float matmul; int8 scale absmax/127.5 into [-128, 127], fp8 absmax/448):
  max |diff| <= 1e-4 (seen: 0), so the export itself is exact. Against qrecipe's own logits
  (int8 scale absmax/127 into [-127, 127], as vLLM's kernels; integer or fp8 products scaled
  afterwards): top-1 agreement >= 0.95 and mean |diff| <= 0.1 (seen: W8A8 0.979 and 0.063,
  W8A8 + W4A16 0.969 and 0.037, FP8 0.998 and 0.002).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import STORIES, settings_for
from safetensors import safe_open

from qrecipe.engine.checkpoint import save_checkpoint
from qrecipe.engine.export import ExportError, export_checkpoint
from qrecipe.engine.modules import QuantLinear
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quantize import prepare_model, quantize_model

pytestmark = pytest.mark.slow

CASES = {
    "w4a16": ("recipe=w4a16",),
    "w8a8": ("recipe=w8a8",),
    "mixed": ("recipe=mixed", "recipe.rules.mlp.group_size=64"),  # W8A16 attention, W4A16 MLP
    "mixed-w8a8": ("recipe=mixed", "recipe.rules.mlp.group_size=64", "recipe.rules.attn.scheme=W8A8",
                   "+recipe.rules.attn.activation=dynamic"),  # two formats: mixed-precision
    "fp8": ("recipe=fp8", "target=h100"),  # FP8 numerics emulated on this CPU
}
EXACT_ATOL = 1e-4


def _tokens(tokenizer) -> torch.Tensor:
    ids = tokenizer(STORIES.read_text()[:20_000])["input_ids"]
    return torch.tensor(ids[: 4 * 128]).reshape(4, 128)


def _quantized(tiny_model_dir, overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    plan, _ = build_plan(settings_for("model=tinystories-656k", "run.device=cpu", *overrides))
    quantize_model(model, plan, progress=False)
    prepare_model(model)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), plan


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """name -> (qrecipe model, plan, tokens, export folder), one real export per case."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, overrides in CASES.items():
        model, tokenizer, plan = _quantized(tiny_model_dir, overrides)
        save_checkpoint(model, tokenizer, plan, root / name / "model")
        export_checkpoint(root / name / "model", root / name / "ct", "compressed-tensors")
        out[name] = (model, plan, _tokens(tokenizer), root / name / "ct")
    return out


def _load_exported(folder: Path):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder).eval()


@torch.no_grad()
def _logits(model, tokens) -> torch.Tensor:
    return model(tokens).logits.float()


def _fake_quantized(x: torch.Tensor, m: QuantLinear) -> torch.Tensor:
    """x as compressed-tensors' CPU emulation rounds it: by the static scale, else per token by
    absmax over half the code range."""
    half_range = 127.5 if m.scheme == "W8A8" else 448.0
    scale = m.input_scale if m.params.activation == "static" else x.abs().amax(dim=-1, keepdim=True) / half_range
    if m.scheme == "W8A8":
        return torch.clamp(torch.round(x / scale), -128, 127) * scale
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype) * scale


@torch.no_grad()
def _with_ct_activation_convention(model, tokens) -> torch.Tensor:
    """qrecipe's weights, activations fake-quantized and multiplied as compressed-tensors does on CPU."""
    originals = {}
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.scheme in ("W8A8", "FP8"):
            def forward(x, m=m):
                return F.linear(_fake_quantized(x, m), m.dequantized_weight(torch.float32), m.bias)
            originals[m] = m.forward
            m.forward = forward
    try:
        return _logits(model, tokens)
    finally:
        for m, forward in originals.items():
            m.forward = forward


@pytest.mark.parametrize("name", ["w4a16", "mixed"])
def test_weight_only_exports_give_qrecipes_logits(exported, tiny_model, name):
    model, _, tokens, folder = exported[name]
    ours, theirs = _logits(model, tokens), _logits(_load_exported(folder), tokens)
    assert (ours - theirs).abs().max().item() <= EXACT_ATOL
    assert (theirs - _logits(tiny_model[0], tokens)).abs().max().item() > 1e-2  # and it is the quantized model


@pytest.mark.parametrize("name", ["w8a8", "mixed-w8a8", "fp8"])
def test_activation_quantized_exports_are_exact_up_to_the_emulation_convention(exported, name):
    model, _, tokens, folder = exported[name]
    theirs = _logits(_load_exported(folder), tokens)
    assert (theirs - _with_ct_activation_convention(model, tokens)).abs().max().item() <= EXACT_ATOL
    ours = _logits(model, tokens)
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item() >= 0.95
    assert (ours - theirs).abs().mean().item() <= 0.1


def test_static_activation_scales_are_exported(exported, tmp_path):
    """No algorithm on this branch calibrates static scales yet: the W8A8 checkpoint gets one by hand."""
    from safetensors.torch import load_file, save_file

    from qrecipe.engine.checkpoint import load_checkpoint

    src = exported["w8a8"][3].parent / "model"
    shutil.copytree(src, tmp_path / "model")
    meta = json.loads((src / "qrecipe_quant.json").read_text())
    state = load_file(src / "model.safetensors")
    for name, layer in meta["layers"].items():
        layer["activation"] = "static"
        state[f"{name}.input_scale"] = torch.tensor([0.05])
    (tmp_path / "model" / "qrecipe_quant.json").write_text(json.dumps(meta))
    save_file(state, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    model, _, _ = load_checkpoint(tmp_path / "model")
    export_checkpoint(tmp_path / "model", tmp_path / "ct", "compressed-tensors")
    [group] = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["input_activations"].items() >= {"strategy": "tensor", "dynamic": False}.items()
    tokens = exported["w8a8"][2]
    theirs = _logits(_load_exported(tmp_path / "ct"), tokens)
    assert (theirs - _with_ct_activation_convention(model, tokens)).abs().max().item() <= EXACT_ATOL
    assert (_logits(model, tokens).argmax(-1) == theirs.argmax(-1)).float().mean().item() >= 0.95


def test_the_quantization_config_names_every_module_and_keeps_fused_shards_together(exported):
    _, plan, _, folder = exported["mixed-w8a8"]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"], config["quantization_status"]) == \
        ("compressed-tensors", "mixed-precision", "compressed")
    assert config["ignore"] == ["lm_head"]  # the tied head stays in float
    groups = {g["format"]: g for g in config["config_groups"].values()}
    assert set(groups) == {"int-quantized", "pack-quantized"}
    for fmt, scheme in (("int-quantized", "W8A8"), ("pack-quantized", "W4A16")):
        assert groups[fmt]["targets"] == sorted(lp.name for lp in plan.quantized() if lp.scheme == scheme)
    assert groups["int-quantized"]["input_activations"].items() >= {
        "num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}.items()
    assert groups["pack-quantized"]["weights"].items() >= {"num_bits": 4, "strategy": "group", "group_size": 64}.items()
    group_of = {t: name for name, g in config["config_groups"].items() for t in g["targets"]}
    for lp in plan.layers:  # fused shards (q/k/v, gate/up) share one group
        if lp.fused_group:
            assert len({group_of[n.name] for n in plan.layers if n.fused_group == lp.fused_group}) == 1
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.int8
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight_packed").dtype == torch.int32
    assert {"model.layers.0.mlp.up_proj.weight_scale", "model.layers.0.mlp.up_proj.weight_shape",
            "model.layers.0.self_attn.q_proj.weight_scale", "model.embed_tokens.weight"} <= keys
    assert not any(k.endswith(("qweight", "scales")) for k in keys)  # nothing of qrecipe's own layout
    record = json.loads((folder / "qrecipe_export.json").read_text())
    assert record["plan_hash"] == plan.plan_hash and (folder / "plan.json").is_file()
    assert not (folder / "qrecipe_quant.json").exists()  # an export is not a qrecipe checkpoint


def test_asymmetric_weights_are_refused_because_the_loaders_cannot_read_them(tiny_model_dir, tmp_path):
    model, tokenizer, plan = _quantized(tiny_model_dir, ("recipe=w4a16", "recipe.base.symmetric=false"))
    save_checkpoint(model, tokenizer, plan, tmp_path / "model")
    with pytest.raises(ExportError, match=r"^symmetric: 14 layer\(s\) have asymmetric weights .* cannot load "
                                          r"\(zero-point shape mismatch\); export a variant built with symmetric: "
                                          r"true$"):
        export_checkpoint(tmp_path / "model", tmp_path / "ct", "compressed-tensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing half-written
    # The limitation itself, with the installed versions: the format's packed zero points do
    # not load. If this starts to load, lift the refusal in engine/export/compressed_tensors.py.
    export_checkpoint(tmp_path / "model", tmp_path / "ct", "compressed-tensors", allow_unloadable=True)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        _load_exported(tmp_path / "ct")


def test_export_refuses_an_existing_folder_and_a_non_checkpoint(exported, tmp_path):
    _, _, _, folder = exported["w4a16"]
    with pytest.raises(ExportError, match="OUT_DIR: .* already exists; choose a new folder"):
        export_checkpoint(folder.parent / "model", folder, "compressed-tensors")
    with pytest.raises(ExportError, match="is not a qrecipe checkpoint .*pass a variant id or the model/ folder"):
        export_checkpoint(folder, tmp_path / "again", "compressed-tensors")
    with pytest.raises(ExportError, match="--format: unknown format 'gguf'; choose one of compressed-tensors"):
        export_checkpoint(folder.parent / "model", tmp_path / "again", "gguf")


def test_export_makes_no_missing_parent_unless_asked_and_writes_normal_modes(exported, tmp_path):
    from qrecipe.engine.files import current_umask

    src = exported["w4a16"][3].parent / "model"
    with pytest.raises(ExportError, match=r"^OUT_DIR: the folder .*/typo does not exist; create it first, or pass "
                                          r"--parents to create it$"):
        export_checkpoint(src, tmp_path / "typo" / "ct", "compressed-tensors")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "made" / "for" / "ct"
    export_checkpoint(src, out, "compressed-tensors", parents=True)
    mask = current_umask()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask  # safetensors alone writes 0600
    assert set(modes.values()) == {0o666 & ~mask} and out.stat().st_mode & 0o777 == 0o777 & ~mask
