"""`qrecipe export --format compressed-tensors` of mixture-of-experts variants, checked with the
real libraries: the export writes the hub's per-expert layout (engine/export/moe.py), transformers
with compressed-tensors loads it (merging the experts into its fused tensors), and its logits
match qrecipe's on real TinyStories text (tiny synthetic Qwen3-MoE and Mixtral, tests/moe_models.py).

Tolerances (float32, 2 x 128 tokens, logits ~20):
- W4A16, W8A16 (all linears and experts): max |diff| <= 1e-4 against qrecipe's logits (seen: 0).
- FP8: transformers dequantizes FP8 experts when it loads them and runs them on float
  activations, where qrecipe (as vLLM) quantizes their activations per token; so the exported
  model is checked against qrecipe's weights run that way (dense FP8 layers as compressed-tensors
  emulates them, experts dequantized): max |diff| <= 1e-4 (seen: 0).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from conftest import STORIES, settings_for
from moe_models import load_moe, moe_dirs  # noqa: F401  (fixture)

from qrecipe.engine.checkpoint import save_checkpoint
from qrecipe.engine.export import ExportError, export_checkpoint
from qrecipe.engine.modules import QuantExperts, QuantLinear
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quantize import prepare_model, quantize_model

pytestmark = pytest.mark.slow
EXACT_ATOL = 1e-4


def _export(folder, tmp_path, *overrides, allow_unloadable=False):
    from transformers import AutoTokenizer

    plan, _ = build_plan(settings_for("model=hf", f"model.path={folder}", "run.device=cpu", *overrides))
    model = load_moe(folder)
    quantize_model(model, plan, progress=False)
    prepare_model(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    save_checkpoint(model, tokenizer, plan, tmp_path / "model")
    export_checkpoint(tmp_path / "model", tmp_path / "ct", "compressed-tensors", allow_unloadable=allow_unloadable)
    ids = torch.tensor(tokenizer(STORIES.read_text()[:5000])["input_ids"][:256]).reshape(2, 128)
    return model, plan, ids, tmp_path / "ct"


def _load(folder):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder).eval()


@torch.no_grad()
def _logits(model, ids):
    return model(ids).logits.float()


@pytest.mark.parametrize("arch, recipe", [("qwen3-moe-tiny", "recipe=w4a16"), ("mixtral-tiny", "recipe=w4a16"),
                                          ("mixtral-tiny", "recipe=w8a16")])
def test_weight_only_experts_export_to_qrecipes_logits(moe_dirs, tmp_path, arch, recipe):
    model, _, ids, folder = _export(moe_dirs[arch], tmp_path, recipe, "target=cpu")
    theirs = _logits(_load(folder), ids)
    assert (_logits(model, ids) - theirs).abs().max().item() <= EXACT_ATOL
    assert (theirs - _logits(load_moe(moe_dirs[arch]), ids)).abs().max().item() > 1e-2  # and it is quantized


@pytest.mark.parametrize("arch, experts, shards, router", [
    ("qwen3-moe-tiny", "model.layers.{i}.mlp.experts", ("gate_proj", "up_proj", "down_proj"), "model.layers.{i}.mlp.gate"),
    ("mixtral-tiny", "model.layers.{i}.block_sparse_moe.experts", ("w1", "w3", "w2"),
     "model.layers.{i}.block_sparse_moe.gate"),
])
def test_the_export_uses_the_hubs_per_expert_layout(moe_dirs, tmp_path, arch, experts, shards, router):
    _, _, _, folder = _export(moe_dirs[arch], tmp_path, "recipe=w4a16", "target=cpu")
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    [group] = config["config_groups"].values()
    expert_targets = [t for t in group["targets"] if t.startswith("re:")]
    assert expert_targets == ["re:" + experts.format(i=i).replace(".", "\\.") + "\\.\\d+\\." for i in range(2)]
    assert group["format"] == "pack-quantized" and group["weights"]["group_size"] == 128
    assert config["ignore"] == [router.format(i=0), router.format(i=1), "lm_head"]  # routers stay float
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        gate = f.get_tensor(f"{experts.format(i=1)}.3.{shards[0]}.weight_packed")
        assert gate.dtype == torch.int32 and tuple(f.get_tensor(f"{experts.format(i=1)}.3.{shards[0]}.weight_shape")
                                                  .tolist()) == (384, 128)
    for e in range(4):
        for shard in shards:
            assert {f"{experts.format(i=0)}.{e}.{shard}.{k}" for k in ("weight_packed", "weight_scale",
                                                                       "weight_shape")} <= keys
    assert f"{router.format(i=0)}.weight" in keys
    assert not any("gate_up_proj" in k or k.endswith(("qweight", "scales")) for k in keys)


def _as_transformers_runs_fp8(model):
    """qrecipe's FP8 weights run as the loaded export runs them: dense layers with activations
    fake-quantized per token (absmax/448) then a float matmul; experts dequantized, on float inputs."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            def forward(x, m=m):
                scale = x.abs().amax(dim=-1, keepdim=True) / 448.0
                xq = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype) * scale
                return F.linear(xq, m.dequantized_weight(torch.float32), m.bias)
            m.forward = forward
        elif isinstance(m, QuantExperts):
            gate_up, down = m.gate_up_proj.dequantized_weight(), m.down_proj.dequantized_weight()

            def run_expert(e, x, m=m, gate_up=gate_up, down=down):
                g, u = F.linear(x, gate_up[e]).chunk(2, dim=-1)
                return F.linear(m.act_fn(g) * u, down[e])
            m.run_expert = run_expert
    return model


def test_fp8_experts_export_exactly_up_to_how_transformers_runs_them(moe_dirs, tmp_path):
    model, _, ids, folder = _export(moe_dirs["qwen3-moe-tiny"], tmp_path, "recipe=fp8", "target=h100")
    theirs = _logits(_load(folder), ids)
    ours = _logits(model, ids)
    assert (theirs - _logits(_as_transformers_runs_fp8(model), ids)).abs().max().item() <= EXACT_ATOL
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item() >= 0.9


def test_int8_experts_are_refused_because_transformers_cannot_load_them(moe_dirs, tmp_path):
    with pytest.raises(ExportError, match=r"^scheme: W8A8 \(int8\) experts are written as int-quantized tensors, "
                                          r"which transformers' compressed-tensors loader does not read for experts"):
        _export(moe_dirs["mixtral-tiny"], tmp_path, "recipe=w8a8", "target=h100")
    assert not (tmp_path / "ct").exists() and not (tmp_path / ".ct.partial").exists()  # nothing half-written
    # The limitation itself, with the installed versions. If this starts to load, lift the refusal
    # in engine/export/moe.py.
    _export(moe_dirs["mixtral-tiny"], tmp_path / "again", "recipe=w8a8", "target=h100", allow_unloadable=True)
    with pytest.raises(RuntimeError, match="automatic conversion of the weights"):
        _load(tmp_path / "again" / "ct")


def test_experts_with_different_schemes_across_layers_are_refused(moe_dirs, tmp_path):
    with pytest.raises(ExportError, match=r"^plan: the MoE layers' experts use 2 different quantization settings "
                                          r"\(W4A16, W8A16\); transformers loads .* with one scheme for the whole model"):
        _export(moe_dirs["qwen3-moe-tiny"], tmp_path, "recipe=w4a16", "target=cpu",
                '+recipe.rules.last.match="re:model\\.layers\\.1\\.mlp\\.experts\\..*"', "+recipe.rules.last.scheme=W8A16")
