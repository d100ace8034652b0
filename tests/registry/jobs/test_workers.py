"""Workers and the service as processes that die: a worker killed with SIGKILL mid-job (its job
runs again on another worker and completes once), and the service stopped and started again
mid-queue (nothing lost, nothing run twice)."""

from __future__ import annotations

import re

import psutil
from jobs_service import FAST, Proc, Service, wait_for

from qrecipe.registry.db import default_url, open_registry
from qrecipe.registry.jobs import queue


def _sleep_jobs(engine, n: int, seconds: float) -> list[int]:
    specs = [queue.JobSpec(kind="sleep", priority=0, max_attempts=3, overrides=[], params={"seconds": seconds})
             for _ in range(n)]
    return [j.id for j in queue.submit(engine, specs, request_hash="t", actor="test")[0]]


def _log(engine, job_id: int) -> str:
    return "".join(chunk.text for chunk in queue.logs(engine, job_id))


def _pids(engine, job_id: int) -> list[int]:
    return [int(p) for p in re.findall(r"sleep job: pid (\d+)", _log(engine, job_id))]


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(postgres_url, tmp_path):
    engine = open_registry(postgres_url)
    (job_id,) = _sleep_jobs(engine, 1, seconds=3)
    first = Proc(["worker", f"registry.url={postgres_url}", *FAST], tmp_path / "home", tmp_path / "worker-1.log")
    (pid,) = wait_for("the first worker to start the job", lambda: _pids(engine, job_id))
    first.kill()  # SIGKILL: no chance to hand the job back
    wait_for("the killed worker's job process to die with it", lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=30)
    assert queue.get_job(engine, job_id).status == "running"  # until its lease expires
    second = Proc(["worker", f"registry.url={postgres_url}", *FAST], tmp_path / "home", tmp_path / "worker-2.log")
    try:
        job = wait_for("the job to complete on the second worker",
                       lambda: (j := queue.get_job(engine, job_id)).status in ("succeeded", "failed") and j)
    finally:
        assert second.stop() == 0, second.output()
    assert (job.status, job.attempts) == ("succeeded", 2), job.error
    assert [(a.number, a.outcome) for a in queue.attempts(engine, job_id)] == [(1, "lost"), (2, "succeeded")]
    assert len(_pids(engine, job_id)) == 2 and job.result["pid"] == _pids(engine, job_id)[1] != pid
    assert "Traceback" not in second.output()


def test_the_service_restarted_mid_queue_keeps_its_queue(tmp_path):
    home = tmp_path / "home"
    service = Service(home, FAST, workers=1)
    engine = open_registry(default_url(home))
    ids = _sleep_jobs(engine, 4, seconds=0.5)
    wait_for("the first job to run", lambda: _pids(engine, ids[0]))
    assert service.stop() == 0 and "qrecipe service stopped" in service.output()
    jobs = [queue.get_job(engine, i) for i in ids]
    assert [j.status for j in jobs[1:]] == ["queued"] * 3 and jobs[0].status in ("queued", "succeeded")
    # started again, as a user might, on every interface but without a token: it keeps to loopback
    again = Service(home, FAST, workers=1, host="0.0.0.0")
    try:
        assert "binding to 127.0.0.1 only, not 0.0.0.0" in again.output()
        listening = {c.laddr.ip for c in psutil.Process(again.proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
        done = [wait_for(f"job {i}", lambda i=i: (j := queue.get_job(engine, i)).status == "succeeded" and j)
                for i in ids]
    finally:
        assert again.stop() == 0, again.output()
    assert [j.attempts for j in done] == [1, 1, 1, 1]  # a job handed back on shutdown spends no attempt
    assert [len(_pids(engine, i)) for i in ids[1:]] == [1, 1, 1]
