"""A cancel that the service acknowledged holds, whatever stage the run is in. Each run
cancelled at a stage ends cancelled, registers nothing (its registry run failed, no variant
measured), leaves no folder, and its MLflow run is KILLED.

- Every stage, with the attempt's own code (registry/jobs/attempt.py run_job: its stage
  boundaries, its recorder, the job row) on TinyStories-656K in this process, the job
  cancelled as the run reaches the stage.
- Two stages end to end over HTTP: a real service and worker processes, each run held at its
  stage (`debug.pause_at`, behind jobs.debug_kinds) and cancelled there; the worker stops it.

The last stage, `recording`, is where the run's folder is complete and its registration about
to be written: the cancel and the registration are decided in one transaction (tested without
a run in test_queue.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TINY_RUN
from jobs_service import FAST, Service, cancel_at_stage, wait_for

from qrecipe.engine.events import Stage

pytestmark = pytest.mark.slow

STAGES = [s.value for s in Stage if s is not Stage.DONE]
FINAL = ("succeeded", "failed", "cancelled")
TRACKED = ["tracking=local"]  # MLflow on: that its runs end KILLED is checked


def _overrides(stage: str) -> list[str]:
    # peak memory is a stage only when it is measured (a child process loads the variant)
    return TINY_RUN + ["eval.memory.method=child"] if stage == Stage.PEAK_MEMORY.value else TINY_RUN


def _nothing_registered(home: Path, runs: int) -> None:
    from mlflow.tracking import MlflowClient

    from qrecipe.registry.db import default_url, open_registry
    from qrecipe.registry.queries import list_variants, variant_runs

    engine = open_registry(default_url(home))
    [variant] = list_variants(engine)
    assert variant.status == "failed" and variant.metrics is None  # no measured run
    recorded = variant_runs(engine, variant.id)
    assert len(recorded) == runs and {r.status for r in recorded} == {"failed"}
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert {client.get_run(r.mlflow_run_id).info.status for r in recorded} == {"KILLED"}
    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []  # no folder, staged or final


def test_a_run_cancelled_at_any_stage_registers_nothing(shared):
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.jobs.requests import JobRequest
    from qrecipe.registry.jobs.service.serve import Operator

    home = Path(os.environ["QRECIPE_HOME"])
    op = Operator.load(TRACKED)
    engine = open_registry(op.registry_url)
    for stage in STAGES:
        cancel_at_stage(engine, op, JobRequest(recipe="w8a16", overrides=_overrides(stage)), stage, stage)
    _nothing_registered(home, len(STAGES))


def test_a_job_cancelled_over_http_at_a_stage_holds(shared, tmp_path):
    stages = (Stage.QUANTIZING.value, Stage.RECORDING.value)  # mid-run, and the last point before it is recorded
    home = tmp_path / "home"
    service = Service(home, [o for o in FAST if not o.startswith("tracking=")] + TRACKED, workers=2)
    try:
        with service.client(None) as api:
            jobs = {}
            for stage in stages:
                r = api.post("/jobs", json={"recipe": "w8a16", "overrides": _overrides(stage),
                                            "debug": {"pause_at": stage}})
                assert r.status_code == 201, r.text
                jobs[stage] = r.json()["id"]
            waiting = dict(jobs)

            def cancel_the_paused() -> bool:
                for stage, job_id in list(waiting.items()):
                    job = api.get(f"/jobs/{job_id}").json()
                    assert job["status"] not in FINAL, (stage, job, api.get(f"/jobs/{job_id}/logs").text)
                    if f"debug: paused at stage {stage} " in api.get(f"/jobs/{job_id}/logs").text:
                        answer = api.post(f"/jobs/{job_id}/cancel")
                        assert answer.status_code == 200 and answer.json()["cancel_requested"], answer.text
                        del waiting[stage]
                return not waiting

            wait_for("each job to pause at its stage and be cancelled", cancel_the_paused, timeout=600, every=0.3)
            done = {stage: wait_for(f"job {job_id} to end", lambda job_id=job_id: (
                j := api.get(f"/jobs/{job_id}").json())["status"] in FINAL and j, timeout=300)
                for stage, job_id in jobs.items()}
    finally:
        assert service.stop() == 0, service.output()
    for stage, job in done.items():
        assert (job["status"], job["result"], job["attempts"]) == ("cancelled", None, 1), (stage, job)
        assert job["error"] == "cancelled while running"
    _nothing_registered(home, len(stages))
