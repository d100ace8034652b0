"""Precedence, as stated in engine/plan/resolve.py, checked as a table.

ignore > tied lm_head > exact name > regex (full match) > class; in a tier the first rule in
composed order wins; same-tier overlaps with different policies are an error unless
overlap=first_match.
"""

from __future__ import annotations

import pytest

from qrecipe.engine.errors import RecipeError
from qrecipe.engine.plan import resolve_plan
from qrecipe.engine.recipe import parse_recipe
from qrecipe.engine.targets import parse_target

Q = "model.layers.0.self_attn.q_proj"
# o_proj is fused with nothing, so a rule may give it any scheme on its own.
O = "model.layers.0.self_attn.o_proj"
CPU = parse_target({"name": "cpu", "device": "cpu", "capabilities": ["int8"], "dtype": "float32", "memory_gib": 16})

# (rules in written order, ignore, layer, expected (status, rule, scheme))
TABLE = [
    # exact beats regex beats class, whatever the written order
    ({"c": ("class:Linear", "W8A16"), "r": ("re:.*o_proj", "W4A16"), "e": (O, "W8A16")}, [], O, ("quantized", "e")),
    ({"c": ("class:Linear", "W8A16"), "r": ("re:.*o_proj", "W4A16")}, [], O, ("quantized", "r")),
    ({"c": ("class:LlamaAttention", "W4A16")}, [], O, ("quantized", "c")),
    # ignore beats an exact rule
    ({"e": (O, "W8A16")}, [O], O, ("skipped", None)),
    ({"c": ("class:Linear", "W8A16")}, ["re:.*self_attn.*"], O, ("skipped", None)),
    # no rule: kept
    ({"r": ("re:.*mlp.*", "W8A16")}, [], O, ("kept", None)),
    # same tier, same policy: first written wins, no error
    ({"a": ("re:.*o_proj", "W8A16"), "b": ("re:.*_proj", "W8A16")}, [], O, ("quantized", "a")),
    # BF16 keeps the layer
    ({"a": ("class:Linear", "W8A16"), "b": ("re:.*o_proj", "BF16")}, [], "model.layers.0.mlp.up_proj",
     ("quantized", "a")),
]


def _recipe(rules, ignore=(), **extra):
    node = {"base": {"scheme": "W8A16", "algorithm": "rtn", "group_size": 64},
            "rules": {n: {"match": m, "scheme": s} for n, (m, s) in rules.items()},
            "ignore": list(ignore), **extra}
    return parse_recipe(node, ("rtn",))


@pytest.mark.parametrize("rules, ignore, layer, expected", TABLE)
def test_precedence_table(rules, ignore, layer, expected, tiny_info):
    plan = resolve_plan(_recipe(rules, ignore), tiny_info, CPU)
    lp = plan.layer(layer)
    assert (lp.status, lp.rule) == expected


def test_bf16_rule_keeps_the_layer_it_wins(tiny_info):
    # q/k/v all kept so the fused group stays consistent.
    plan = resolve_plan(_recipe({"a": ("class:Linear", "W8A16"), "b": ("re:.*self_attn\\.(q|k|v)_proj", "BF16")}),
                        tiny_info, CPU)
    assert (plan.layer(Q).status, plan.layer(Q).scheme, plan.layer(Q).rule) == ("kept", "BF16", "b")


def test_same_tier_overlap_with_different_policies_is_an_error(tiny_info):
    rules = {"a": ("re:.*self_attn.*", "W8A16"), "b": ("re:.*_proj", "W4A16")}
    with pytest.raises(RecipeError, match=r"recipe.rules.a and recipe.rules.b both match .*recipe.overlap=first_match"):
        resolve_plan(_recipe(rules), tiny_info, CPU)


def test_first_match_lets_the_earlier_rule_win(tiny_info):
    rules = {"a": ("re:.*self_attn.*", "W8A16"), "b": ("re:.*_proj", "W4A16")}
    plan = resolve_plan(_recipe(rules, overlap="first_match"), tiny_info, CPU)
    assert plan.layer(Q).rule == "a" and plan.layer("model.layers.0.mlp.up_proj").rule == "b"
    assert plan.layer(Q).scheme == "W8A16" and plan.layer("model.layers.0.mlp.up_proj").scheme == "W4A16"


def test_command_line_rules_come_after_recipe_rules(settings, tiny_info):
    # Both regexes match q_proj with the same tier; the recipe's rule comes first in order.
    s = settings("recipe=mixed", "model=tinystories-656k", "recipe.overlap=first_match",
                 "+recipe.rules.late.match=re:.*q_proj", "+recipe.rules.late.scheme=W4A16")
    plan = resolve_plan(s.recipe, tiny_info, CPU)
    assert plan.layer(Q).rule == "attn"
