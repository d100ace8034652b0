"""A model served by torch's packed CPU kernels (bf16 activations) saves the checkpoint layout and loads back to
identical logits (the kernels' own layouts are runtime buffers, rebuilt on load)."""

from __future__ import annotations

import torch

from qrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from qrecipe.engine.config import compose, load_settings
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quantize import prepare_model, quantize_model


def test_save_load_gives_identical_logits(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = load_settings(compose(["model=tinystories-656k", "recipe=mixed", "recipe.rules.mlp.group_size=64",
                                      "target=cpu", "run.device=cpu", "model.dtype=bfloat16"]))
    plan, _ = build_plan(settings, torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    quantize_model(model, plan, progress=False)
    backends = set(prepare_model(model).values())
    assert {"cpu-int4pack", "cpu-int8pack"} <= backends, backends
    ids = torch.arange(1, 33).reshape(1, 32)
    with torch.no_grad():
        before = model(ids).logits
    save_checkpoint(model, AutoTokenizer.from_pretrained(tiny_model_dir), plan, tmp_path / "ckpt")
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(ids).logits
    assert torch.equal(before, after)
