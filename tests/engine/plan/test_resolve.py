"""Plan resolution against a model's structure and a target: validation errors, gating,
tied embeddings, bytes, capacity, and a 70B plan from config.json alone."""

from __future__ import annotations

import json

import pytest

from qrecipe.engine.errors import RecipeError
from qrecipe.engine.plan import Plan, resolve_plan
from qrecipe.engine.planning import build_plan


def plan_for(settings, *overrides):
    return build_plan(settings(*overrides))[0]


def test_group_128_on_smollm2_shape_lists_layers_and_working_sizes(settings, smollm2_shaped):
    with pytest.raises(RecipeError) as e:
        plan_for(settings, "recipe=w4a16", "model=hf", f"model.path={smollm2_shaped}", "target=h100")
    msg = str(e.value)
    assert "recipe.base" in msg and "group_size=128" in msg and "in_features=576" in msg
    assert "group sizes that work for all of them: 32, 64, channel" in msg


def test_group_64_works_on_smollm2_shape(settings, smollm2_shaped):
    plan = plan_for(settings, "recipe=w4a16", "recipe.base.group_size=64", "model=hf",
                    f"model.path={smollm2_shaped}", "target=h100")
    assert len(plan.quantized()) == 30 * 7
    assert {lp.group_size for lp in plan.quantized()} == {64}


def test_rule_matching_no_layer(settings):
    with pytest.raises(RecipeError, match=r"recipe.rules.x.match: 're:.*attention.*' matches no linear layer"):
        plan_for(settings, "model=tinystories-656k", "+recipe.rules.x.match=re:.*attention.*")


def test_fused_shards_with_different_schemes(settings):
    with pytest.raises(RecipeError) as e:
        plan_for(settings, "recipe=w8a16", "model=tinystories-656k", "+recipe.rules.q.match=re:.*q_proj",
                 "+recipe.rules.q.scheme=W4A16", "+recipe.rules.q.group_size=64")
    assert "{q_proj, k_proj, v_proj} are fused" in str(e.value) and "give them one scheme" in str(e.value)


def test_gate_up_fused_too(settings):
    with pytest.raises(RecipeError, match=r"gate_proj, up_proj\} are fused"):
        plan_for(settings, "recipe=w8a16", "model=tinystories-656k", "recipe.ignore=[re:.*gate_proj]")


def test_tied_lm_head_is_kept_with_the_reason(settings):
    plan = plan_for(settings, "recipe=w8a16", "model=tinystories-656k")
    head = plan.layer("lm_head")
    assert head.status == "kept" and "tied to the input embeddings" in head.reason
    assert head.bytes_before == head.bytes_after == 0  # it shares the embedding's bytes


def test_tied_lm_head_can_be_quantized_on_request(settings):
    plan = plan_for(settings, "recipe=w8a16", "model=tinystories-656k", "recipe.tied_embeddings=quantize")
    head = plan.layer("lm_head")
    assert head.status == "quantized" and head.bytes_after > 0


def test_fp8_falls_back_where_the_target_lacks_it(settings):
    a100 = plan_for(settings, "recipe=fp8", "model=tinystories-656k", "target=a100")
    assert {lp.status for lp in a100.quantized()} == {"fallback"}
    assert {lp.scheme for lp in a100.quantized()} == {"W8A16"}
    assert "lacks fp8" in a100.quantized()[0].reason


@pytest.mark.parametrize("recipe, fallback, changes", [
    (["recipe=fp8"], "W8A16", "dynamic activations -> float"),
    (["recipe=w4a16", "recipe.base.group_size=64", "recipe.base.symmetric=false", "+recipe.base.requires=[fp8]"],
     "W8A8", "group size 64 -> channel, asymmetric -> symmetric, float activations -> dynamic"),
    (["recipe=w4a16", "recipe.base.group_size=64", "+recipe.base.requires=[fp8]"], "W8A16", None),  # g64 fits
])
def test_what_a_fallback_scheme_changes_is_in_the_reason(settings, recipe, fallback, changes):
    plan = plan_for(settings, *recipe, f"recipe.base.fallback={fallback}", "model=tinystories-656k", "target=a100")
    reasons = {lp.reason for lp in plan.quantized()}
    lacks = f"rule linears: target a100 lacks fp8, so {fallback} instead of "
    assert len(reasons) == 1 and next(iter(reasons)).startswith(lacks)
    assert next(iter(reasons)).endswith(f"({changes}, as {fallback} takes)" if changes else "W4A16")


