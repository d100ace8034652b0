"""Quantizing mixture-of-experts models (tiny synthetic Qwen3-MoE and Mixtral, tests/moe_models.py)
on real text: every expert calibrated on the tokens its router sends it, token counts recorded,
the minimum-token fallback, AWQ and GPTQ against RTN, checkpoints, and a whole run.

Error against the float model: mean KL(float || quantized) per token over the first 16
windows of 256 tokens of tinystories_val.txt; calibration on 16 windows of 256 tokens of its
second half (tests/tiny_quant.py), so they share no token. Only the expert tensors are
quantized (W4A16 group 64), so the comparison is the experts'. Seen on this machine (2-core
CPU, fp32): Mixtral RTN 0.0426, AWQ 0.0325, GPTQ 0.0323; Qwen3-MoE RTN 0.0391, AWQ 0.0292,
GPTQ 0.0268. The models are synthetic: their float outputs are the target, not a
measure of a real MoE's quality.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import STORIES, TINY_RUN, compose_cfg, settings_for
from moe_models import ARCHS, load_moe, moe_dirs  # noqa: F401  (fixture)
from tiny_quant import calib_text  # noqa: F401  (fixture)

from qrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from qrecipe.engine.modules import QuantExperts
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.quantize import prepare_model, quantize_model
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams

pytestmark = pytest.mark.slow
EXPERTS_CLASS = {"qwen3-moe-tiny": "Qwen3MoeExperts", "mixtral-tiny": "MixtralExperts"}
SAMPLES, SEQ, TOP_K = 16, 256, 2


@pytest.fixture(scope="module")
def eval_ids(moe_dirs):
    from transformers import AutoTokenizer

    from qrecipe.engine.data import token_windows

    tokenizer = AutoTokenizer.from_pretrained(moe_dirs[ARCHS[0]])
    return token_windows(tokenizer, [STORIES.read_text(encoding="utf-8")], 256, 16)


@torch.no_grad()
def _log_probs(model, ids) -> torch.Tensor:
    return torch.cat([model(ids[i:i + 8]).logits.float().log_softmax(-1) for i in range(0, len(ids), 8)])


def _kl(reference: torch.Tensor, got: torch.Tensor) -> float:
    return F.kl_div(got, reference, log_target=True, reduction="sum").item() / reference[..., 0].numel()


def _settings(folder, calib_text, *overrides):
    return settings_for("model=hf", f"model.path={folder}", "run.device=cpu", "target=cpu", "data@calib.data=text",
                        f"calib.data.path={calib_text}", f"calib.samples={SAMPLES}", f"calib.seq_len={SEQ}",
                        *overrides)


def _experts_only(arch: str, algorithm: str, *more) -> tuple[str, ...]:
    return ("recipe=w4a16", "recipe.base.group_size=64", f"recipe.base.algorithm={algorithm}",
            f"recipe.rules.linears.match=class:{EXPERTS_CLASS[arch]}", *more)


def _quantize(folder, calib_text, *overrides):
    from transformers import AutoTokenizer

    settings = _settings(folder, calib_text, *overrides)
    plan, _ = build_plan(settings)
    model = load_moe(folder)
    report = quantize_model(model, plan, settings.calib, AutoTokenizer.from_pretrained(folder), progress=False)
    prepare_model(model)
    return model, plan, report


@pytest.fixture(scope="module")
def by_algorithm(moe_dirs, calib_text, eval_ids):
    """arch -> {"float": log-probs, algorithm: (model, plan, report, KL)} with only the experts quantized."""
    out = {}
    for arch in ARCHS:
        folder = moe_dirs[arch]
        float_lp = _log_probs(load_moe(folder), eval_ids)
        out[arch] = {"float": float_lp}
        for algorithm in ("rtn", "awq", "gptq"):
            model, plan, report = _quantize(folder, calib_text, *_experts_only(arch, algorithm))
            out[arch][algorithm] = (model, plan, report, _kl(float_lp, _log_probs(model, eval_ids)))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_and_gptq_on_experts_beat_rtn_on_real_text(by_algorithm, arch):
    kl = {a: by_algorithm[arch][a][3] for a in ("rtn", "awq", "gptq")}
    assert kl["awq"] < 0.9 * kl["rtn"] and kl["gptq"] < 0.9 * kl["rtn"], kl
    model = by_algorithm[arch]["gptq"][0]
    assert sum(isinstance(m, QuantExperts) for m in model.modules()) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_every_expert_is_calibrated_on_its_routed_tokens_and_counted(by_algorithm, arch):
    report = by_algorithm[arch]["gptq"][2]
    assert set(report.expert_tokens) == {"model.layers.0.mlp.experts", "model.layers.1.mlp.experts"}
    for counts in report.expert_tokens.values():  # each token goes to top-k experts
        assert len(counts) == 4 and sum(counts) == SAMPLES * SEQ * TOP_K and min(counts) > 0
    assert any(n.startswith("model.layers.0.mlp.experts: its 4 experts saw ") and "none below" in n
               for n in report.notes), report.notes
    assert by_algorithm[arch]["rtn"][2].expert_tokens == {}  # RTN reads no data: nothing to count


def test_an_expert_below_the_minimum_falls_back_to_rtn_in_the_notes(by_algorithm, moe_dirs, calib_text):
    arch = "mixtral-tiny"
    counts = by_algorithm[arch]["gptq"][2].expert_tokens["model.layers.0.mlp.experts"]
    starved = min(range(4), key=counts.__getitem__)
    minimum = counts[starved] + 1  # just that expert of layer 0 (layer 1's inputs may differ)
    model, plan, report = _quantize(moe_dirs[arch], calib_text,
                                    *_experts_only(arch, "gptq", f"calib.min_expert_tokens={minimum}"))
    name = f"model.layers.0.mlp.experts.{starved}"
    assert f"gptq: {name}.gate_proj+{name}.up_proj saw {counts[starved]} calibration tokens (fewer than " \
           f"calib.min_expert_tokens={minimum}); quantized with rtn" in report.notes
    assert any(n.startswith("model.layers.0.mlp.experts:") and f"min_expert_tokens={minimum}: experts {starved} (" in n
               for n in report.notes), report.notes
    # its weights are exactly RTN's of the float expert; the others' are GPTQ's
    fused = load_moe(moe_dirs[arch]).model.layers[0].mlp.experts.down_proj.data
    down = model.model.layers[0].mlp.experts.down_proj
    p = QuantParams(64)
    for e in range(4):
        rtn = down.format.pack(rtn_quantize(fused[e], SCHEMES["W4A16"], p), p)
        assert torch.equal(down.expert(e).qweight, rtn["qweight"]) == (e == starved), e


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoints_round_trip_exactly(by_algorithm, moe_dirs, eval_ids, tmp_path, arch):
    from transformers import AutoTokenizer

    model, plan, _, _ = by_algorithm[arch]["awq"]
    save_checkpoint(model, AutoTokenizer.from_pretrained(moe_dirs[arch]), plan, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "qrecipe_quant.json").read_text())
    assert meta["experts"]["model.layers.1.mlp.experts"] == {"num_experts": 4, "tensors": {
        "gate_up_proj": {"scheme": "W4A16", "in_features": 128, "out_features": 768, "group_size": 64,
                         "symmetric": True, "activation": "none"},
        "down_proj": {"scheme": "W4A16", "in_features": 384, "out_features": 128, "group_size": 64,
                      "symmetric": True, "activation": "none"}}}
    loaded, _, _ = load_checkpoint(tmp_path / "model")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(eval_ids[:2]).logits, loaded(eval_ids[:2]).logits)


def test_a_run_records_the_experts_token_counts(moe_dirs, calib_text):
    from qrecipe.engine.run import run

    result = run(compose_cfg(*TINY_RUN, "model=hf", f"model.path={moe_dirs['qwen3-moe-tiny']}", "model.name=qwen3-moe-tiny",
                             "recipe=w4a16", "recipe.base.group_size=64", "recipe.base.algorithm=gptq",
                             "data@calib.data=text", f"calib.data.path={calib_text}", "calib.samples=8",
                             f"calib.seq_len={SEQ}"), progress=False)
    record = json.loads((result.output_dir / "metrics.json").read_text())
    counts = record["calibration"]["expert_tokens"]
    assert record["calibration"]["min_expert_tokens"] == 128
    assert [sum(c) for c in counts.values()] == [8 * SEQ * TOP_K] * 2
    assert any("model.layers.1.mlp.experts: its 4 experts saw" in n for n in record["notes"])
    assert result.metrics["weight_bytes"] < result.metrics["weight_bytes_baseline"] / 3
    plan_text = (result.output_dir / "plan.txt").read_text()
    assert "model.layers.1.mlp.experts.down_proj" in plan_text and "MoE router" in plan_text


def test_a_starved_expert_takes_its_peers_static_activation_scale(by_algorithm, moe_dirs, calib_text):
    arch = "mixtral-tiny"
    counts = by_algorithm[arch]["gptq"][2].expert_tokens["model.layers.0.mlp.experts"]
    starved = min(range(4), key=counts.__getitem__)
    model, _, report = _quantize(moe_dirs[arch], calib_text, "recipe=w8a8", "recipe.base.activation=static",
                                 f"recipe.rules.linears.match=class:{EXPERTS_CLASS[arch]}",
                                 f"calib.min_expert_tokens={counts[starved] + 1}")
    experts = model.model.layers[0].mlp.experts
    for tensor in (experts.gate_up_proj, experts.down_proj):
        scales = tensor.input_scale.flatten()
        others = [scales[e] for e in range(4) if e != starved]
        assert scales[starved] == max(others) and len(set(scales.tolist())) > 1
    assert any(f"experts.{starved}.down_proj saw {counts[starved]} calibration tokens" in n and
               "largest of its layer's other experts" in n for n in report.notes), report.notes
