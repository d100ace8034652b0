"""jobs.executor=ray: a worker runs its job as a Ray task on a cluster, here a one-node Ray
cluster on loopback that the test starts (`ray start --head`) and stops."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from jobs_service import FAST, Proc, free_port, wait_for

from qrecipe.registry.db import default_url, open_registry
from qrecipe.registry.jobs import queue

pytest.importorskip("ray", reason="jobs.executor=ray needs the ray package (pip install 'qrecipe[ray]')")


# Ray on loopback only: Ray swaps 127.0.0.1 for the machine's routable address unless it takes
# itself for a one-machine install (this switch). The cluster keeps Ray's default token
# authentication, as the clusters users run do (README: Ray), with a token of the test's own:
# head, worker and tasks read it from RAY_AUTH_TOKEN_PATH, never from ~/.ray/auth_token.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture
def ray_cluster():
    """(address, env) of a Ray head on 127.0.0.1 in its own process group, killed whole afterwards."""
    port = free_port()
    # Ray's socket paths must stay short: a folder of its own under /tmp, not pytest's tmp_path
    temp = Path(tempfile.mkdtemp(prefix="qr-ray-"))
    (temp / "auth_token").write_text(secrets.token_hex(32))
    env = {**RAY_ENV, "RAY_AUTH_TOKEN_PATH": str(temp / "auth_token")}
    ray = Path(sys.executable).with_name("ray")
    log = open(temp / "head.log", "wb")
    head = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})
    try:
        wait_for("the Ray head", lambda: b"Ray runtime started" in (temp / "head.log").read_bytes() or
                 head.poll() is not None, timeout=120)
        assert head.poll() is None, (temp / "head.log").read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started
        head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_job_runs_as_a_ray_task(ray_cluster, tmp_path):
    address, env = ray_cluster
    home = tmp_path / "home"
    engine = open_registry(default_url(home))
    spec = queue.JobSpec(kind="sleep", priority=0, max_attempts=1, overrides=[], params={"seconds": 0.2})
    (job,) = queue.submit(engine, [spec], request_hash="ray", actor="test")[0]
    worker = Proc(["worker", "jobs.executor=ray", f"jobs.ray.address={address}", *FAST], home,
                  tmp_path / "worker.log", env)

    def ended():
        assert worker.proc.poll() is None, worker.output()
        return (j := queue.get_job(engine, job.id)).status in ("succeeded", "failed") and j

    try:
        done = wait_for("the job to end on Ray", ended, timeout=180)
    finally:
        assert worker.stop() == 0, worker.output()
    assert done.status == "succeeded", (done.error, worker.output())
    assert done.result["ray_node"] == "127.0.0.1" and done.result["ray_worker_pid"] != worker.proc.pid
    assert "sleep job: done" in "".join(c.text for c in queue.logs(engine, job.id))