def test_fp8_is_emulated_on_this_cpu_for_an_h100_target(settings):
    h100 = plan_for(settings, "recipe=fp8", "model=tinystories-656k", "target=h100", "run.device=cpu")
    layers = h100.quantized()
    assert {lp.scheme for lp in layers} == {"FP8"} and {lp.status for lp in layers} == {"quantized"}
    assert all(lp.emulated and lp.backend == "emulated" for lp in layers)
    assert any("emulated" in n for n in h100.notes)


def test_capability_without_fallback_is_an_error(settings):
    with pytest.raises(RecipeError, match=r"FP8 needs fp8, which target a100 lacks; add recipe.rules.linears.fallback"):
        plan_for(settings, "recipe=fp8", "model=tinystories-656k", "target=a100", "~recipe.base.fallback")


def test_bytes_and_totals_follow_the_packed_formats(settings):
    plan = plan_for(settings, "recipe=w4a16", "recipe.base.group_size=64", "model=tinystories-656k", "target=h100")
    q = plan.layer("model.layers.0.self_attn.q_proj")  # 128 x 128, bf16 target
    assert q.bytes_before == 128 * 128 * 2
    assert q.bytes_after == 128 * 64 + 128 * 2 * 2  # int4 codes + fp16 scales, 2 groups per row
    t = plan.totals()
    assert t["weight_bytes_before"] == plan.other_bytes + sum(lp.bytes_before for lp in plan.layers)
    assert t["ratio"] > 1


def test_plan_json_round_trips_and_hash_ignores_the_backend(settings):
    plan = plan_for(settings, "recipe=mixed", "recipe.rules.mlp.group_size=64", "model=tinystories-656k")
    d = json.loads(plan.to_json())
    assert {"name", "scheme", "status", "reason", "bytes_before", "bytes_after"} <= set(d["layers"][0])
    assert d["totals"]["weight_bytes_after"] < d["totals"]["weight_bytes_before"]
    again = Plan.from_dict(d)
    assert again.plan_hash == plan.plan_hash
    for lp in again.layers:
        lp.backend = "something-else"
    assert again.plan_hash == plan.plan_hash


def test_70b_plan_from_config_alone(settings, llama70b_shaped):
    plan = plan_for(settings, "recipe=w4a16", "model=hf", f"model.path={llama70b_shaped}", "target=h100")
    assert len(plan.layers) == 80 * 7 + 1
    c = plan.capacity
    # 70B in bf16 (~131 GiB) needs 2+ H100s; at 4 bits it fits on one.
    assert c["fits_one_device_before"] is False and c["min_tp_before"] == 2
    assert c["fits_one_device_after"] is True and c["kv_cache_tokens_after"] > 0
    assert c["kv_cache_tokens_after_at_tp_before"] > c["kv_cache_tokens_before"]


def test_tp_degree_respects_head_divisibility():
    from qrecipe.engine.plan.capacity import tp_divides_heads
    from qrecipe.engine.models.describe import ModelInfo

    info = ModelInfo("m", "llama", 30, 576, 9, 3, 64, 1000, (), None, 0, ())
    assert [tp for tp in (1, 2, 3, 4, 8) if tp_divides_heads(tp, info)] == [1, 3]


def test_an_unlisted_model_type_says_which_fused_shards_were_assumed(settings, tmp_path):
    from transformers import GraniteConfig

    GraniteConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256).save_pretrained(tmp_path)
    plan = plan_for(settings, "model=hf", f"model.path={tmp_path}", "target=h100")
    [note] = [n for n in plan.notes if "FUSED_SHARDS" in n]
    assert note.startswith("model type 'granite' is not in engine/models/families.py FUSED_SHARDS: assumed")
    assert {lp.fused_group for lp in plan.layers if lp.name.endswith("q_proj")} == {
        "model.layers.0.self_attn.q_proj+k_proj+v_proj"}
