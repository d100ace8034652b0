"""lm-evaluation-harness on the local task files, offline: the tasks render lm-eval's own prompts
on the local rows, accuracy and standard error are lm-eval's, and flips agree with a count by
hand from the per-item answers.

Scored: TinyStories-656K (fp32) and its W4A16 g64 asymmetric RTN copy on the first 20 items of
ARC-Easy and PIQA (measured: 4 flips of 40, 2 of them correct->wrong, all on ARC-Easy; accuracies
0.2-0.5; the tiny model knows only children's stories,
so these are near chance: what is tested is the bookkeeping, on real lm-eval requests)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import SHARED
from qrecipe.engine.config.settings import LmEvalSpec
from qrecipe.engine.errors import ConfigError
from qrecipe.engine import metric_names as M
from qrecipe.engine.evaluate.lm_eval_score import score, variant_metrics
from qrecipe.engine.evaluate.lm_eval_tasks import LOCAL_TASKS, build_tasks, check_lm_eval
from tiny_quant import calib_text, eval_windows, quantize_tiny  # noqa: F401 (fixtures)

DATA = str(Path(SHARED) / "data")
SPEC = LmEvalSpec(tasks=("arc_easy", "piqa"), limit=20, batch_size=8, data=DATA)


@pytest.fixture(scope="module")
def scores(tiny_model, quantize_tiny):  # noqa: F811
    model, tokenizer = tiny_model
    variant = quantize_tiny("recipe=w4a16", "recipe.base.group_size=64",
                            "recipe.base.symmetric=false").model
    return score(model, tokenizer, SPEC), score(variant, tokenizer, SPEC)


def test_accuracy_and_its_standard_error_are_lm_evals(scores):
    for side in scores:
        for task, s in side.items():
            assert s.doc_ids == list(range(20))  # lm-eval's --limit: the first 20 items
            n, acc = len(s.correct), sum(s.correct) / len(s.correct)
            assert s.aggregates["acc"] == pytest.approx(acc)
            # lm-eval's mean_stderr: the sample standard deviation over sqrt(n)
            assert s.aggregates["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) * n / (n - 1) / n))
            assert 0 <= s.aggregates["acc_norm"] <= 1  # both tasks define normalized accuracy
            assert all(0 <= c < (5 if task == "arc_easy" else 2) for c in s.choices)


def test_flips_agree_with_a_count_by_hand(scores):
    base, variant = scores
    m = variant_metrics(base, variant)
    total = {"flip": 0, "c2w": 0, "w2c": 0}
    for task in SPEC.tasks:
        b, v = base[task], variant[task]
        flip = c2w = w2c = 0
        for i in range(len(b.doc_ids)):
            flip += b.choices[i] != v.choices[i]
            c2w += b.correct[i] and not v.correct[i]
            w2c += v.correct[i] and not b.correct[i]
        assert m[M.lm_eval_metric(task, M.FLIP_RATE)] == flip / 20
        assert m[M.lm_eval_metric(task, M.FLIPS_CORRECT_TO_WRONG)] == c2w / 20
        assert m[M.lm_eval_metric(task, M.FLIPS_WRONG_TO_CORRECT)] == w2c / 20
        assert m[M.lm_eval_metric(task, "acc_delta")] == pytest.approx(
            v.aggregates["acc"] - b.aggregates["acc"])
        assert m[M.lm_eval_metric(task, "acc_stderr_baseline")] == b.aggregates["acc_stderr"]
        total = {"flip": total["flip"] + flip, "c2w": total["c2w"] + c2w, "w2c": total["w2c"] + w2c}
    assert total["flip"] >= 1  # measured 4: the count is checked on real flips, not on zeros
    assert m["lm_eval.items"] == 40 and m["lm_eval.flip_rate"] == total["flip"] / 40
    assert m["lm_eval.flips_correct_to_wrong"] == total["c2w"] / 40
    assert m["lm_eval.worst_task"] == max(SPEC.tasks, key=lambda t: m[M.lm_eval_metric(t, M.FLIP_RATE)])
    same = variant_metrics(base, base)  # the baseline against itself flips nothing
    assert same["lm_eval.flip_rate"] == 0 and same["lm_eval.piqa.acc_delta"] == 0


# First row of each local file: lm-eval's prompt, choices and answer index for it.
FIRST = {
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food webs?"
                 "\nAnswer:", "Sunlight is the source of energy for nearly all ecosystems.", 0, 2376),
    "arc_challenge": ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                      "Which is the most likely effect of this increase in rotation?\nAnswer:",
                      "Planetary density will decrease.", 2, 1172),
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
             "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you "
             "will also need to supply it with a water bottle and a food dish.", 0, 1838),
    "winogrande": (1, "Sarah was a much better surgeon than Maria so Sarah", "always got the easier cases.", 1267),
    "boolq": (None, "no", 0, 3270),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation at the end of the "
                   "year. After looking over their budget and expenses, they decide the best way to save money is to",
                   "make more phone calls", 1, 500),
}


def test_local_tasks_render_lm_evals_prompts_on_the_local_rows(shared):
    tasks = build_tasks(LmEvalSpec(tasks=tuple(LOCAL_TASKS), data=DATA))
    assert list(tasks) == list(FIRST)
    for name, (text, first_choice, target, rows) in FIRST.items():
        task = tasks[name]
        docs = list(task.eval_docs)
        doc = docs[0]
        assert len(docs) == rows and task.OUTPUT_TYPE == "multiple_choice"
        if name == "boolq":
            assert task.doc_to_text(doc).endswith("\nQuestion: does ethanol take more energy make that produces?"
                                                  "\nAnswer:")
        else:
            assert task.doc_to_text(doc) == text
        assert task.doc_to_choice(doc)[0] == first_choice
        assert task.doc_to_target(doc) == target


@pytest.mark.parametrize("spec, message", [
    (LmEvalSpec(tasks=("hellaswag",), data=DATA), "eval.lm_eval.tasks: no local task 'hellaswag'; local tasks are "
                                                   "arc_easy, arc_challenge"),
    (LmEvalSpec(tasks=("piqa", "piqa"), data=DATA), "eval.lm_eval.tasks: ['piqa', 'piqa'] names a task twice"),
    (LmEvalSpec(tasks=("boolq",), data="/nonexistent"), "eval.lm_eval.data: boolq reads "
                                                        "/nonexistent/boolq/boolq-validation.jsonl, which does not "
                                                        "exist; set eval.lm_eval.data to the folder holding boolq/"),
])
def test_a_bad_task_setting_is_one_sentence_before_any_model_loads(spec, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        check_lm_eval(spec)


def test_settings_validate_the_group(settings):
    s = settings("eval.lm_eval.tasks=[arc_easy,piqa]", "eval.lm_eval.limit=5")
    assert s.eval.lm_eval.tasks == ("arc_easy", "piqa") and s.eval.lm_eval.enabled
    assert s.eval.lm_eval.data == str(Path(SHARED) / "data")
    assert not settings().eval.lm_eval.enabled  # off by default
    with pytest.raises(ConfigError, match="^eval.lm_eval.limit: must be a positive integer"):
        settings("eval.lm_eval.limit=0")
    with pytest.raises(ConfigError, match="^eval.lm_eval.source: expected local or hub"):
        settings("eval.lm_eval.source=web")
