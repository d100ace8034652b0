"""The baseline cache: keyed by model, eval settings and device; written once, atomically."""

import threading

import torch

from conftest import TINY_RUN, settings_for

from qrecipe.engine.evaluate.baseline_cache import (BaselineOutputs, baseline_key, baseline_key_parts, cache_folder,
                                                    load_baseline, save_baseline)
from qrecipe.engine.evaluate.divergence import TextReference
from qrecipe.engine.evaluate.task_metrics import TaskBaseline

CPU, F32 = torch.device("cpu"), torch.float32


def _key(*overrides, device=CPU, dtype=F32):
    return baseline_key(baseline_key_parts(settings_for(*TINY_RUN, *overrides), device, dtype))


def test_key_follows_what_changes_the_baseline_outputs(shared):
    same = _key()
    assert _key() == same
    assert _key("recipe=w4a16") == same  # the recipe does not change the baseline
    assert _key("eval.speed.repeats=9") == same  # nor does timing
    assert _key("eval.lm_eval.limit=5") == same  # nor lm-eval settings while it is off
    piqa = _key("eval.lm_eval.tasks=[piqa]")
    assert piqa != same and _key("eval.lm_eval.tasks=[piqa]", "eval.lm_eval.limit=5") not in (piqa, same)
    for changed in (_key("eval.windows=4"), _key("eval.kl_topk=8"), _key("eval.tasks.prompts=3"),
                    _key("eval.batch_size=2"), _key(dtype=torch.bfloat16), _key("data@eval.data=wikitext2")):
        assert changed != same


def _outputs() -> BaselineOutputs:
    ref = TextReference(torch.randn(2, 3, 4), torch.randint(0, 9, (2, 3, 4), dtype=torch.int32), 1.5, 6)
    tasks = TaskBaseline([[1, 2]], [[1, 2]], [-0.5], [None])
    return BaselineOutputs({"tinystories": ref}, tasks, ["text/0"])


def test_round_trip_and_single_writer(shared):
    settings = settings_for(*TINY_RUN)
    folder = cache_folder(settings, "k" * 16)
    assert load_baseline(folder) is None
    threads = [threading.Thread(target=save_baseline, args=(folder, _outputs(), {"n": i})) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = load_baseline(folder)
    assert loaded.task_sources == ["text/0"] and loaded.tasks.continuations == [[1, 2]]
    assert loaded.texts["tinystories"].topk_ids.dtype == torch.int32
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]  # no temporary leftovers


def test_a_damaged_cache_is_recomputed_replaced_and_said(shared, tiny_model, tmp_path, monkeypatch):
    from qrecipe.engine.evaluate import suite

    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path))
    model, tokenizer = tiny_model
    settings = settings_for(*TINY_RUN, "eval.windows=2", "eval.speed.enabled=false")
    inputs = suite.prepare_inputs(settings, tokenizer)
    said = []
    first = suite.measure_baseline(model, tokenizer, settings, inputs, CPU, F32, said.append, progress=False)
    assert not first.cached and first.notes == []
    (first.folder / "reference.pt").write_bytes(b"not a torch file")
    again = suite.measure_baseline(model, tokenizer, settings, inputs, CPU, F32, said.append, progress=False)
    assert not again.cached and len(again.notes) == 1 and "could not be used" in again.notes[0]
    assert any(line.startswith("note: the cached baseline outputs") for line in said)
    third = suite.measure_baseline(model, tokenizer, settings, inputs, CPU, F32, said.append, progress=False)
    assert third.cached and third.notes == []  # replaced by a good copy
    assert third.outputs.texts["tinystories"].ppl == first.outputs.texts["tinystories"].ppl
