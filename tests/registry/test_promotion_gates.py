"""Quality gates as configured (conf/gates/, overrides, per model and per recipe) and as judged
against a variant's metrics."""

from __future__ import annotations

import math

import pytest

from qrecipe.engine.errors import ConfigError
from qrecipe.registry.gates import GateCheck, GatePolicy, Thresholds, check_gates


def test_the_shipped_defaults_and_per_model_and_per_recipe_layers(settings):
    policy = GatePolicy.from_settings(settings("+gates.models.tinystories-656k.max_kl_mean=0.2",
                                               "+gates.models.tinystories-656k.min_top1_agreement=0.8",
                                               "+gates.recipes.w4a16.min_top1_agreement=0.7",
                                               "+gates.recipes.w4a16.min_task_agreement.prose=0.5",
                                               "+gates.min_task_agreement.json=0.8", "gates.max_ppl_increase_pct=null"))
    assert policy.thresholds_for("smollm2-135m", "w8a16") == Thresholds(
        max_ppl_increase_pct=None, max_kl_mean=0.05, min_top1_agreement=0.9, min_task_agreement={"json": 0.8})
    # the model's entry over the defaults, the recipe's over the model's, gate by gate
    assert policy.thresholds_for("tinystories-656k", "w4a16") == Thresholds(
        max_ppl_increase_pct=None, max_kl_mean=0.2, min_top1_agreement=0.7,
        min_task_agreement={"json": 0.8, "prose": 0.5})
    assert GatePolicy.from_section(None).thresholds_for("m", "r") == Thresholds()


