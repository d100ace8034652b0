"""Per-layer weight error, invariant to the per-input-channel scales AWQ/SmoothQuant fold in."""

import math

import pytest
import torch

from qrecipe.engine.evaluate.layer_error import layer_errors, scale_invariant_error, sqnr_db, summarize


def test_exact_and_rescaled_weights_have_no_error():
    w = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    assert scale_invariant_error(w, w) == 0.0
    s = torch.rand(16, generator=torch.Generator().manual_seed(1)) + 0.5
    # a folded per-input-channel scale is not error (float32 rounding aside)
    assert scale_invariant_error(w, w * s) < 1e-6
    assert sqnr_db(0.0) is None and sqnr_db(0.01) == pytest.approx(40.0)


def test_noise_is_measured_as_relative_error():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(256, 64, generator=g)
    noise = torch.randn(256, 64, generator=g) * 0.01
    rel = scale_invariant_error(w, w + noise)
    assert rel == pytest.approx((noise.norm() / w.norm()).item(), rel=0.05)  # a scale per column absorbs ~1/256


def test_layer_errors_of_a_quantized_model(fresh_tiny_model, tiny_model_dir):
    from conftest import TINY_RUN, settings_for

    from qrecipe.engine.modules import QuantLinear
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.quantize import prepare_model, quantize_model

    model, _ = fresh_tiny_model
    plan, _ = build_plan(settings_for(*TINY_RUN, "recipe=w4a16", "recipe.base.group_size=32"), torch.device("cpu"))
    quantize_model(model, plan, progress=False)
    prepare_model(model)
    errors = layer_errors(model, tiny_model_dir)
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert [e["name"] for e in errors] == quantized and len(errors) == 14
    assert all(15 < e["sqnr_db"] < 40 for e in errors)  # 4-bit: roughly 20-30 dB
    summary = summarize(errors)
    assert summary["weight_sqnr_db_min"] <= summary["weight_sqnr_db_mean"]
    assert layer_errors(model, None) == [] and math.isfinite(summary["weight_sqnr_db_mean"])
