"""Perplexity of TinyStories-656K after each algorithm, against RTN on the same scheme.

Calibration: 64 windows of 256 tokens from the second half of tinystories_val.txt;
evaluation: the first 32 windows of 256 tokens (tests/tiny_quant.py). W4A16 uses group 64 (the
model's in_features are 128 and 384). At group 128, since the symmetric grid became [-8, 7], GPTQ
no longer beats RTN on this model (37.138 against 37.099, measured on this branch before and after
merging main), so the ordering is tested at 64, where AWQ and GPTQ both clearly do.
"""

from __future__ import annotations

import pytest

from tiny_quant import calib_text, eval_windows, float_ppl, quantize_tiny  # noqa: F401  (fixtures)

W4_G64 = ("recipe=w4a16", "recipe.base.group_size=64")
# recipes/w4a16-awq-gptq.yaml on TinyStories-656K (W4A16 g64 asymmetric, AWQ then GPTQ with
# clipping): measured 35.310 against float 34.441 and symmetric RTN g64 37.345, 70.1% of RTN's
# gap closed (AWQ g64 36.995, GPTQ g64 36.231, both symmetric as recipes/awq.yaml and gptq.yaml;
# 35.256, 71.9%, before GPTQ's sub-block updates changed its float rounding order). The floor
# leaves room for float rounding on other CPUs; SmolLM2-135M's figure is in bench/ALGORITHMS.md.
# recipes/w4a16-awq-gptq-refined.yaml (the same, then each block's rounding refined against the
# float model, then every group scale tuned end to end against the float model's next-token
# distribution, tune_epochs 2): measured 34.982, 81.4% of the gap (35.227, 72.9%, before the
# scale tuning; 35.526, 62.6%, before GPTQ's transposed loop and the refinement's retry with
# smaller steps). The sign-gradient refinement amplifies float rounding: accumulating the Gram
# matrices by row strips (engine/calibration/stats.py add_gram), which changes only the last bits
# of the down_proj Hessians and leaves GPTQ's and the unrefined recipe's perplexities exactly as
# they were, moved it from 35.007 (80.5%, this machine) to 35.236 (72.6%). The floor sits below
# that band.
# (Refinement steps of 0.04 / 0.004 measured 35.126 here, but worse on SmolLM2-135M; 8 windows per
# step 35.396, 67.1%, both before the scale tuning.)
RECIPE_GAP_FLOORS = {"w4a16-awq-gptq": 0.65, "w4a16-awq-gptq-refined": 0.70}
W8A8_STATIC = ("recipe=w8a8", "recipe.base.activation=static")
ALPHA_GRID = "recipe.base.args.alpha=[0.3,0.5,0.7,0.9]"


def test_w8a8_static_smoothquant_beats_plain(quantize_tiny, float_ppl):
    plain = quantize_tiny(*W8A8_STATIC)
    smooth = quantize_tiny(*W8A8_STATIC, "recipe.base.algorithm=smoothquant", ALPHA_GRID)
    print(f"W8A8 static ppl: float {float_ppl:.3f}, rtn {plain.ppl:.3f}, smoothquant {smooth.ppl:.3f}")
    assert float_ppl < smooth.ppl < plain.ppl


def test_w8a8_dynamic_smoothquant_is_reported(quantize_tiny, float_ppl):
    """Per-token activations leave SmoothQuant little to fix on this model: report only."""
    plain = quantize_tiny("recipe=w8a8")
    smooth = quantize_tiny("recipe=w8a8", "recipe.base.algorithm=smoothquant", ALPHA_GRID)
    print(f"W8A8 dynamic ppl: float {float_ppl:.3f}, rtn {plain.ppl:.3f}, smoothquant {smooth.ppl:.3f}")
    for ppl in (plain.ppl, smooth.ppl):
        assert float_ppl < ppl < 1.05 * float_ppl


@pytest.fixture(scope="module")
def w4_g64(quantize_tiny):
    return {name: quantize_tiny(*W4_G64, f"recipe.base.algorithm={name}") for name in ("rtn", "awq", "gptq")}


@pytest.mark.parametrize("name", list(RECIPE_GAP_FLOORS))
def test_the_awq_gptq_recipes_beat_awq_and_gptq_and_close_most_of_the_gap(quantize_tiny, w4_g64, float_ppl, name):
    recipe = quantize_tiny(f"recipe={name}")
    rtn, awq, gptq = (w4_g64[n].ppl for n in ("rtn", "awq", "gptq"))
    gap = (rtn - recipe.ppl) / (rtn - float_ppl)
    print(f"W4A16 g64 ppl: float {float_ppl:.3f}, {name} {recipe.ppl:.3f}, awq {awq:.3f}, "
          f"gptq {gptq:.3f}, rtn {rtn:.3f}; gap closed {100 * gap:.1f}%")
    assert float_ppl < recipe.ppl < min(awq, gptq)
    for calibrated in (awq, gptq):
        assert calibrated < rtn
        # each closes a real part of RTN's gap to float, not a rounding-noise sliver
        assert (rtn - calibrated) > 0.05 * (rtn - float_ppl)
    assert gap >= RECIPE_GAP_FLOORS[name]
