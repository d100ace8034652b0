"""`qrecipe serve` and `qrecipe worker` as real processes for the job tests: started as a user
would start them, on a free loopback port, and stopped (or killed) by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
from local_servers import free_port

# Short leases and heartbeats so that lost workers and cancels are noticed within seconds.
FAST = ["jobs.debug_kinds=true", "jobs.lease_seconds=3", "jobs.heartbeat_seconds=0.3", "jobs.poll_seconds=0.2",
        "jobs.log_flush_seconds=0.2", "jobs.cancel_grace_seconds=5", "tracking=off"]
QRECIPE = str(Path(sys.executable).with_name("qrecipe"))  # the command a user runs
WRITE_TOKEN, READ_TOKEN = "w" * 8 + "-write-token-for-tests", "r" * 8 + "-read-token-for-tests"


def wait_for(what: str, check: Callable[[], object], timeout: float = 120, every: float = 0.2):
    """check()'s first truthy value; fails after timeout seconds (generous: the CPU is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Proc:
    """A qrecipe command in its own process group, its output in a file."""

    def __init__(self, args: list[str], home: Path, log: Path, env: dict[str, str] | None = None):
        self.log, self.home = log, home
        full_env = {**os.environ, "QRECIPE_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
        full_env.pop("QRECIPE_PARENT_PID", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([QRECIPE, *args], stdout=out,
                                         stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process alone (its children die with it: PR_SET_PDEATHSIG)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Service(Proc):
    def __init__(self, home: Path, overrides: list[str], *, workers: int = 2, tokens: str = "", port: int = 0,
                 host: str = "127.0.0.1", log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--host", host, "--port", str(self.port), "--workers", str(workers), *overrides],
                         home, log or home.parent / f"serve-{self.port}.log", {"QRECIPE_API_TOKENS": tokens})
        wait_for(f"the service on {self.url}\n{self.output()}", self._answers)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"qrecipe serve exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str | None = WRITE_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"Authorization": f"Bearer {token}"} if token else {})


def cancel_at_stage(engine, op, request, stage: str, request_hash: str) -> list[str]:
    """Submit `request`, claim it and run it with the attempt's own code in this process
    (registry/jobs/attempt.py run_job), cancelling the job as the run reaches `stage`; checks
    that it stopped there (Cancelled) and ends cancelled with no result. The stages it saw."""
    import pytest

    from qrecipe.engine.process import Cancelled
    from qrecipe.registry.jobs import queue
    from qrecipe.registry.jobs.attempt import run_job
    from qrecipe.registry.jobs.submit import Submitter
    from qrecipe.registry.jobs.worker import attempt_payload

    queue.submit(engine, Submitter(op.jobs, op.sections()).specs(request), request_hash=request_hash, actor="test")
    claim = queue.claim(engine, "test", 60)
    seen: list[str] = []

    def emit(event: str, **data) -> None:
        if event == "stage":
            seen.append(data["stage"])
            if data["stage"] == stage:  # the cancel arrives as the run reaches this stage
                queue.cancel(engine, claim.job.id)

    with pytest.raises(Cancelled, match=rf"job {claim.job.id} was cancelled \(the run stopped at stage {stage}\)"):
        run_job(attempt_payload(claim, op.jobs, op.sections(), op.registry_url), emit)
    assert seen[-1] == stage
    assert queue.finish(engine, claim.job.id, claim.token, "failed", error="cancelled") == "cancelled"
    job = queue.get_job(engine, claim.job.id)
    assert (job.status, job.result) == ("cancelled", None)
    return seen
