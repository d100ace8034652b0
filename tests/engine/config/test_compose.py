"""Recipes form the Hydra group `recipe`; every override form a user will type works."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qrecipe.engine.config import available_recipes, expand_sweep
from qrecipe.engine.errors import ConfigError, QRecipeError

SHIPPED = ["fp8", "mixed", "w4a16", "w8a16", "w8a8"]


def test_shipped_recipes_are_available():
    assert set(SHIPPED) <= set(available_recipes())


@pytest.mark.parametrize("name", available_recipes())
def test_every_recipe_composes_and_validates(name, settings):
    s = settings(f"recipe={name}", "model=tinystories-656k")
    assert s.recipe.name == name
    assert s.recipe.rules, "a shipped recipe has at least one rule"
    raw = s.raw.recipe
    assert raw.base.algorithm and "group_size" in raw.base  # recipes set algorithm and group size in base


def test_recipe_group_is_a_mapping_not_a_string(compose):
    # The trap: a search path entry at the repo root makes the group `recipes`, and then
    # recipe=w8a16 silently becomes the string "w8a16".
    cfg = compose("recipe=w4a16")
    assert OmegaConf.is_dict(cfg.recipe)
    assert cfg.recipe.base.scheme == "W4A16"


def test_unknown_recipe_lists_the_available_ones(compose):
    with pytest.raises(ConfigError) as e:
        compose("recipe=nope")
    msg = str(e.value)
    assert "nope" in msg and all(r in msg for r in SHIPPED)
    assert "\n" not in msg


def test_recipe_extends_another_through_its_defaults(tmp_path, monkeypatch, settings):
    (tmp_path / "child.yaml").write_text(
        "defaults:\n  - mixed\n  - _self_\nname: child\nrules:\n  mlp:\n    group_size: 64\n"
        "  head:\n    match: lm_head\n    scheme: W8A16\n")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", str(tmp_path))
    s = settings("recipe=child", "model=tinystories-656k")
    rules = {r.name: r for r in s.recipe.rules}
    assert list(rules) == ["attn", "mlp", "head"]  # parent's rules first, then the child's new ones
    assert rules["mlp"].policy.group_size == 64  # child overrides a parent field
    assert rules["attn"].policy.scheme == "W8A16"  # inherited untouched


def test_plain_override_of_a_field_the_rule_inherits(settings):
    # mixed's mlp rule does not spell out group_size: it inherits 128 from base.
    s = settings("recipe=mixed", "recipe.rules.mlp.group_size=64")
    assert {r.name: r.policy.group_size for r in s.recipe.rules}["mlp"] == 64


def test_base_algorithm_switches_the_whole_recipe(compose):
    cfg = compose("recipe=mixed", "recipe.base.algorithm=gptq")
    assert cfg.recipe.base.algorithm == "gptq"
    assert "algorithm" not in cfg.recipe.rules.mlp  # rules inherit it from base


def test_rule_scheme_override(settings):
    s = settings("recipe=mixed", "recipe.rules.attn.scheme=W4A16", "recipe.rules.attn.group_size=64")
    attn = next(r for r in s.recipe.rules if r.name == "attn")
    assert (attn.policy.scheme, attn.policy.group_size) == ("W4A16", 64)


def test_delete_and_add_rules_from_the_command_line(settings):
    s = settings("recipe=mixed", "~recipe.rules.attn", "+recipe.rules.q.match=re:.*q_proj",
                 "+recipe.rules.q.scheme=W8A16")
    assert [r.name for r in s.recipe.rules] == ["mlp", "q"]
    q = s.recipe.rules[1]
    assert q.match.kind == "regex" and q.match.pattern == ".*q_proj" and q.policy.scheme == "W8A16"


def test_quoted_regex_with_special_characters(settings):
    s = settings("recipe=w8a16", r'+recipe.rules.attn.match="re:.*self_attn\.(q|k|v)_proj"',
                 "+recipe.rules.attn.scheme=W4A16", "+recipe.rules.attn.group_size=64")
    attn = next(r for r in s.recipe.rules if r.name == "attn")
    assert attn.match.pattern == r".*self_attn\.(q|k|v)_proj"


def test_string_where_a_mapping_belongs_names_the_fix(settings):
    with pytest.raises(ConfigError) as e:
        settings("eval.data=text")
    assert "eval.data" in str(e.value) and "data@eval.data=" in str(e.value)


def test_an_unknown_calibration_precision_names_the_choices(settings):
    assert settings().calib.precision == "float32"
    assert settings("calib.precision=bfloat16").calib.precision == "bfloat16"
    with pytest.raises(ConfigError, match=r"^calib\.precision: expected float32 or bfloat16, got 'float16'$"):
        settings("calib.precision=float16")


def test_choose_the_text_dataset_for_eval(settings, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    s = settings("data@eval.data=text", f"eval.data.path={f}")
    assert s.eval.data.path == str(f) and s.calib.data.name == "c4"


def test_missing_mandatory_value_says_what_to_pass(settings):
    with pytest.raises(ConfigError, match=r"eval\.data\.path: missing; set it"):
        settings("data@eval.data=text")


def test_unknown_override_key_says_how_to_add(compose):
    with pytest.raises(ConfigError, match=r"eval\.windowz: no such key"):
        compose("eval.windowz=3")


@pytest.mark.parametrize("override", ["hydra.run.dir=/tmp/x", "hydra/launcher=basic"])
def test_hydra_keys_are_refused(compose, override):
    with pytest.raises(QRecipeError, match="hydra"):
        compose(override)


def test_unknown_top_level_key(settings):
    with pytest.raises(ConfigError, match=r"bogus: unknown top-level key"):
        settings("+bogus=1")


def test_sweep_expands_with_hydras_parser():
    points = expand_sweep(["recipe=w8a16,w4a16", "recipe.base.group_size=64,128", "model=tinystories-656k"])
    assert points == [
        ["recipe=w8a16", "recipe.base.group_size=64", "model=tinystories-656k"],
        ["recipe=w8a16", "recipe.base.group_size=128", "model=tinystories-656k"],
        ["recipe=w4a16", "recipe.base.group_size=64", "model=tinystories-656k"],
        ["recipe=w4a16", "recipe.base.group_size=128", "model=tinystories-656k"],
    ]


def test_unparseable_override_is_one_line(compose):
    with pytest.raises(ConfigError) as e:
        compose("recipe.rules.x.match=re:(a|b")
    assert "\n" not in str(e.value)


BROKEN = {
    "syntax.yaml": ("name: syntax\nbase:\n  scheme: W8A16\n   rules: [\n", "syntax.yaml line 4, column 9: mapping "
                                                                           "values are not allowed here"),
    "dup.yaml": ("name: a\nname: b\n", "dup.yaml line 2, column 1: found duplicate key name"),
    "list.yaml": ("- a\n- b\n", "list.yaml: the file holds a list; a recipe is a mapping"),
    "latin1.yaml": ("name: caf\xe9\n".encode("latin-1"), "latin1.yaml: 'utf-8' codec can't decode byte 0xe9"),
}


def test_a_broken_recipe_file_is_one_line_and_breaks_no_other_recipe(tmp_path, monkeypatch, settings, compose):
    for name, (text, _) in BROKEN.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp_path / "mine.yaml").write_text("name: mine\nbase: {scheme: W8A16}\nrules: {l: {match: 'class:Linear'}}\n")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", str(tmp_path))
    for name, (_, where) in BROKEN.items():
        with pytest.raises(ConfigError) as e:
            compose(f"recipe={Path(name).stem}")
        assert str(e.value).startswith(f"recipe={Path(name).stem}: cannot read {tmp_path}/{where}")
        assert str(e.value).endswith("fix the file or remove it from QRECIPE_RECIPE_PATH") and "\n" not in str(e.value)
    assert settings("recipe=mine", "model=tinystories-656k").recipe.name == "mine"
    assert settings("recipe=w4a16", "model=tinystories-656k").recipe.name == "w4a16"  # shipped ones still work


def test_a_broken_file_shadowing_a_shipped_recipe_is_an_error_not_the_shipped_one(tmp_path, monkeypatch, compose):
    (tmp_path / "w8a16.yaml").write_text("name: w8a16\nbase: [\n")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", str(tmp_path))
    for chosen in ([], ["recipe=w8a16"]):  # w8a16 is also the default
        with pytest.raises(ConfigError, match=rf"^recipe=w8a16: cannot read {tmp_path}/w8a16.yaml line 3"):
            compose(*chosen)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_a_recipe_path_that_is_not_a_folder_is_an_error(tmp_path, monkeypatch, compose, make):
    path = tmp_path / "recipes"
    if make == "file":
        path.write_text("")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", f"{tmp_path}:{path}")
    what = "is a file, not a folder" if make == "file" else "does not exist"
    with pytest.raises(ConfigError, match=rf"^QRECIPE_RECIPE_PATH: {path} {what}; create the folder or remove it"):
        compose("recipe=w8a16")
