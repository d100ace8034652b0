"""Speed timing: interleaved repeats, the speedup's interval and the noisy flag, checked on a
virtual clock that only moves when a model runs a forward (no assertion on real time). The
models are real (TinyStories-656K); only time is simulated. The child-process peak memory is
checked end to end (tests/registry/test_end_to_end.py)."""

import copy

import pytest
import torch

from qrecipe.engine.config.settings import SpeedSpec
from qrecipe.engine.errors import ConfigError
from qrecipe.engine.evaluate.memory import peak_method, weight_bytes
from qrecipe.engine.evaluate.speed import INTERLEAVED, SEQUENTIAL, measure_one, measure_pair, speed_metrics, \
    speed_tokens
from qrecipe.engine.evaluate.spread import noise_reasons, paired_speedup, spread
from qrecipe.engine.evaluate.suite import timing_mode

SPEC = SpeedSpec(prompt_len=16, batch_size=2, context_len=8, new_tokens=2, warmup=1, repeats=5, max_rel_iqr=0.10)
TOKENS = speed_tokens(torch.arange(1, 40).reshape(3, 13), 64)


class VirtualClock:
    """Time passes only in forward passes: a forward of model `label` costs cost[label](pair)
    seconds times `slow` (another job on the machine). A pair starts each time the baseline
    starts a forward after something else ran, so in interleaved timing a baseline measurement
    and the variant measurement after it share one pair number, as they share the machine's
    state of the moment."""

    def __init__(self, cost):
        self.now, self.pair, self.slow, self.calls, self.cost = 0.0, 0, 1.0, [], cost

    def __call__(self) -> float:
        return self.now

    def attach(self, model, label: str):
        def hook(module, args, kwargs):
            if label == "B" and (not self.calls or self.calls[-1] != "B"):
                self.pair += 1
            self.calls.append(label)
            self.now += self.cost[label](self.pair) * self.slow

        return model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture
def two_models(tiny_model):
    """Two copies of the tiny model (the session fixture stays untouched), B and V."""
    model, _ = tiny_model
    return copy.deepcopy(model), copy.deepcopy(model)


def _timed(two_models, cost, sequential_slowdown: float | None = None):
    clock = VirtualClock(cost)
    base, var = two_models
    clock.attach(base, "B"), clock.attach(var, "V")
    if sequential_slowdown is None:
        b, v = measure_pair(base, var, TOKENS, SPEC, clock=clock)
        return clock, speed_metrics(b, v, SPEC, INTERLEAVED)
    b = measure_one(base, TOKENS, SPEC, clock=clock)
    clock.slow = sequential_slowdown  # another job starts after the baseline was timed
    v = measure_one(var, TOKENS, SPEC, clock=clock)
    return clock, speed_metrics(b, v, SPEC, SEQUENTIAL, "eval.speed.timing=sequential")


def test_repeats_interleave_baseline_and_variant(two_models):
    clock, _ = _timed(two_models, {"B": lambda p: 2.0, "V": lambda p: 1.0})
    steps = 1 + SPEC.new_tokens  # a decode repeat: the context forward, then the timed steps
    prefill = ["B", "V"] * (SPEC.warmup + SPEC.repeats)
    decode = (["B"] * steps + ["V"] * steps) * (SPEC.warmup + SPEC.repeats)
    assert clock.calls == prefill + decode


def test_a_steady_speedup_is_exact_and_not_noisy(two_models):
    _, m = _timed(two_models, {"B": lambda p: 2.0, "V": lambda p: 1.0})
    for side in ("prefill", "decode"):
        assert (m[f"{side}_speedup"], m[f"{side}_speedup_low"], m[f"{side}_speedup_high"]) == (2.0, 2.0, 2.0)
        assert m[f"{side}_noisy"] is False and f"{side}_noise" not in m
    assert m["prefill_tokens_per_s"] == SPEC.batch_size * SPEC.prompt_len / 1.0  # 32 tokens in one virtual second
    assert m["prefill_tokens_per_s_baseline"] == 16.0
    assert (m["decode_ms_per_token"], m["decode_ms_per_token_baseline"]) == (1000.0, 2000.0)
    assert m["speed_timing"] == "interleaved" and m["speed_repeats"] == 5 and "speed_timing_note" not in m


def test_drift_cancels_in_interleaved_pairs_but_the_baseline_spread_flags_it(two_models):
    # the machine slows down steadily, 2x, 3x, ... per pair: every pair still says 2.0
    _, m = _timed(two_models, {"B": lambda p: 2.0 * p, "V": lambda p: 1.0 * p})
    assert (m["decode_speedup"], m["decode_speedup_low"], m["decode_speedup_high"]) == (2.0, 2.0, 2.0)
    # each model's own repeats spread far beyond 10%, so the figure is still flagged
    assert m["decode_noisy"] is True and m["decode_rel_iqr_baseline"] > 0.1
    assert "baseline's repeats spread" in m["decode_noise"] and "includes 1.0" not in m["decode_noise"]


