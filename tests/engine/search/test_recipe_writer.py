"""An allocation written as a recipe reads like one a person wrote (a rule per kind of layer and
scheme, layer indices as a pattern), loads through the normal recipe path (`recipe=PATH`), and
resolves to exactly the allocation's plan."""

from __future__ import annotations

import re

import pytest
from model_shapes import SMOLLM2_SHAPE, write_llama_config

from qrecipe.engine.search.candidates import parse_candidate
from qrecipe.engine.search.recipe_writer import (build_recipe, check_round_trip, describe_indices, index_regex,
                                                 to_yaml)
from qrecipe.engine.search.units import build_units


@pytest.mark.parametrize("indices", [[0, 1, 2, 3, 27, 28, 29], [5], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
                                     [0, 9, 10, 19, 20, 29], list(range(30)), [3, 5, 8, 11, 14, 17, 20, 23, 26],
                                     [1, 2, 10, 11, 12, 99, 100, 101]])
def test_index_regex_matches_exactly_those_indices(indices):
    pattern = re.compile(index_regex(indices))
    assert [i for i in range(120) if pattern.fullmatch(str(i))] == indices


def test_index_pattern_reads_as_ranges():
    assert index_regex([0, 1, 2, 3, 27, 28, 29]) == "([0-3]|2[7-9])"
    assert describe_indices([0, 1, 2, 3, 5, 27, 28, 29]) == "0-3, 5, 27-29"


def test_written_recipe_round_trips_through_the_recipe_path(settings, tmp_path):
    from qrecipe.engine.planning import build_plan, model_info

    folder = write_llama_config(tmp_path / "smollm2-shape", **SMOLLM2_SHAPE)
    model = ["model=hf", f"model.path={folder}", "target=h100"]
    base = settings(*model)
    info = model_info(base)
    units = build_units(base.recipe, info)
    w8, g64, g32a, keep = (parse_candidate(t, "c") for t in ("W8A16", "W4A16:g64", "W4A16:g32:asym", "keep"))
    heavy = {0, 1, 2, 3, 27, 28, 29} | set(range(5, 27, 3))  # llama.cpp's "more bits" layers
    assignment = {}
    for u in units:
        leaf = u.kind_slug
        if leaf in ("qkv", "o", "down") and u.block in heavy:
            assignment[u.name] = w8
        elif leaf == "gate_up" and u.block in (4, 6):
            assignment[u.name] = g32a
        elif leaf == "o" and u.block == 13:
            assignment[u.name] = keep
        else:
            assignment[u.name] = g64
    node, comments = build_recipe("found", units, assignment, base.recipe, "test")
    # one rule per (kind, scheme), not one per layer: o_proj's most common scheme (W8A16, 15 layers)
    # is its kind's rule, its other schemes are exceptions listed first
    assert list(node["rules"]) == ["qkv_w8a16_channel", "o_w4a16_g64", "o_keep", "o", "gate_up_w4a16_g32_asym",
                                   "down_w8a16_channel", "rest"]
    assert node["overlap"] == "first_match"
    assert node["base"] == {"scheme": "W4A16", "group_size": 64, "symmetric": True, "algorithm": "rtn"}
    assert node["rules"]["down_w8a16_channel"] == {
        "match": r"re:model\.layers\.([0-3]|5|8|11|14|17|20|23|2[6-9])\.mlp\.down_proj", "scheme": "W8A16",
        "group_size": "channel"}
    assert node["rules"]["rest"] == {"match": "class:Linear"}
    path = tmp_path / "found.yaml"
    path.write_text(to_yaml(node, comments, ["a header line"]))
    text = path.read_text()
    assert text.startswith("# a header line\n")
    assert "mlp.down_proj in layers 0-3, 5, 8, 11, 14, 17, 20, 23, 26-29" in text
    plan = build_plan(settings(*model, f"recipe={path}"))[0]  # the normal path: compose, validate, resolve
    assert plan.recipe == "found"
    for u in units:
        c = assignment[u.name]
        for li in u.layers:
            lp = plan.layer(li.name)
            got = ("keep",) if not lp.is_quantized else (lp.scheme, lp.group_size, lp.symmetric, lp.algorithm)
            want = ("keep",) if c.keeps else (c.scheme, c.group_size, c.symmetric, c.algorithm)
            assert got == want, li.name
    check_round_trip(node, info, base.target, units, assignment)  # the search's own guard agrees


def test_a_recipe_file_that_does_not_exist_is_one_clear_error(settings, tmp_path):
    from qrecipe.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^recipe=.*nope.yaml: no such recipe file"):
        settings(f"recipe={tmp_path / 'nope.yaml'}")


def test_a_recipe_file_is_read_as_the_recipe_folders_files_are(settings, tmp_path):
    """recipe=PATH: a broken file is one line naming it, its stem must be a recipe name, and a
    job request (compose(user_recipes=False)) cannot name a file at all."""
    from qrecipe.engine.config import compose
    from qrecipe.engine.errors import ConfigError

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nbase: {scheme: W8A16\n")
    with pytest.raises(ConfigError, match=rf"^recipe=.*broken.yaml: cannot read {broken} line \d+, column \d+: "):
        settings(f"recipe={broken}")
    odd = tmp_path / "two words.yaml"
    odd.write_text("name: fine\nbase: {scheme: W8A16}\nrules: {all: {match: 'class:Linear'}}\n")
    with pytest.raises(ConfigError, match=r"^recipe: 'two words.yaml' is not a recipe file name"):
        settings(f"recipe={odd}")
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nbase: {scheme: W8A16}\nrules: {all: {match: 'class:Linear'}}\n")
    assert settings(f"recipe={good}").recipe.name == "mine"
    with pytest.raises(ConfigError, match=r"^recipe=.*mine.yaml: a recipe file by path is not accepted here"):
        compose([f"recipe={good}"], user_recipes=False)
