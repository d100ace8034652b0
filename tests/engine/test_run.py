"""End to end on TinyStories-656K and its own text: quantize, evaluate, write the variant.

Measured here (16 windows x 256 tokens of tinystories_val.txt, CPU, fp32): baseline 33.97,
W8A16 per-channel 33.99 (+0.07%), W4A16 g128 36.96 (+8.8%). The W4A16 bound below (+15%)
leaves room for other CPUs' float rounding, not for a regression to a broken model."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY_RUN
from qrecipe.engine.checkpoint import load_checkpoint
from qrecipe.engine.errors import ConfigError
from qrecipe.engine.events import PROGRESS, Stage
from qrecipe.engine.run import run

RUN = TINY_RUN + ["eval.windows=16"]


@pytest.fixture(scope="module")
def w8_and_w4(tmp_path_factory):
    import os

    from conftest import compose_cfg

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("QRECIPE_HOME")
    os.environ["QRECIPE_HOME"] = str(home)
    events = []
    try:
        w8 = run(compose_cfg(*RUN, "recipe=w8a16"), progress=False, on_event=events.append)
        w8.extra["events"], w8.extra["home"] = events, home
        w4 = run(compose_cfg(*RUN, "recipe=w4a16"), progress=False)
    finally:
        if old is None:
            os.environ.pop("QRECIPE_HOME", None)
        else:
            os.environ["QRECIPE_HOME"] = old
    return w8, w4


def test_a_run_reports_typed_stages_in_order(w8_and_w4):
    events = w8_and_w4[0].extra["events"]
    stages = list(dict.fromkeys(e.stage for e in events))
    assert stages == [s for s in Stage if s in stages]  # each stage entered once, in run order
    assert stages[0] is Stage.STARTED and stages[-1] is Stage.DONE
    assert {Stage.LOADING, Stage.BASELINE, Stage.QUANTIZING, Stage.SCORING, Stage.TIMING,
            Stage.CHECKPOINT, Stage.LAYER_ERROR} <= set(stages)
    progress = [e.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert PROGRESS == dict(sorted(PROGRESS.items(), key=lambda kv: kv[1]))  # fractions rise in Stage order
    assert list(PROGRESS) == list(Stage)


def test_without_a_recorder_a_run_records_nothing(w8_and_w4):
    # the engine writes its run folders and the baseline cache; registry and MLflow are the recorder's
    assert {p.name for p in w8_and_w4[0].extra["home"].iterdir()} == {"runs", "baselines"}
    assert w8_and_w4[0].summary()["output_dir"] and "variant_id" not in w8_and_w4[0].summary()


def test_every_recorded_metric_is_named_once_in_metric_names(w8_and_w4):
    from qrecipe.engine import metric_names as M

    for result in w8_and_w4:
        unnamed = [k for k in result.metrics
                   if k not in M.METRICS and not (k.startswith("task.") and k.rsplit(".", 1)[-1] in M.TASK_KINDS)
                   and k != M.backend_metric(k.split(".", 1)[-1])]
        assert unnamed == []
    assert all(m.better in (None, "lower", "higher") for m in M.METRICS.values())


def test_w8a16_is_within_one_percent_of_baseline(w8_and_w4):
    m = w8_and_w4[0].metrics
    assert abs(m["ppl"] / m["ppl_baseline"] - 1) < 0.01
    assert m["weight_bytes"] < m["weight_bytes_baseline"]


def test_w4a16_is_worse_than_w8a16_but_bounded(w8_and_w4):
    w8, w4 = (r.metrics for r in w8_and_w4)
    assert math.isfinite(w4["ppl"])
    assert w8["ppl"] < w4["ppl"] < 1.15 * w4["ppl_baseline"]
    assert w4["weight_bytes"] < w8["weight_bytes"]


def test_output_folder_holds_the_variant(w8_and_w4):
    result = w8_and_w4[1]
    out = result.output_dir
    for name in ("config.yaml", "recipe.yaml", "plan.json", "plan.txt", "metrics.json", "model/model.safetensors",
                 "model/qrecipe_quant.json", "model/config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "plan.json").read_text())["plan_hash"] == result.plan.plan_hash
    assert json.loads((out / "metrics.json").read_text())["metrics"]["ppl"] == result.metrics["ppl"]
    assert "W4A16" in (out / "recipe.yaml").read_text()
    assert not list(out.parent.glob(".*partial*"))


def test_checkpoint_reproduces_the_measured_perplexity(w8_and_w4):
    from qrecipe.engine.data import load_documents, token_windows
    from qrecipe.engine.evaluate import perplexity

    result = w8_and_w4[1]
    model, tok, _ = load_checkpoint(result.output_dir / "model")
    ev = result.settings.eval
    windows = token_windows(tok, load_documents(ev.data), ev.seq_len, ev.windows)
    assert perplexity(model, windows, ev.batch_size, progress=False).ppl == pytest.approx(result.metrics["ppl"],
                                                                                        rel=1e-6)


def test_a_failing_run_leaves_nothing_behind(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path))
    # 5000 windows of 256 tokens is more than the text holds: fails after the model loads.
    with pytest.raises(ConfigError, match=r"eval.windows"):
        run(compose(*TINY_RUN, "eval.windows=5000"), progress=False)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_a_calibrated_run_records_its_calibration_data(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path))
    result = run(compose(*TINY_RUN, "recipe=gptq", "data@calib.data=tinystories", "calib.samples=4",
                         "calib.seq_len=64"), progress=False)
    record = json.loads((result.output_dir / "metrics.json").read_text())
    assert record["calibration"] == {"data": "tinystories", "path": record["calibration"]["path"], "split": "validation",
                                     "samples": 4, "seq_len": 64, "seed": 0}
    assert record["metrics"]["calibration_tokens"] == 4 * 64
