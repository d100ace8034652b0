"""Plans of mixture-of-experts models: expert tensors are units, the router is kept, totals
name what stays in float, and the capacity section counts the bytes a decoded token reads.

Qwen3-30B-A3B and Mixtral-8x7B are planned from their real config.json (tests/fixtures/moe/,
no weights) on the meta device; rule matching is checked on the tiny Qwen3-MoE config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qrecipe.engine.errors import RecipeError
from qrecipe.engine.plan import Plan
from qrecipe.engine.plan.render import render_plan
from qrecipe.engine.planning import build_plan

FIXTURES = Path(__file__).parents[2] / "fixtures" / "moe"
QWEN3_30B, MIXTRAL_8X7B, TINY = FIXTURES / "qwen3-30b-a3b", FIXTURES / "mixtral-8x7b", FIXTURES / "qwen3-moe-tiny"
EXPERTS = "model.layers.0.mlp.experts"


def plan_for(settings, folder, *overrides) -> Plan:
    return build_plan(settings("model=hf", f"model.path={folder}", "target=h100", "run.device=cpu", *overrides))[0]


@pytest.fixture(scope="module")
def qwen3_30b():
    from conftest import settings_for

    return build_plan(settings_for("recipe=w4a16", "model=hf", f"model.path={QWEN3_30B}", "target=h100",
                                   "run.device=cpu"))


@pytest.mark.parametrize("folder, layers, experts, top_k, gate_up, down, vocab, bf16_gib", [
    (QWEN3_30B, 48, 128, 8, (1536, 2048), (2048, 768), 151936, 56.87),
    (MIXTRAL_8X7B, 32, 8, 2, (28672, 4096), (4096, 14336), 32000, 86.99),
])
def test_w4a16_g128_quantizes_the_experts_and_shrinks_the_weights_about_3_5x(settings, folder, layers, experts,
                                                                            top_k, gate_up, down, vocab, bf16_gib):
    plan = plan_for(settings, folder, "recipe=w4a16")
    units = [lp for lp in plan.layers if lp.kind == "experts"]
    assert len(units) == 2 * layers and all(lp.status == "quantized" and lp.scheme == "W4A16" for lp in units)
    gu = plan.layer(f"{EXPERTS}.gate_up_proj")
    assert (gu.num_experts, gu.out_features, gu.in_features) == (experts, *gate_up)
    assert (gu.scheme, gu.group_size, gu.module_class) == ("W4A16", 128, gu.module_class)
    dn = plan.layer(f"{EXPERTS}.down_proj")
    assert (dn.num_experts, dn.out_features, dn.in_features) == (experts, *down)
    # bytes are per expert: codes and one fp16 scale per group of 128, times the experts
    assert gu.bytes_before == experts * gate_up[0] * gate_up[1] * 2
    assert gu.bytes_after == experts * (gate_up[0] * gate_up[1] // 2 + gate_up[0] * gate_up[1] // 128 * 2)
    t = plan.totals()
    assert abs(t["weight_bytes_before"] / 2**30 - bf16_gib) < 0.01
    assert 3.4 <= t["ratio"] <= 3.9  # 4.125 bits per quantized weight; embeddings and routers stay 16-bit
    routers = [lp for lp in plan.layers if lp.kind == "router"]
    assert len(routers) == layers and all(lp.status == "kept" and "router" in lp.reason for lp in routers)
    assert t["float_bytes"]["routers"] == layers * experts * gate_up[1] * 2
    # a decoded token reads top_k of the experts, and every dense weight but the input embedding table
    dense = sum(lp.bytes_after for lp in plan.layers if lp.kind != "experts")
    active = sum(lp.bytes_after for lp in units) * top_k / experts
    norms = plan.other_bytes - vocab * gate_up[1] * 2  # the untied input embedding table is read one row a token
    assert abs(plan.capacity["decode_bytes_per_token_after"] - (norms + dense + active)) < 1024
    assert plan.capacity["decode_bytes_per_token_before"] / plan.capacity["decode_bytes_per_token_after"] > 3


def test_the_table_folds_expert_rows_and_names_what_stays_in_float(qwen3_30b):
    plan, _ = qwen3_30b
    text = render_plan(plan)
    row = next(line for line in text.splitlines() if line.startswith("model.layers.{0-47}.mlp.experts.gate_up_proj"))
    assert " x48 " in row and "128 x 1536 x 2048" in row and "W4A16 g128" in row and "quantized" in row
    router = next(line for line in text.splitlines() if line.startswith("model.layers.{0-47}.mlp.gate x48"))
    assert "kept" in router and "MoE router" in router and "BF16" in router
    assert "in bfloat16: embeddings and norms 593.90 MiB, routers 24.00 MiB stay" in text
    assert "weight bytes read per decoded token (batch 1, active experts only): 5.67 GiB -> 1.48 GiB" in text
    assert "embeddings and norms 54" not in text  # the mislabel: experts counted as embeddings


def test_expert_units_are_hashed_with_their_kind_and_round_trip(qwen3_30b):
    plan, _ = qwen3_30b
    again = Plan.from_dict(plan.to_dict())
    assert again.plan_hash == plan.plan_hash and again.layer(f"{EXPERTS}.down_proj").num_experts == 128


@pytest.mark.parametrize("rules, layer1", [
    ((f"recipe.rules.linears.match={EXPERTS}.gate_up_proj", f"+recipe.rules.down.match={EXPERTS}.down_proj"), "kept"),
    (('recipe.rules.linears.match="re:.*experts\\.(gate_up|down)_proj"',), "quantized"),
    (("recipe.rules.linears.match=class:Qwen3MoeExperts",), "quantized"),
    (("recipe.rules.linears.match=class:Qwen3MoeSparseMoeBlock",), "quantized"),
], ids=["name", "regex", "class", "parent-class"])
def test_rules_target_expert_tensors_by_name_regex_and_class(settings, rules, layer1):
    plan = plan_for(settings, TINY, "recipe=w8a16", *rules)
    assert {plan.layer(f"{EXPERTS}.{t}").status for t in ("gate_up_proj", "down_proj")} == {"quantized"}
    assert plan.layer("model.layers.1.mlp.experts.down_proj").status == layer1
    assert plan.layer("model.layers.0.self_attn.q_proj").status == "kept"
    assert plan.layer("model.layers.0.mlp.gate").status == "kept"  # class:Qwen3MoeSparseMoeBlock holds it too


def test_the_experts_of_one_layer_take_one_scheme(settings):
    with pytest.raises(RecipeError, match=r"model.layers.0.mlp.experts.\{gate_up_proj, down_proj\} are fused into one "
                                          r"fused MoE layer .*vLLM's FusedMoE.* get different schemes"):
        plan_for(settings, TINY, "recipe=w4a16", "+recipe.rules.down.match=re:.*experts\\.down_proj",
                 "+recipe.rules.down.scheme=W8A16")


def test_a_rule_naming_only_the_router_is_refused(settings):
    with pytest.raises(RecipeError, match=r"recipe.rules.linears.match: 'model.layers.0.mlp.gate' matches only MoE "
                                          r"routers .*which qrecipe keeps in float"):
        plan_for(settings, TINY, "recipe=w8a16", "recipe.rules.linears.match=model.layers.0.mlp.gate")


def test_ignore_skips_expert_tensors(settings):
    plan = plan_for(settings, TINY, "recipe=w8a16", "recipe.ignore=[re:.*experts.*]")
    assert {plan.layer(f"{EXPERTS}.{t}").status for t in ("gate_up_proj", "down_proj")} == {"skipped"}
    assert plan.totals()["float_bytes"]["kept_layers"] == 2 * 4 * 3 * 128 * 384 * 2  # layers x E x (gate, up, down) x bf16