def test_sequential_timing_is_fooled_by_drift_and_says_it_was_sequential(two_models):
    # the same 2x variant, timed after a 3x slowdown began: the figure is confidently wrong
    _, m = _timed(two_models, {"B": lambda p: 2.0, "V": lambda p: 1.0}, sequential_slowdown=3.0)
    assert m["decode_speedup"] == pytest.approx(2 / 3) and m["decode_noisy"] is False
    assert m["speed_timing"] == "sequential" and m["speed_timing_note"] == "eval.speed.timing=sequential"


def test_a_speedup_whose_interval_includes_one_is_noisy(two_models):
    jitter = {1: 1.0, 2: 1.0, 3: 0.96, 4: 1.04, 5: 0.98, 6: 1.02, 7: 1.0}  # per pair; pair 1 is the warm-up
    jitter.update({p + 6: f for p, f in jitter.items()})  # the decode pairs repeat the pattern
    _, m = _timed(two_models, {"B": lambda p: 1.0, "V": lambda p: jitter[p]})
    # prefill ratios 1/1.0, 1/0.96, 1/1.04, 1/0.98, 1/1.02; the variant's own repeats spread 4%
    assert m["prefill_speedup"] == pytest.approx(1.0)
    assert (m["prefill_speedup_low"], m["prefill_speedup_high"]) == (pytest.approx(1 / 1.02), pytest.approx(1 / 0.98))
    assert m["prefill_noisy"] is True and m["prefill_noise"] == "its interval 0.98-1.02x includes 1.0"


@pytest.mark.parametrize("values, expected", [
    ([5, 1, 4, 2, 3], (3, 2, 4)),  # 5 values: the 2nd, 3rd and 4th smallest
    ([1, 2, 3, 4], (2.5, 1.75, 3.25)),
    ([7.0], (7.0, 7.0, 7.0)),
])
def test_quartiles(values, expected):
    s = spread(values)
    assert (s.median, s.q1, s.q3) == expected


def test_paired_speedup_and_noise_reasons():
    ratio = paired_speedup([2.0, 2.2, 1.8, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert (ratio.median, ratio.q1, ratio.q3) == (2.0, 2.0, 2.0)
    tight = spread([1.0, 1.0, 1.0, 1.0, 1.0])
    assert noise_reasons(ratio, spread([2.0, 2.2, 1.8, 2.0, 2.0]), tight, 0.10) == []
    wide = spread([1.0, 1.5, 2.0, 2.5, 3.0])  # IQR 1.0 over median 2.0: 50%
    assert noise_reasons(ratio, wide, tight, 0.10) == [
        "the baseline's repeats spread 50% (IQR/median), more than eval.speed.max_rel_iqr=0.1"]
    assert noise_reasons(ratio, tight, wide, 0.10) == [
        "the variant's repeats spread 50% (IQR/median), more than eval.speed.max_rel_iqr=0.1"]
    with pytest.raises(ValueError, match="5 baseline timings but 4"):
        paired_speedup([1] * 5, [1] * 4)


def test_timing_falls_back_to_sequential_when_a_copy_does_not_fit_and_says_why():
    auto, forced = SpeedSpec(), SpeedSpec(timing="interleaved")
    assert timing_mode(auto, 100, 1000, "cpu") == (INTERLEAVED, None)
    mode, note = timing_mode(auto, 600, 1000, "cpu")
    assert mode == SEQUENTIAL and "needs 600 B, more than 50% of the 1000 B free on cpu" in note
    with pytest.raises(ConfigError, match="eval.speed.timing=interleaved: a float copy"):
        timing_mode(forced, 600, 1000, "cpu")
    mode, note = timing_mode(SpeedSpec(timing="sequential"), 1, 1000, "cpu")
    assert mode == SEQUENTIAL and note.startswith("eval.speed.timing=sequential")


def test_speed_settings_are_checked(settings):
    with pytest.raises(ConfigError, match="eval.speed.repeats: at least 5 timed repeats"):
        settings("eval.speed.repeats=3")
    with pytest.raises(ConfigError, match="eval.speed.timing: expected auto, interleaved, sequential"):
        settings("eval.speed.timing=often")


def test_weight_bytes_counts_tied_storage_once(tiny_model):
    model, _ = tiny_model
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    assert weight_bytes(model) == sum(params.values())
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_peak_method_follows_the_device():
    assert peak_method("auto", torch.device("cpu")) == "child"
    assert peak_method("off", torch.device("cpu")) == "off"
    with pytest.raises(ConfigError, match="eval.memory.method: cuda needs"):
        peak_method("cuda", torch.device("cpu"))
