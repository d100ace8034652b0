"""End-to-end tuning of the group scales (engine/quant/tune.py) on TinyStories-656K and its
stories: it starts exactly at the model it is given, changes nothing but the scales, lowers the
KL to the float model on the calibration windows and the perplexity on text it never saw, and
what it measured is what is stored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import settings_for
from qrecipe.engine.errors import RecipeError
from qrecipe.engine.evaluate import perplexity
from qrecipe.engine.modules import QuantLinear
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quant.tune import float_hidden, held_out_rows, tune_scales
from qrecipe.engine.quantize import quantize_model
from tiny_quant import calib_text, eval_windows  # noqa: F401  (fixtures)


@pytest.fixture
def rtn(fresh_tiny_model, calib_text):
    return lambda symmetric: _rtn(fresh_tiny_model, calib_text, symmetric)


def _rtn(fresh_tiny_model, calib_text, symmetric: bool):
    """TinyStories-656K at W4A16 group 64 RTN, its calibration windows and the float targets."""
    from qrecipe.engine.data import calibration_windows

    model, tokenizer = fresh_tiny_model
    s = settings_for("model=tinystories-656k", "target=cpu", "recipe=w4a16", "recipe.base.group_size=64",
                     f"recipe.base.symmetric={str(symmetric).lower()}", "data@calib.data=text",
                     f"calib.data.path={calib_text}", "calib.samples=16", "calib.seq_len=128")
    windows = calibration_windows(tokenizer, s.calib)
    targets = float_hidden(model, windows, 8, "float32")
    plan, _ = build_plan(s, torch.device("cpu"))
    quantize_model(model, plan, progress=False)
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    return model, windows, targets, names


def _buffers(model, names):
    return {f"{n}.{b}": t.clone() for n in names for b, t in model.get_submodule(n).packed().items()}


def test_a_zero_step_leaves_the_model_exactly_as_it_was(rtn):
    model, windows, targets, names = rtn(False)
    before = _buffers(model, names)
    result = tune_scales(model, names, windows, targets, epochs=1, lr=0.0)
    assert result.kl_after == result.kl_before > 0
    assert not result.kept and result.epoch == 0  # not lower: the scales stay
    assert result.held_out == 2 and len(result.train_kl) == 1
    after = _buffers(model, names)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("symmetric", [False, True])
def test_tuning_changes_only_the_scales_and_lowers_kl_and_held_out_perplexity(rtn, eval_windows, symmetric):
    model, windows, targets, names = rtn(symmetric)
    ppl_before = perplexity(model, eval_windows, 8, progress=False).ppl
    before = _buffers(model, names)
    result = tune_scales(model, names, windows, targets, epochs=2, lr=3e-3)
    ppl_after = perplexity(model, eval_windows, 8, progress=False).ppl
    print(f"symmetric={symmetric}: KL {result.kl_before:.4f} -> {result.kl_after:.4f}, "
          f"held-out ppl {ppl_before:.3f} -> {ppl_after:.3f}")
    assert result.kept and result.layers == len(names) == 14 and result.epoch in (1, 2)
    assert result.train_kl[-1] < result.train_kl[0]
    # measured on the 2 held-out windows: KL 0.0836 -> 0.0719 (asymmetric), 0.1087 -> 0.0956 (symmetric)
    assert result.kl_after < 0.92 * result.kl_before
    assert ppl_after < ppl_before
    after = _buffers(model, names)
    for key in before:
        if key.endswith(".scales"):
            assert not torch.equal(before[key], after[key]), key
            assert after[key].dtype == before[key].dtype
        else:  # the codes and zero points are GPTQ's (here RTN's), untouched
            assert torch.equal(before[key], after[key]), key


@torch.no_grad()
def test_what_was_measured_is_what_is_stored(rtn):
    """The held-out KL that chose the scales is measured with the fp16 scales as stored: the
    stored model, through its own backends, gives the same KL on the held-out windows."""
    model, windows, targets, names = rtn(False)
    result = tune_scales(model, names, windows, targets, epochs=1, lr=3e-3)
    assert result.kept
    held = held_out_rows(len(windows))
    log_q = F.log_softmax(model(input_ids=windows[held]).logits.float(), dim=-1)
    log_p = F.log_softmax(F.linear(targets.hidden[held], targets.head_weight), dim=-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert kl == pytest.approx(result.kl_after, rel=1e-4)


def test_rules_that_ask_for_different_tunings_fail_before_loading():
    with pytest.raises(RecipeError, match=r"^recipe\.rules: the rules ask for different scale tunings \(attn: "
                                          r"tune_epochs=2, tune_lr=0\.001; mlp: tune_epochs=1, tune_lr=0\.001\); "):
        settings_for("recipe=mixed", "recipe.base.algorithm=gptq", "+recipe.rules.attn.args.tune_epochs=2",
                     "+recipe.rules.mlp.args.tune_epochs=1")


def test_the_progress_bar_counts_the_steps_taken(rtn):
    """The progress total is the number of steps tune_scales takes (held-out windows are not stepped on)."""
    from qrecipe.engine.quant.tune import tuning_steps

    model, windows, targets, names = rtn(False)
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

    tune_scales(model, names, windows, targets, epochs=2, lr=1e-3, windows_per_step=3, progress=Bar())
    assert sum(ticks) == tuning_steps(len(windows), 2, 3) == 2 * 5  # 14 of 16 windows, 3 a step
