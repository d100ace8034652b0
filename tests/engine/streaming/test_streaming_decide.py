"""run.streaming: in memory or streamed, decided before any weight is read, with its reason and
its estimated peak memory in the plan; a table of cases on real model structures (meta device)."""

from __future__ import annotations

import pytest
import torch

from qrecipe.engine.errors import ConfigError
from qrecipe.engine.planning import build_plan
from qrecipe.engine.streaming.decide import execution_plan

GIB = 2**30


@pytest.mark.parametrize("setting, free_gib, mode, reason", [
    ("auto", 16, "in-memory", "which fits in 16.00 GiB free on cpu"),
    ("auto", 0.001, "streamed", "more than 90% of 1.02 MiB free on cpu"),
    ("always", 16, "streamed", "run.streaming=always"),
    ("never", 0.001, "in-memory", "run.streaming=never"),
])
def test_mode_follows_the_setting_and_the_free_memory(settings, setting, free_gib, mode, reason):
    s = settings("model=tinystories-656k", "recipe=gptq", f"run.streaming={setting}")
    plan, info = build_plan(s, torch.device("cpu"))
    x = execution_plan(s, plan, info, torch.device("cpu"), torch.float32, free_bytes=int(free_gib * GIB))
    assert x["mode"] == mode and reason in x["reason"]
    assert 0 < x["peak_device_bytes"] and 0 < x["peak_host_bytes"]


def test_plan_output_says_which_mode_and_why(settings):
    from qrecipe.engine.plan.render import render_plan

    plan, _ = build_plan(settings("model=tinystories-656k", "run.streaming=always"), torch.device("cpu"))
    text = render_plan(plan)
    assert "execution: streamed (run.streaming=always)" in text and "estimated peak: device" in text
    assert plan.to_dict()["execution"]["mode"] == "streamed"


def test_a_70b_streams_in_the_memory_of_one_block(tmp_path, settings):
    """Llama-3-70B's structure (plan conftest): 140 GB of bf16 weights, one block ~1.7 GB."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("plan_shapes", Path(__file__).parents[1] / "plan" / "conftest.py")
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    shapes.write_llama_config(tmp_path / "70b", **shapes.LLAMA_70B_SHAPE)
    s = settings("model=hf", f"model.path={tmp_path / '70b'}", "recipe=gptq", "model.dtype=bfloat16",
                 "target=h100", "calib.samples=64", "calib.seq_len=2048")
    plan, info = build_plan(s, torch.device("cpu"))
    x = execution_plan(s, plan, info, torch.device("cuda"), torch.bfloat16, free_bytes=80 * GIB)
    t = x["terms"]
    assert x["mode"] == "streamed" and t["float_weights"] > 130 * GIB
    assert 1.5 * GIB < t["largest_block"] < 2 * GIB  # 8192 x (2 x 8192 + 2 x 1024 + 3 x 28672) x 2 bytes
    # a block, its Hessians (down_proj: 28672^2 float32 = 3.1 GiB, and GPTQ's factor copies) and one
    # batch: a fraction of the model
    assert x["peak_device_bytes"] < 0.2 * t["float_weights"]
    assert t["calibration_activations"] == 64 * 2048 * 8192 * 2


def test_streaming_refused_for_a_model_it_cannot_stream(settings, tmp_path):
    import json

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
        "vocab_size": 128, "n_positions": 64}))
    with pytest.raises(ConfigError, match=r"run.streaming: model type 'gpt2' .* cannot stream; set run.streaming"):
        build_plan(settings("model=hf", f"model.path={tmp_path / 'm'}", "recipe=w8a16", "run.streaming=always"),
                   torch.device("cpu"))


def test_bad_streaming_setting_is_refused_early(settings):
    with pytest.raises(ConfigError, match="run.streaming: expected auto, always or never, got 'sometimes'"):
        settings("run.streaming=sometimes")


@pytest.mark.parametrize("timing", ["interleaved", "sequential"])
def test_a_timing_that_needs_the_baseline_is_refused_before_a_streamed_run_starts(timing, tmp_path):
    """A streamed baseline is not timed, so eval.speed.timing=interleaved|sequential cannot be
    honoured: one sentence naming the field and the fix, before any weight is read or folder made."""
    from conftest import TINY_RUN, compose_cfg
    from qrecipe.engine.run import run

    cfg = compose_cfg(*TINY_RUN, "run.streaming=always", f"eval.speed.timing={timing}",
                      f"paths.root={tmp_path / 'root'}", f"run.resume_dir={tmp_path / 'resume'}")
    with pytest.raises(ConfigError, match=f"eval.speed.timing={timing}: this run streams its float model from disk "
                                          r"\(run.streaming=always\), so its baseline cannot be timed; set "
                                          "eval.speed.timing=auto"):
        run(cfg, progress=False)
    assert not (tmp_path / "root" / "runs").exists() and not (tmp_path / "resume").exists()


def test_a_moe_model_is_estimated_with_all_its_experts(settings, tmp_path):
    """Qwen3-30B-A3B's structure (tests/fixtures/moe; 2 of its 48 layers, to keep it quick): the
    float weights and the largest block count every expert (128 per layer) and the router, as
    the model's own parameters do; its GPTQ statistics a Gram matrix per expert and input."""
    import json
    from pathlib import Path

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((Path(__file__).parents[2] / "fixtures" / "moe" / "qwen3-30b-a3b" / "config.json").read_text())
    folder = tmp_path / "qwen3-30b-a3b-2-layers"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    params = sum(p.numel() for p in model.parameters())  # tied tensors once
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    s = settings("model=hf", f"model.path={folder}", "recipe=gptq", "model.dtype=bfloat16", "calib.samples=8",
                 "calib.seq_len=512")
    plan, info = build_plan(s, torch.device("cpu"))
    t = execution_plan(s, plan, info, torch.device("cuda"), torch.bfloat16, free_bytes=80 * GIB)["terms"]
    assert abs(t["float_weights"] - 2 * params) < 1e-4 * 2 * params, (t["float_weights"], 2 * params)
    assert abs(t["largest_block"] - 2 * block) < 1e-3 * 2 * block, (t["largest_block"], 2 * block)
    h, i, e = 2048, 768, 128  # per expert: gate_up reads h, down reads i; attention: q/k/v share one, o_proj
    assert t["calibration_stats"] >= 4 * (e * (h * h + i * i) + h * h + 4096 * 4096)


def test_auto_runs_a_model_it_cannot_stream_in_memory_and_says_why(settings, tmp_path):
    import json

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
        "vocab_size": 128, "n_positions": 64}))
    s = settings("model=hf", f"model.path={tmp_path / 'm'}", "recipe=w8a16")
    plan, info = build_plan(s, torch.device("cpu"))
    x = execution_plan(s, plan, info, torch.device("cpu"), torch.float32, free_bytes=1024)
    assert x["mode"] == "in-memory"
    assert "but model type 'gpt2' cannot stream (engine/models/families.py FINAL_NORMS); running in memory" in x["reason"]
