"""Recipe validation without a model: one sentence per problem, naming the field."""

from __future__ import annotations

import pytest

from qrecipe.engine.errors import RecipeError
from qrecipe.engine.recipe import Matcher, parse_recipe

ALGOS = ("rtn", "gptq")


def recipe(**node):
    node.setdefault("base", {"scheme": "W8A16", "algorithm": "rtn"})
    return parse_recipe(node, ALGOS)


def test_rule_inherits_base_then_scheme_defaults():
    r = recipe(base={"scheme": "W4A16", "algorithm": "gptq", "symmetric": False},
               rules={"a": {"match": "x"}, "b": {"match": "y", "scheme": "W8A16"}})
    a, b = r.rules
    assert (a.policy.scheme, a.policy.algorithm, a.policy.group_size, a.policy.symmetric) == ("W4A16", "gptq", 128, False)
    assert (b.policy.scheme, b.policy.group_size) == ("W8A16", None)  # W8A16 defaults to per-channel


@pytest.mark.parametrize("text, kind, pattern", [
    ("lm_head", "exact", "lm_head"), ("re:.*mlp.*", "regex", ".*mlp.*"), ("class:Linear", "class", "Linear")])
def test_match_forms(text, kind, pattern):
    m = Matcher.parse(text, "f")
    assert (m.kind, m.pattern) == (kind, pattern)


def test_regex_is_full_match():
    m = Matcher.parse("re:mlp", "f")
    assert not m.matches("model.layers.0.mlp", ("Linear",))
    assert Matcher.parse("re:.*mlp", "f").matches("model.layers.0.mlp", ("Linear",))


def test_class_matches_own_or_ancestor_class():
    m = Matcher.parse("class:LlamaAttention", "f")
    assert m.matches("x.q_proj", ("Linear", "LlamaAttention", "LlamaDecoderLayer"))
    assert not m.matches("x.up_proj", ("Linear", "LlamaMLP"))


@pytest.mark.parametrize("node, field", [
    ({"rules": {"a": {"match": "x", "sheme": "W8A16"}}}, "recipe.rules.a.sheme: unknown key"),
    ({"rules": {"a": {"match": "x", "scheme": "W3A16"}}}, "recipe.rules.a.scheme: unknown scheme 'W3A16'"),
    ({"rules": {"a": {"match": "x", "algorithm": "magic"}}}, "recipe.rules.a.algorithm: unknown algorithm 'magic'"),
    ({"rules": {"a": {"match": "x", "scheme": "W4A16", "group_size": 100}}}, "recipe.rules.a.group_size=100"),
    ({"rules": {"a": {"match": "x", "scheme": "W4A16", "group_size": "big"}}}, "recipe.rules.a.group_size"),
    ({"rules": {"a": {"scheme": "W8A16"}}}, "recipe.rules.a.match: missing"),
    ({"rules": {"a": {"match": "re:(x"}}}, "recipe.rules.a.match: invalid regex"),
    ({"rules": {"a": {"match": "x", "scheme": "W8A8", "symmetric": False}}}, "recipe.rules.a.symmetric=false"),
    ({"rules": {"a": {"match": "x", "scheme": "W8A8", "activation": "sometimes"}}}, "recipe.rules.a.activation"),
    ({"rules": {"a": {"match": "x", "requires": "tensor-magic"}}}, "recipe.rules.a.requires: unknown capability"),
    ({"rules": {"a": {"match": "x", "fallback": "W8A16"}}}, "recipe.rules.a.fallback: falls back to its own"),
    ({"rules": {"a": "W8A16"}}, "recipe.rules.a: expected a mapping"),
    ({"rules": {}, "overlap": "sometimes"}, "recipe.overlap"),
    ({"rules": {}, "ignore": "lm_head"}, "recipe.ignore: expected a list"),
    ({"rules": {}, "colour": "red"}, "recipe.colour: unknown key"),
    ({"rules": {}, "base": {"match": "x", "scheme": "W8A16"}}, "recipe.base.match"),
])
def test_validation_errors_name_the_field(node, field):
    with pytest.raises(RecipeError) as e:
        recipe(**node)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_scheme_everywhere():
    with pytest.raises(RecipeError, match=r"recipe.rules.a.scheme: not set here nor in recipe.base"):
        parse_recipe({"base": {}, "rules": {"a": {"match": "x"}}}, ALGOS)


def test_group_size_channel_forms():
    r = recipe(rules={"a": {"match": "x", "scheme": "W4A16", "group_size": "channel"},
                      "b": {"match": "y", "scheme": "W4A16", "group_size": -1}})
    assert [x.policy.group_size for x in r.rules] == [None, None]


@pytest.mark.parametrize("node, message", [
    ({"base": {"scheme": "W4A16", "activation": "static"}, "rules": {"l": {"match": "x"}}},
     "recipe.base.activation: ignored by every rule that inherits it (l): W4A16 keeps activations in float"),
    ({"base": {"scheme": "W4A16"}, "rules": {"l": {"match": "x", "activation": "dynamic"}}},
     "recipe.rules.l.activation: W4A16 keeps activations in float"),
    ({"base": {"scheme": "W8A16", "fallback": "W4A16"}, "rules": {"l": {"match": "x"}}},
     "recipe.base.fallback: ignored by every rule that inherits it (l): W8A16 asks nothing of the target"),
    ({"base": {"scheme": "W8A16"}, "rules": {"l": {"match": "x", "scheme": "BF16", "group_size": 64}}},
     "recipe.rules.l.group_size: BF16 keeps the layer in float"),
])
def test_a_field_the_scheme_ignores_is_an_error(node, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe(node, ALGOS)
    assert str(e.value).startswith(message) and str(e.value).endswith("remove it")


def test_a_base_field_some_heir_uses_is_fine():
    r = parse_recipe({"base": {"scheme": "W8A8", "activation": "static", "requires": ["int8"], "fallback": "W8A16"},
                      "rules": {"l": {"match": "x"}, "m": {"match": "y", "scheme": "W4A16"}}}, ALGOS)
    assert [x.policy.activation for x in r.rules] == ["static", "none"]


@pytest.mark.parametrize("name", ["../../../../tmp/x", "a/b", "..", "a..b", ".hidden", "-x", "x" * 65, "a b", "é"])
def test_a_recipe_name_is_a_name_not_a_path(name):
    with pytest.raises(RecipeError, match=r"recipe.name: .* is not a recipe name \(1 to 64 letters, digits"):
        parse_recipe({"name": name, "base": {"scheme": "W8A16"}, "rules": {"l": {"match": "x"}}}, ALGOS)


@pytest.mark.parametrize("name", ["w4a16", "My_Recipe-2.1", "x" * 64, "7"])
def test_plain_recipe_names_pass(name):
    assert parse_recipe({"name": name, "base": {"scheme": "W8A16"}, "rules": {"l": {"match": "x"}}}, ALGOS).name == name


@pytest.mark.parametrize("rules", [{}, None])
def test_a_recipe_without_rules_is_an_error(rules):
    with pytest.raises(RecipeError, match=r"^recipe.rules: none, so no layer would be quantized; add a rule"):
        parse_recipe({"base": {"scheme": "W8A16"}, "rules": rules}, ALGOS)
