"""A streamed run submitted as a job, whose worker is killed (SIGKILL) in the middle of
calibration: the job is queued again when the lease lapses, and its next attempt, with the same
config, finds the resume folder (under the operator's paths.root, not in the run's staging
folder), continues from the last finished block instead of starting again, and ends with the
packed tensors of an uninterrupted run (GPTQ, synthetic Llama: hidden 256, 8 blocks)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest
from jobs_service import FAST, Service, wait_for
from streaming_helpers import assert_same_tensors, in_memory, settings_of, synthetic_llama  # noqa: F401

pytestmark = pytest.mark.slow
BLOCKS = 8


def test_a_streamed_job_whose_worker_died_resumes(shared, synthetic_llama, tmp_path):
    model = synthetic_llama.build(tmp_path / "models" / "synthetic",
                                  synthetic_llama.llama_config(256, BLOCKS, 704, 8, 2, 2048, "float32"))
    home = tmp_path / "home"
    service = Service(home, FAST + [f"jobs.allowed_roots=[{shared},{tmp_path / 'models'}]"], workers=1)
    overrides = ["model=hf", f"model.path={model}", "model.name=synthetic", "data@calib.data=tinystories",
                 "calib.samples=4", "calib.seq_len=64", "data@eval.data=tinystories", "eval.windows=2",
                 "eval.seq_len=64", "eval.tasks.families=[]", "eval.speed.enabled=false", "eval.memory.method=off",
                 "run.streaming=always"]
    try:
        with service.client(None) as api:
            job = api.post("/jobs", json={"recipe": "gptq", "target": "cpu", "overrides": overrides})
            assert job.status_code == 201, job.text
            job = job.json()

            def done_blocks() -> int:
                states = list((home / "resume").glob("*/state.json"))
                try:
                    return json.loads(states[0].read_text())["done"] if states else 0
                except (ValueError, OSError):  # being replaced
                    return 0

            wait_for("3 blocks done", lambda: done_blocks() >= 3, timeout=600, every=0.02)
            attempt = next(p for p in psutil.Process(service.proc.pid).children(recursive=True)
                           if "qrecipe.registry.jobs.attempt" in " ".join(p.cmdline()))
            attempt.parent().send_signal(signal.SIGKILL)  # the worker; its attempt dies with it
            psutil.wait_procs([attempt], timeout=30)
            killed_at = done_blocks()
            assert 3 <= killed_at < BLOCKS

            def ended():
                j = api.get(f"/jobs/{job['id']}").json()
                return j["status"] in ("succeeded", "failed", "cancelled") and j

            done = wait_for("the job to end", ended, timeout=600, every=0.5)
            logs = api.get(f"/jobs/{job['id']}/logs").text
            assert done["status"] == "succeeded", (done["error"], logs[-3000:])
            assert done["attempts"] == 2
            assert f"resumed from block {killed_at} of {BLOCKS}" in logs
            record = json.loads((Path(done["result"]["output_dir"]) / "metrics.json").read_text())
            assert any(f"resumed at block {killed_at} of {BLOCKS}" in n for n in record["notes"])
            assert [p.name for p in (home / "resume").iterdir() if p.suffix != ".lock"] == []
            second = logs[logs.index("resumed from block"):]
            quantized = [line for line in second.splitlines() if "quantized and written" in line]
            assert [int(line.split("block ")[1].split("/")[0]) for line in quantized] == \
                list(range(killed_at + 1, BLOCKS + 1))  # the finished blocks are not done again

        same = [o for o in overrides if not o.startswith("run.streaming")]
        in_memory(settings_of("recipe=gptq", *same, resume_dir=tmp_path / "unused"), tmp_path / "uninterrupted")
        assert_same_tensors(tmp_path / "uninterrupted", Path(done["result"]["output_dir"]) / "model")
    finally:
        assert service.stop() == 0, service.output()
