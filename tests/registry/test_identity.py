"""A variant is what changes the weights: the calibration data is part of it exactly when the
plan calibrates (Plan.calibrates, one answer for the driver, the identity and job submission)."""

from __future__ import annotations

import pytest

from conftest import TINY_RUN
from qrecipe.engine.planning import build_plan
from qrecipe.registry.recorder import identity


def _variant(settings, *overrides: str) -> tuple[str, bool]:
    s = settings(*TINY_RUN, *overrides)
    plan, info = build_plan(s)
    return identity(s, plan, info.model_type).variant_id, plan.calibrates


@pytest.mark.parametrize("recipe, calibrates", [
    (["recipe=w8a8", "recipe.base.activation=static"], True),  # RTN weights, calibrated activation scales
    (["recipe=gptq", "recipe.base.group_size=64"], True),
    (["recipe=w8a8"], False),                                   # dynamic activations: nothing calibrated
    (["recipe=w4a16", "recipe.base.group_size=64"], False),
])
def test_calibration_data_is_part_of_the_variant_exactly_when_the_plan_calibrates(settings, recipe, calibrates):
    a, a_calibrates = _variant(settings, *recipe, "data@calib.data=tinystories")
    b, b_calibrates = _variant(settings, *recipe, "data@calib.data=c4")
    c, _ = _variant(settings, *recipe, "data@calib.data=tinystories", "calib.seed=1")
    assert a_calibrates is b_calibrates is calibrates
    assert (a != b and a != c) if calibrates else (a == b == c)


def test_mlflow_run_names_are_unique_and_say_what_differs(settings):
    from qrecipe.registry.recorder import run_name

    def name(*overrides: str, number: int = 1) -> str:
        s = settings(*TINY_RUN, *overrides)
        plan, info = build_plan(s)
        return run_name(s, plan, identity(s, plan, info.model_type).variant_id, number)

    per_channel, g64 = name("recipe=w8a16"), name("recipe=w8a16", "recipe.base.group_size=64")
    assert per_channel != g64  # both were `w8a16@cpu #1` before
    assert per_channel.startswith("w8a16@cpu #1 ") and g64.startswith("w8a16[base.group_size=64]@cpu #1 ")
    assert name("recipe=w8a16", number=2) != per_channel  # a re-run of the same variant
    mixed = name("recipe=mixed", "recipe.base.group_size=64", "~recipe.rules.attn")
    assert mixed.startswith("mixed[base.group_size=64, ~rules.attn]@cpu #1 ")


def test_the_expert_token_minimum_is_part_of_the_variant_only_for_models_with_experts(settings):
    from pathlib import Path

    moe = Path(__file__).parents[1] / "fixtures" / "moe" / "qwen3-moe-tiny"  # a config: plans need no weights
    dense = ("recipe=gptq", "recipe.base.group_size=64")
    experts = (*dense, "model=hf", f"model.path={moe}")
    assert _variant(settings, *dense)[0] == _variant(settings, *dense, "calib.min_expert_tokens=1")[0]
    assert _variant(settings, *experts)[0] != _variant(settings, *experts, "calib.min_expert_tokens=1")[0]
