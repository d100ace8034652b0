"""A worker: re-queue jobs whose worker was lost, claim the next job, run it through the executor
while renewing the lease, record how it ended. One job at a time per worker; run several
workers (`qrecipe worker --workers N`, `qrecipe serve --workers N`, or on other machines against
the same PostgreSQL) for more.

While an attempt runs, every heartbeat the worker renews its lease and looks for a cancel
request; a lease found lost (the worker stalled past it and the job went to another worker)
stops the attempt and records nothing. On shutdown (SIGTERM, Ctrl-C) the running attempt is
stopped and the job handed back to the queue for another worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ..record import close_abandoned_run
from . import queue
from .child import Outcome
from .config import JobsConfig, with_operator_sections
from .executors import Executor, make_executor
from .models import CANCELLED, FAILED, SUCCEEDED

log = logging.getLogger(__name__)


def attempt_payload(claim: queue.Claim, cfg: JobsConfig, operator: dict[str, Any],
                    registry_url: str) -> dict[str, Any]:
    """What the attempt process needs: the job's config with this machine's paths, tracking and
    the queue's registry in place of its own, the roots its paths must lie under, and its lease
    token (it fences the attempt's own checks and the write that records its run)."""
    job = claim.job
    payload = {"job_id": job.id, "kind": job.kind, "params": job.params or {}, "lease_token": claim.token,
               "allowed_roots": [str(r) for r in cfg.roots()], "allow_hub": cfg.allow_hub}
    if job.config_yaml:
        from omegaconf import OmegaConf

        payload["config_yaml"] = OmegaConf.to_yaml(
            with_operator_sections(OmegaConf.create(job.config_yaml), operator, registry_url))
    return payload


class Worker:
    def __init__(self, engine: Engine, registry_url: str, cfg: JobsConfig, operator: dict[str, Any],
                 executor: Executor | None = None, worker_id: str | None = None):
        self.engine, self.registry_url, self.cfg, self.operator = engine, registry_url, cfg, operator
        self.tracking = _tracking_of(operator)  # where the MLflow runs of abandoned attempts are closed
        self.executor = executor or make_executor(cfg, engine, registry_url)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()

    def run_forever(self) -> None:
        log.info("worker %s: waiting for jobs", self.id)
        try:
            while not self.stopping.is_set():
                try:
                    busy = self.run_once()
                except DBAPIError as e:  # the database restarted or is unreachable: wait and try again
                    log.warning("worker %s: database error (%s); retrying in %.0fs", self.id,
                                str(e).splitlines()[0], self.cfg.poll_seconds * 5)
                    self.stopping.wait(self.cfg.poll_seconds * 5)
                    continue
                if not busy:
                    self.stopping.wait(self.cfg.poll_seconds)
        finally:
            self.executor.close()
            log.info("worker %s: stopped", self.id)

    def run_once(self) -> bool:
        """Reap lost jobs, then claim and run one job; False if there was none."""
        lost = queue.requeue_expired(self.engine)
        if lost:
            queue.mark_lost_runs(self.engine, lost, self.tracking)
        claim = queue.claim(self.engine, self.id, self.cfg.lease_seconds)
        if claim is None:
            return False
        log.info("worker %s: job %s (%s), attempt %d of %d", self.id, claim.job.id, claim.job.kind,
                 claim.job.attempts, claim.job.max_attempts)
        try:
            payload = attempt_payload(claim, self.cfg, self.operator, self.registry_url)
            execution = self.executor.start(claim, payload)
        except Exception as e:  # noqa: BLE001 - a job that cannot even start fails with the reason
            log.exception("worker %s: job %s could not start", self.id, claim.job.id)
            queue.finish(self.engine, claim.job.id, claim.token, "failed", error=f"could not start: {e}")
            return True
        self._supervise(claim, execution)
        return True

    def _supervise(self, claim: queue.Claim, execution) -> None:
        job_id, token = claim.job.id, claim.token
        while (outcome := execution.wait(self.cfg.heartbeat_seconds)) is None:
            try:
                beat = queue.heartbeat(self.engine, job_id, token, self.cfg.lease_seconds)
            except DBAPIError as e:  # keep the attempt: if the lease lapses meanwhile, the next beat says so
                log.warning("worker %s: heartbeat of job %s failed (%s); retrying", self.id, job_id,
                            str(e).splitlines()[0])
                continue
            if not beat.owned:
                log.warning("worker %s: lost the lease of job %s; stopping its attempt", self.id, job_id)
                execution.stop(grace=0)
                return
            if beat.cancel_requested:
                self._stop(execution, job_id, token)
                status = queue.finish(self.engine, job_id, token, CANCELLED, error=queue.CANCELLED_WHILE_RUNNING)
                self._close_abandoned(job_id, status)
                return
            if self.stopping.is_set():
                self._stop(execution, job_id, token)
                reason = f"worker {self.id} shut down"
                if queue.release(self.engine, job_id, token, reason):
                    self._close_abandoned(job_id, "released", reason)
                return
        self._record(claim, outcome)

    def _stop(self, execution, job_id: int, token: str) -> None:
        """Stop the attempt (SIGTERM, SIGKILL after the grace period) while renewing the lease: a run
        unwinding on a busy machine can take longer than a lease, and must not be taken as lost."""
        stopped = threading.Event()

        def stop() -> None:
            try:
                execution.stop(self.cfg.cancel_grace_seconds)
            finally:
                stopped.set()

        threading.Thread(target=stop, name=f"stop-job-{job_id}", daemon=True).start()
        while not stopped.wait(self.cfg.heartbeat_seconds):
            try:
                queue.heartbeat(self.engine, job_id, token, self.cfg.lease_seconds)
            except DBAPIError as e:
                log.warning("worker %s: heartbeat of job %s failed while stopping it (%s)", self.id, job_id,
                            str(e).splitlines()[0])

    def _record(self, claim: queue.Claim, outcome: Outcome) -> None:
        job_id, token = claim.job.id, claim.token
        for wait in (1, 2, 4, 8, 0):  # the database may be restarting; past the lease, the job re-runs
            try:
                if outcome.status == SUCCEEDED:
                    status = queue.finish(self.engine, job_id, token, SUCCEEDED, result=outcome.result)
                elif outcome.retry:
                    status = queue.retry_or_fail(self.engine, job_id, token, outcome.error)
                else:
                    status = queue.finish(self.engine, job_id, token, FAILED, error=outcome.error)
                break
            except DBAPIError:
                if not wait:
                    raise
                log.warning("worker %s: could not record job %s; retrying in %ds", self.id, job_id, wait)
                self.stopping.wait(wait)
        if status is None:  # the lease was lost while it ran: the attempt that replaced it decides
            log.warning("worker %s: job %s ended after its lease was lost; its outcome is not recorded", self.id,
                        job_id)
            return
        log.info("worker %s: job %s %s", self.id, job_id, status if not outcome.retry else f"died ({status})")
        self._close_abandoned(job_id, status)

    def _close_abandoned(self, job_id: int, status: str | None, reason: str | None = None) -> None:
        """A registry run the attempt left `running` (it was killed before it could record its end)
        is marked failed and its MLflow run ended: KILLED when the job was cancelled or handed back."""
        if status in (None, SUCCEEDED):
            return
        job = queue.get_job(self.engine, job_id)
        if job.variant_id and job.run_number:
            why = f"job {job_id}: {reason or job.error or status}"
            close_abandoned_run(self.engine, job.variant_id, job.run_number, why,
                                "KILLED" if status in (CANCELLED, "released") else "FAILED", self.tracking)


def _tracking_of(operator: dict[str, Any]):
    """The operator's tracking settings (the paths and tracking sections), or None without them."""
    if not operator.get("paths"):
        return None
    from omegaconf import OmegaConf

    from qrecipe.engine.config.settings import load_store_settings

    return load_store_settings(OmegaConf.create(operator))