@pytest.mark.parametrize("section, message", [
    ({"max_kl": 0.1}, "gates.max_kl: unknown key; allowed keys are models, recipes, protocol, any_protocol, "
                             "max_ppl_increase_pct"),
    ({"max_kl_mean": "high"}, "gates.max_kl_mean: expected a number, got 'high'"),
    ({"max_kl_mean": math.inf}, "gates.max_kl_mean: must be a finite number or null"),
    ({"min_top1_agreement": 90}, "gates.min_top1_agreement: expected a share between 0 and 1"),
    ({"min_task_agreement": {"poetry": 0.5}}, "gates.min_task_agreement.poetry: unknown task family; choose from "
                                              "prose, math, code, json"),
    ({"min_task_agreement": {"code": 2}}, "gates.min_task_agreement.code: expected a share between 0 and 1"),
    ({"recipes": {"w4a16": {"max_ppl": 5}}}, "gates.recipes.w4a16.max_ppl: unknown key"),
    ({"models": ["smollm2"]}, "gates.models: expected a mapping of name -> gates"),
])
def test_a_bad_gate_is_one_sentence_naming_the_field(section, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        GatePolicy.from_section(section)


def test_checks_compare_each_metric_and_an_unmeasured_one_fails():
    thresholds = Thresholds(max_ppl_increase_pct=3.0, max_kl_mean=0.05, min_top1_agreement=0.9,
                            min_task_agreement={"prose": 0.5, "code": None, "json": 0.8})
    checks = check_gates(thresholds, {"ppl_delta_pct": 3.0, "kl_mean": 0.0501, "top1_agreement": math.nan,
                                      "task.prose.greedy_match": 0.5})
    assert [(c.gate, c.metric, c.passed) for c in checks] == [
        ("max_ppl_increase_pct", "ppl_delta_pct", True),  # the threshold itself passes
        ("max_kl_mean", "kl_mean", False), ("min_top1_agreement", "top1_agreement", False),
        ("min_task_agreement.json", "task.json.greedy_match", False),
        ("min_task_agreement.prose", "task.prose.greedy_match", True)]
    assert [c.describe() for c in checks] == [
        "ppl_delta_pct 3 <= max_ppl_increase_pct 3", "kl_mean 0.0501 > max_kl_mean 0.05",
        "top1_agreement nan < min_top1_agreement 0.9",
        "task.json.greedy_match not measured (min_task_agreement.json 0.8)",
        "task.prose.greedy_match 0.5 >= min_task_agreement.prose 0.5"]
    assert GateCheck("max_kl_mean", "kl_mean", "<=", 0.05, 0.01).to_dict() == {
        "gate": "max_kl_mean", "metric": "kl_mean", "op": "<=", "threshold": 0.05, "value": 0.01, "noise": None,
        "passed": True}
    assert check_gates(Thresholds(), {"kl_mean": 9.0}) == []


def test_a_speed_gate_refuses_a_noisy_speedup_whatever_its_median():
    thresholds = Thresholds(min_decode_speedup=1.5, min_prefill_speedup=0.9)
    noisy = {"decode_speedup": 2.1, "decode_noisy": True,
             "decode_noise": "the baseline's repeats spread 27% (IQR/median), more than eval.speed.max_rel_iqr=0.1",
             "prefill_speedup": 1.0, "prefill_noisy": False}
    decode, prefill = check_gates(thresholds, noisy)
    assert decode.passed is False and prefill.passed is True
    assert decode.describe() == ("decode_speedup 2.1 is noisy (the baseline's repeats spread 27% (IQR/median), more "
                                 "than eval.speed.max_rel_iqr=0.1), so min_decode_speedup 1.5 cannot be judged on it; "
                                 "time it again on a quieter machine")
    assert check_gates(thresholds, {**noisy, "decode_noisy": False})[0].passed is True


def test_the_protocol_the_gates_judge(settings):
    shipped = GatePolicy.from_settings(settings())
    assert (shipped.protocol, shipped.any_protocol) == (None, False)
    assert shipped.required_protocol("abc") == "abc"  # the promoting config's own protocol
    assert shipped.required_protocol("abc", any_protocol=True) is None  # --any-protocol
    assert GatePolicy.from_section({"protocol": "f00"}).required_protocol("abc") == "f00"
    assert GatePolicy.from_section({"any_protocol": True}).required_protocol("abc") is None
    with pytest.raises(ConfigError, match="gates.any_protocol: expected true or false"):
        GatePolicy.from_section({"any_protocol": "yes"})
    with pytest.raises(ConfigError, match="gates.recipes.w4a16.protocol: unknown key"):
        GatePolicy.from_section({"recipes": {"w4a16": {"protocol": "f00"}}})


def test_flip_gates_read_the_lm_eval_metrics_and_layer_per_task(settings):
    policy = GatePolicy.from_settings(settings("gates.max_flip_rate=0.1", "+gates.max_task_flip_rate.piqa=0.2",
                                               "+gates.recipes.w4a16.max_task_flip_rate.arc_easy=0.05"))
    t = policy.thresholds_for("smollm2-135m", "w4a16")
    assert (t.max_flip_rate, t.max_task_flip_rate) == (0.1, {"piqa": 0.2, "arc_easy": 0.05})
    checks = check_gates(Thresholds(max_flip_rate=0.1, max_task_flip_rate=t.max_task_flip_rate),
                         {"lm_eval.flip_rate": 0.075, "lm_eval.piqa.flip_rate": 0.25})
    assert [(c.gate, c.metric, c.passed) for c in checks] == [
        ("max_flip_rate", "lm_eval.flip_rate", True),
        ("max_task_flip_rate.arc_easy", "lm_eval.arc_easy.flip_rate", False),  # not measured
        ("max_task_flip_rate.piqa", "lm_eval.piqa.flip_rate", False)]
    assert checks[2].describe() == "lm_eval.piqa.flip_rate 0.25 > max_task_flip_rate.piqa 0.2"
    for bad, message in (({"max_flip_rate": 1.5}, "gates.max_flip_rate: expected a share between 0 and 1"),
                         ({"max_task_flip_rate": {"piqa": -1}}, "gates.max_task_flip_rate.piqa: expected a share")):
        with pytest.raises(ConfigError, match="^" + message):
            GatePolicy.from_section(bad)
