"""Task prompts from the shared data, JSON validation and teacher-forced greedy matching."""

import pytest

from qrecipe.engine.config.settings import TaskSpec
from qrecipe.engine.errors import ConfigError
from qrecipe.engine.evaluate.json_tasks import SCHEMAS, first_json_object, is_valid_json_answer, json_cases
from qrecipe.engine.evaluate.task_metrics import baseline_tasks, first_difference, variant_tasks
from qrecipe.engine.evaluate.tasks import build_task_items, check_task_data


def _spec(shared, **kw):
    data = shared / "data"
    base = dict(families=("prose", "math", "code", "json"), prompts=2, new_tokens=6, reference_tokens=12,
                max_prompt_tokens=200, batch_size=4, gsm8k=str(data / "gsm8k/test.jsonl"),
                humaneval=str(data / "humaneval/HumanEval.jsonl.gz"), mbpp=str(data / "mbpp/sanitized-mbpp.json"))
    return TaskSpec(**{**base, **kw})


def test_first_json_object_skips_prose_fences_and_braces_in_strings():
    assert first_json_object('Sure! ```json\n{"a": "}{", "b": {"c": 1}}\n```') == {"a": "}{", "b": {"c": 1}}
    assert first_json_object('{broken} then {"ok": true}') == {"ok": True}
    assert first_json_object("no json here") is None
    assert first_json_object('{"unterminated": 1') is None


def test_json_answers_are_validated_against_their_schema():
    assert is_valid_json_answer('{"name": "Alice", "age": 30}', "person")
    assert not is_valid_json_answer('{"name": "Alice", "age": "30"}', "person")  # wrong type
    assert not is_valid_json_answer('{"name": "Alice", "age": 30, "x": 1}', "person")  # extra key
    assert not is_valid_json_answer('{"event": "fair", "date": "17 May", "attendees": 3}', "event")  # pattern
    for _, answer, schema in json_cases():  # every reference answer satisfies its own schema
        assert is_valid_json_answer(answer, schema), answer
    assert {schema for _, _, schema in json_cases()} == set(SCHEMAS)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) == 3
    assert first_difference([1, 9, 3], [1, 2, 3]) == 1
    assert first_difference([], []) == 0


def test_prompts_per_family_are_deterministic_and_bounded(tiny_model, shared):
    _, tokenizer = tiny_model
    spec = _spec(shared)
    docs = [(shared / "data/tinystories/tinystories_val.txt").read_text()[:200_000]]
    items = build_task_items(spec, tokenizer, docs)
    assert [it.family for it in items] == ["prose"] * 2 + ["math"] * 2 + ["code"] * 2 + ["json"] * 2
    assert items == build_task_items(spec, tokenizer, docs)
    assert all(len(it.prompt_ids) <= 200 and 0 < len(it.reference_ids) <= 12 for it in items)
    assert {it.source.split("/")[0] for it in items if it.family == "code"} == {"HumanEval", "mbpp"}
    assert all(it.schema for it in items if it.family == "json")
    # no chat template on this tokenizer: instruction families fall back to a plain Q/A prompt
    math = next(it for it in items if it.family == "math")
    assert tokenizer.decode(math.prompt_ids).rstrip().endswith("Answer:")


def test_missing_task_data_names_the_field(shared, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.tasks\.gsm8k: .*drop math from eval\.tasks\.families"):
        check_task_data(_spec(shared, gsm8k=str(tmp_path / "missing.jsonl")))
    check_task_data(_spec(shared, families=("prose", "json"), gsm8k="/nope"))  # math is not asked for


def test_a_model_matches_its_own_baseline_exactly(tiny_model, shared):
    model, tokenizer = tiny_model
    spec = _spec(shared, prompts=1)
    docs = [(shared / "data/tinystories/tinystories_val.txt").read_text()[:50_000]]
    items = build_task_items(spec, tokenizer, docs)
    base = baseline_tasks(model, tokenizer, items, spec, progress=False)
    assert all(0 < len(c) <= spec.new_tokens for c in base.continuations)
    assert [len(c) for c in base.choices] == [len(c) for c in base.continuations]
    m = variant_tasks(model, tokenizer, items, base, spec, progress=False)
    for family in ("prose", "math", "code", "json"):
        assert m[f"task.{family}.greedy_match"] == 1.0 and m[f"task.{family}.prefix_match"] == 1.0
        assert m[f"task.{family}.loglik_delta"] == pytest.approx(0.0, abs=1e-9)
    assert m["task.json.valid_rate"] == m["task.json.valid_rate_baseline"]
    assert m["task.worst_greedy_match"] == 1.0
