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
