"""Each attempt as a Ray task on a cluster (jobs.executor=ray, jobs.ray.address).

The task runs on whichever node Ray picks and starts the same attempt process there, writing
the job's log and progress straight to the registry database (so every node needs to reach
it: use PostgreSQL). The worker that claimed the job keeps its lease and heartbeat, and stops
the task on cancel: ray.cancel first interrupts it (the task then stops its attempt process
with SIGTERM, so a run records itself failed), then kills it after the grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from ..child import AttemptProcess, DbSink, Outcome, attempt_env
from ..config import JobsConfig
from ..models import FAILED
from ..queue import Claim

log = logging.getLogger(__name__)


def ray_attempt(payload: dict[str, Any], registry_url: str, token: str, attempt: int, flush_seconds: float,
                env: dict[str, str], grace: float) -> dict[str, Any]:
    """The body of the Ray task (runs on a Ray worker)."""
    import ray

    from ...db import open_registry

    sink = DbSink(open_registry(registry_url), payload["job_id"], attempt, token, flush_seconds)
    process = AttemptProcess(payload, sink, env)
    process.start()
    try:
        while (outcome := process.wait(1.0)) is None:
            pass
    except BaseException:  # ray.cancel interrupts the task: stop the attempt the way a local cancel does
        process.stop(grace)
        raise
    if outcome.result is not None:
        outcome.result = {**outcome.result, "ray_node": ray.util.get_node_ip_address(), "ray_worker_pid": os.getpid()}
    return outcome.to_dict()


class RayExecution:
    def __init__(self, ref):
        self.ref = ref

    def wait(self, timeout: float) -> Outcome | None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return Outcome.from_dict(ray.get(self.ref))
        except ray.exceptions.TaskCancelledError:
            return Outcome(FAILED, error="the Ray task was cancelled")
        except ray.exceptions.RayError as e:  # the node or its worker died: another attempt may succeed
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return Outcome(FAILED, error=f"the Ray task failed: {first[:500]}", retry=True)

    def stop(self, grace: float) -> None:
        import ray

        ray.cancel(self.ref, force=False)
        deadline = time.monotonic() + grace + 5
        while self.wait(0.5) is None and time.monotonic() < deadline:
            pass
        if self.wait(0) is None:
            ray.cancel(self.ref, force=True)


class RayExecutor:
    def __init__(self, cfg: JobsConfig, registry_url: str):
        import ray

        self.cfg, self.registry_url = cfg, registry_url
        if not ray.is_initialized():
            where = cfg.ray.address or "a new local Ray instance"
            log.info("connecting to Ray at %s", where)
            # ray.init installs its own SIGTERM handler (it exits); the worker's own must stay, so
            # that SIGTERM stops the attempt and hands the job back
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            ray.init(address=cfg.ray.address, include_dashboard=False, configure_logging=False,
                     log_to_driver=False)
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
        self.task = ray.remote(num_cpus=cfg.ray.num_cpus, max_retries=0)(ray_attempt)

    def start(self, claim: Claim, payload: dict[str, Any]) -> RayExecution:
        ref = self.task.remote(payload, self.registry_url, claim.token, claim.attempt, self.cfg.log_flush_seconds,
                               attempt_env(self.cfg.allow_hub), self.cfg.cancel_grace_seconds)
        return RayExecution(ref)

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
