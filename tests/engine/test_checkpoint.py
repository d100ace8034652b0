"""save -> load gives identical logits, for every scheme and a mixed recipe."""

from __future__ import annotations

import pytest
import torch

from qrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from qrecipe.engine.errors import QRecipeError
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quantize import prepare_model, quantize_model

RECIPES = [("recipe=w8a16",), ("recipe=w4a16", "recipe.base.symmetric=false"), ("recipe=w8a8",),
           ("recipe=fp8", "target=h100"), ("recipe=mixed", "recipe.rules.mlp.group_size=64"),
           ("recipe=w8a16", "recipe.tied_embeddings=quantize")]


@pytest.mark.parametrize("overrides", RECIPES, ids=lambda o: " ".join(o))
def test_save_load_identical_logits(overrides, settings, fresh_tiny_model, tmp_path):
    model, tok = fresh_tiny_model
    plan, _ = build_plan(settings("model=tinystories-656k", "run.device=cpu", *overrides))
    quantize_model(model, plan, progress=False)
    prepare_model(model)
    ids = torch.tensor([tok("Once upon a time, there was a little dog.")["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
    save_checkpoint(model, tok, plan, tmp_path / "ckpt")
    loaded, _, meta = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(ids).logits
    assert torch.equal(before, after)
    assert meta["plan_hash"] == plan.plan_hash
    assert len(meta["layers"]) == len(plan.quantized())


def test_tied_embeddings_are_stored_once(settings, fresh_tiny_model, tmp_path):
    from safetensors import safe_open

    model, tok = fresh_tiny_model
    plan, _ = build_plan(settings("model=tinystories-656k", "recipe=w8a16"))
    quantize_model(model, plan, progress=False)
    save_checkpoint(model, tok, plan, tmp_path / "ckpt")
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != ("model.embed_tokens.weight" in keys)


def test_loading_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(QRecipeError, match="qrecipe_quant.json"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_has_the_modes_of_plain_files(settings, fresh_tiny_model, tmp_path):
    """safetensors alone writes model.safetensors 0600: a serving account could not read it."""
    from qrecipe.engine.files import current_umask

    model, tok = fresh_tiny_model
    plan, _ = build_plan(settings("recipe=w8a16", "model=tinystories-656k", "run.device=cpu"))
    quantize_model(model, plan, progress=False)
    save_checkpoint(model, tok, plan, tmp_path / "ckpt")
    mask = current_umask()
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ckpt").iterdir()} == \
        {p.name: 0o666 & ~mask for p in (tmp_path / "ckpt").iterdir()}
