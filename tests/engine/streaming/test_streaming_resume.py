"""A streamed run killed with SIGKILL in the middle of calibration continues, when started again
with the same settings, from its last finished block, and ends with the packed tensors an
uninterrupted run gives; a different fingerprint starts over and says why.

The killed run is a real `qrecipe run` (GPTQ, synthetic Llama: hidden 256, 10 blocks), killed
once its resume state says 3 blocks are done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from streaming_helpers import assert_same_tensors, in_memory, settings_of, synthetic_llama  # noqa: F401
from qrecipe.engine.streaming.resume import open_state

BLOCKS = 10


def _overrides(model, tmp_path) -> list[str]:
    return ["model=hf", f"model.path={model}", "model.name=synthetic-resume", "recipe=gptq",
            "data@calib.data=tinystories", "calib.samples=4", "calib.seq_len=64", "data@eval.data=tinystories",
            "eval.windows=2", "eval.seq_len=64", "eval.tasks.families=[]", "eval.speed.enabled=false",
            "eval.memory.method=off", "tracking=off", "registry=off"]


def test_a_killed_run_resumes_from_its_last_finished_block(synthetic_llama, tmp_path):
    cfg = synthetic_llama.llama_config(256, BLOCKS, 704, 8, 2, 2048, "float32")
    model = synthetic_llama.build(tmp_path / "model", cfg)
    resume = tmp_path / "resume"
    overrides = _overrides(model, tmp_path) + ["target=cpu", "run.streaming=always", f"run.resume_dir={resume}"]
    cmd = [sys.executable, "-m", "qrecipe.registry.cli", "run", "--json", "--no-progress", *overrides]
    env = {**os.environ, "QRECIPE_HOME": str(tmp_path / "home")}

    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    done, deadline = 0, time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        states = list(resume.glob("*/state.json"))
        try:
            done = json.loads(states[0].read_text())["done"] if states else 0
        except (ValueError, OSError):  # being replaced
            pass
        if done >= 3:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait()
    assert first.returncode == -signal.SIGKILL, first.stderr.read()[-2000:]
    killed_at = json.loads(next(resume.glob("*/state.json")).read_text())["done"]
    assert 3 <= killed_at < BLOCKS

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from block {killed_at} of {BLOCKS}" in second.stderr
    quantized = [line for line in second.stderr.splitlines() if "quantized and written" in line]
    assert [line.split("block ")[1].split("/")[0] for line in quantized] == \
        [str(i) for i in range(killed_at + 1, BLOCKS + 1)]  # finished blocks are not redone
    result = json.loads(second.stdout.strip().splitlines()[-1])
    record = json.loads((tmp_path / result["output_dir"] / "metrics.json").read_text())
    assert any(f"resumed at block {killed_at} of {BLOCKS}" in n for n in record["notes"])

    settings = settings_of(*_overrides(model, tmp_path), resume_dir=tmp_path / "unused")
    in_memory(settings, tmp_path / "uninterrupted")
    assert_same_tensors(tmp_path / "uninterrupted", tmp_path / result["output_dir"] / "model")
    assert [p.name for p in resume.iterdir() if p.suffix != ".lock"] == []  # removed once the run succeeded


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
