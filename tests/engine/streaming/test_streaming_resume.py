"""The resume folder: a different fingerprint starts over and says what differs; activations
beyond the host budget spill to disk and give the same packed tensors. (A real SIGKILL in the
middle of a calibrated run, resumed: tests/registry/jobs/test_streamed_job_resume.py.)"""

from __future__ import annotations

import pytest

from streaming_helpers import assert_same_tensors, in_memory, settings_of
from qrecipe.engine.streaming.resume import open_state


def test_a_different_fingerprint_starts_over_and_says_what_differs(tmp_path):
    folder = tmp_path / "m-abc"
    first = open_state(folder, {"plan_hash": "abc", "calibration": {"samples": 8}})
    first.done = 4
    first.save()
    (first.shards / "model-00001-of-00011.safetensors").write_bytes(b"x")
    same = open_state(folder, {"plan_hash": "abc", "calibration": {"samples": 8}})
    assert same.resumed and same.done == 4 and "resuming from block 4" in same.message
    other = open_state(folder, {"plan_hash": "abc", "calibration": {"samples": 16}})
    assert not other.resumed and other.done == 0
    assert "does not match this run (calibration differ); starting over" in other.message
    assert not any(other.shards.iterdir())


@pytest.mark.parametrize("budget", [0.0, 4.0])
def test_activations_beyond_the_budget_spill_to_disk_with_the_same_result(budget, tmp_path):
    from streaming_helpers import streamed

    tiny = ("model=tinystories-656k", "data@calib.data=tinystories", "calib.samples=8", "calib.seq_len=64",
            "calib.batch_size=2", "recipe=gptq", "run.streaming=always")
    s = settings_of(*tiny, f"run.activation_budget_gib={budget}", resume_dir=tmp_path / "resume")
    report = streamed(s, tmp_path / "streamed")
    in_memory(s, tmp_path / "memory")
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")
    spilled = [n for n in report.notes if "exceeded run.activation_budget_gib" in n]
    assert bool(spilled) == (budget == 0)


def test_the_fingerprint_follows_the_model_files_the_plan_and_the_calibration(tmp_path):
    import shutil

    import torch

    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.streaming.execute import fingerprint
    from qrecipe.engine.streaming.source import WeightSource
    from conftest import TINY

    model = tmp_path / "model"
    shutil.copytree(TINY, model)

    def of(*overrides):
        s = settings_of("model=hf", f"model.path={model}", "model.name=tiny", "recipe=gptq",
                        "data@calib.data=tinystories", *overrides, resume_dir=tmp_path)
        plan, _ = build_plan(s, torch.device("cpu"))
        return fingerprint(s, plan, WeightSource(model), torch.device("cpu"), torch.float32)

    base = of()
    assert base == of()
    assert of("calib.seed=1")["calibration"] != base["calibration"]
    assert of("recipe.base.group_size=32")["plan_hash"] != base["plan_hash"]
    (model / "model.safetensors").touch()  # same bytes, a new modification time: not the same files
    assert of()["model"] != base["model"]


def test_a_streamed_run_cancelled_while_recording_keeps_its_blocks_for_the_next(tmp_path, monkeypatch):
    """Cancelled at the last point a run can be (its folder complete, being recorded): nothing is
    recorded, the finished blocks stay, and the same run again resumes with every block done."""
    import json

    from conftest import TINY_RUN, compose_cfg
    from qrecipe.engine.events import Stage
    from qrecipe.engine.process import Cancelled
    from qrecipe.engine.run import run

    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path / "home"))
    cfg = compose_cfg(*TINY_RUN, "eval.windows=2", "eval.seq_len=64", "recipe=gptq", "data@calib.data=tinystories",
                      "calib.samples=4", "calib.seq_len=64", "eval.speed.enabled=false", "eval.tasks.families=[]",
                      "run.streaming=always", f"run.resume_dir={tmp_path / 'resume'}")

    def cancel_at_recording(event):
        if event.stage is Stage.RECORDING:
            raise Cancelled("cancelled while recording")

    with pytest.raises(Cancelled):
        run(cfg, progress=False, on_event=cancel_at_recording)
    (folder,) = [p for p in (tmp_path / "resume").iterdir() if p.suffix != ".lock"]
    assert json.loads((folder / "state.json").read_text())["done"] == 2  # TinyStories-656K: 2 blocks
    assert not list((tmp_path / "home" / "runs").iterdir())
    result = run(cfg, progress=False)
    assert any("resumed at block 2 of 2" in n for n in result.extra["notes"])
    assert not folder.exists()
