"""The queue: every state change of a job is one short write transaction.

Claiming takes the row with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
workers each get a different job without waiting on one another; on SQLite the transaction
starts with BEGIN IMMEDIATE (db.write_session), which serialises claimers on the database's
write lock. Either way a job is claimed by exactly one worker.

A claim starts an attempt and hands the worker a lease token. Every later write of that attempt
(heartbeat, progress, finish) names the token and does nothing once the token is no longer the
job's: a worker that lost its lease (it stalled, or was taken as dead and the job re-queued) can
never overwrite the outcome of the attempt that replaced it, so a job is completed once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError

from qrecipe.engine.errors import QRecipeError

from ..db import read_session, write_session
from ..models import utcnow
from .models import (CANCELLED, FAILED, FINAL, LOST, QUEUED, RELEASED, RUNNING, SUCCEEDED, Job, JobAttempt,
                     JobLog, JobSubmission)


CANCELLED_WHILE_RUNNING = "cancelled while running"  # the error of every running job that ends cancelled


class JobNotFound(QRecipeError):
    """No job has this id."""


class IdempotencyConflict(QRecipeError):
    """An Idempotency-Key was reused for a different request."""


class JobFinished(QRecipeError):
    """The job already ended; it cannot be cancelled."""


@dataclass(frozen=True)
class JobSpec:
    """One job to queue (submit.py builds these from a request)."""

    kind: str
    priority: int
    max_attempts: int
    overrides: list[str]
    params: dict[str, Any]
    recipe: str | None = None
    model: str | None = None
    target: str | None = None
    config_yaml: str | None = None
    plan_hash: str | None = None
    expected_variant_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """A job a worker now holds: the job as claimed, and the token that fences its writes."""

    job: Job
    token: str
    attempt: int


@dataclass(frozen=True)
class Beat:
    owned: bool  # False: the lease was lost; the attempt must stop and record nothing
    cancel_requested: bool = False


def db_now(session) -> float:
    """The database's clock in seconds since the epoch (leases never use a worker's clock)."""
    if session.get_bind().dialect.name == "postgresql":
        return float(session.scalar(text("SELECT extract(epoch from clock_timestamp())")))
    return float(session.scalar(text("SELECT (julianday('now') - 2440587.5) * 86400.0")))


# -- submitting -----------------------------------------------------------------------------------

def submit(engine: Engine, specs: list[JobSpec], *, request_hash: str, actor: str,
           idempotency_key: str | None = None) -> tuple[list[Job], bool]:
    """(the jobs, replayed): new jobs, or those an earlier submission with this key made."""
    for attempt in (1, 2):
        try:
            with write_session(engine) as s:
                if idempotency_key is not None:
                    earlier = _replay(s, idempotency_key, request_hash)
                    if earlier is not None:
                        return earlier, True
                submission = JobSubmission(idempotency_key=idempotency_key, request_hash=request_hash, actor=actor)
                s.add(submission)
                s.flush()
                jobs = [Job(submission_id=submission.id, kind=spec.kind, status=QUEUED, priority=spec.priority,
                            recipe=spec.recipe, model=spec.model, target=spec.target, overrides=list(spec.overrides),
                            params=dict(spec.params), config_yaml=spec.config_yaml, plan_hash=spec.plan_hash,
                            expected_variant_id=spec.expected_variant_id, max_attempts=spec.max_attempts,
                            attempts=0, cancel_requested=False, progress=0.0, stage="queued") for spec in specs]
                s.add_all(jobs)
                s.flush()
                return jobs, False
        except IntegrityError:  # PostgreSQL: a concurrent request with the same key inserted first
            if attempt == 2 or idempotency_key is None:
                raise
    raise AssertionError("unreachable")


def replay(engine: Engine, key: str, request_hash: str) -> list[Job] | None:
    """The jobs an earlier submission with this key made (None: the key is new)."""
    with read_session(engine) as s:
        return _replay(s, key, request_hash)


def _replay(session, key: str, request_hash: str) -> list[Job] | None:
    submission = session.scalar(select(JobSubmission).where(JobSubmission.idempotency_key == key))
    if submission is None:
        return None
    if submission.request_hash != request_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used for a different request "
                                  f"(submission {submission.id}); send a new key for a new request")
    return list(session.scalars(select(Job).where(Job.submission_id == submission.id).order_by(Job.id)))


# -- a worker's side ------------------------------------------------------------------------------

def claim(engine: Engine, worker_id: str, lease_seconds: float) -> Claim | None:
    """The oldest job of the highest priority, now running under a new lease; None if none is queued."""
    with write_session(engine) as s:
        job = s.scalars(select(Job).where(Job.status == QUEUED).order_by(Job.priority.desc(), Job.id)
                        .limit(1).with_for_update(skip_locked=True)).first()
        if job is None:
            return None
        token = uuid.uuid4().hex
        job.status, job.lease_token, job.worker_id = RUNNING, token, worker_id
        job.attempts += 1
        job.lease_expires_at = db_now(s) + lease_seconds
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        job.stage, job.progress, job.variant_id, job.run_number = "claimed", 0.0, None, None
        # claims are numbered apart from job.attempts: a released claim does not count as an attempt
        number = (s.scalar(select(func.max(JobAttempt.number)).where(JobAttempt.job_id == job.id)) or 0) + 1
        s.add(JobAttempt(job_id=job.id, number=number, lease_token=token, worker_id=worker_id))
        s.flush()
        return Claim(job=job, token=token, attempt=number)


def _held(session, job_id: int, token: str) -> Job | None:
    """The job if this token still holds it (row locked on PostgreSQL until commit)."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    return job if job is not None and job.lease_token == token and job.status == RUNNING else None


def heartbeat(engine: Engine, job_id: int, token: str, lease_seconds: float) -> Beat:
    """Renew the lease; say whether it is still held and whether a cancel was asked for."""
    with write_session(engine) as s:
        job = _held(s, job_id, token)
        if job is None:
            return Beat(owned=False)
        job.lease_expires_at = db_now(s) + lease_seconds
        job.heartbeat_at = utcnow()
        return Beat(owned=True, cancel_requested=job.cancel_requested)


def record_progress(engine: Engine, job_id: int, token: str, **fields: Any) -> bool:
    """Set stage, progress, variant_id or run_number of the running attempt (fenced by its token)."""
    allowed = {"stage", "progress", "variant_id", "run_number"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"record_progress: unknown fields {sorted(unknown)}")
    with write_session(engine) as s:
        result = s.execute(update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == RUNNING)
                           .values(**fields, updated_at=utcnow()))
        return result.rowcount == 1


def append_log(engine: Engine, job_id: int, attempt: int, chunk: str) -> None:
    if chunk:
        with write_session(engine) as s:
            s.add(JobLog(job_id=job_id, attempt=attempt, text=chunk))


def _close_attempt(session, job: Job, outcome: str, error: str | None) -> None:
    row = session.scalar(select(JobAttempt).where(JobAttempt.job_id == job.id,
                                                  JobAttempt.lease_token == job.lease_token))
    if row is not None and row.outcome is None:
        row.outcome, row.error, row.finished_at = outcome, error, utcnow()


def _end(session, job: Job, status: str, *, error: str | None = None, result: dict | None = None,
         outcome: str | None = None) -> None:
    _close_attempt(session, job, outcome or status, error)
    job.status, job.error, job.finished_at = status, error, utcnow()
    if result is not None:
        job.result = result
    job.lease_token = job.lease_expires_at = None
    job.stage = status
    if status == SUCCEEDED:
        job.progress = 1.0


def finish(engine: Engine, job_id: int, token: str, status: str, *, result: dict | None = None,
           error: str | None = None) -> str | None:
    """End the attempt: a compare-and-set on the job row. A cancel requested before this write
    wins over success and failure alike (the job ends cancelled). Returns the status the job now
    has: the one written, the one the attempt itself wrote (a run job completes in the
    transaction that registers its variant, complete_in), or None if the lease was lost."""
    if status not in FINAL:
        raise ValueError(f"finish: {status!r} is not a final status")
    with write_session(engine) as s:
        job = _held(s, job_id, token)
        if job is None:
            return _ended_by(s, token)
        if job.cancel_requested and status != CANCELLED:
            _end(s, job, CANCELLED, error=CANCELLED_WHILE_RUNNING)
            return CANCELLED
        if result is not None:
            job.variant_id = result.get("variant_id", job.variant_id)
            job.run_number = result.get("run_number", job.run_number)
        _end(s, job, status, error=error, result=result)
        return status



def _ended_by(session, token: str) -> str | None:
    """The final status the attempt holding `token` gave its job itself, if it did."""
    row = session.scalar(select(JobAttempt).where(JobAttempt.lease_token == token))
    return row.outcome if row is not None and row.outcome in FINAL else None


def ended_by(engine: Engine, token: str) -> str | None:
    """How the attempt with this lease token ended its job (None: not ended, or not by it)."""
    with read_session(engine) as s:
        return _ended_by(s, token)


class LeaseLost(QRecipeError):
    """The attempt no longer holds its job (its lease expired and the job went back to the queue)."""


def cancel_state(engine: Engine, job_id: int, token: str) -> str:
    """What an attempt should do at a stage boundary: "go", "cancel" (asked for) or "lost"."""
    with read_session(engine) as s:
        job = s.get(Job, job_id)
    if job is None or job.lease_token != token or job.status != RUNNING:
        return "lost"
    return "cancel" if job.cancel_requested else "go"


def hold_in(session, job_id: int, token: str, what: str = "its run") -> Job:
    """Inside a transaction that records a job's work: raises Cancelled if a cancel came first
    (and LeaseLost if the attempt lost the job), so nothing of the transaction is written; the
    job row stays locked until the transaction ends (cancel() takes the same lock)."""
    from qrecipe.engine.process import Cancelled

    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.lease_token != token or job.status != RUNNING:
        raise LeaseLost(f"job {job_id}: this attempt lost its lease before {what} was recorded; the job runs again")
    if job.cancel_requested:
        raise Cancelled(f"job {job_id} was cancelled before {what} was recorded")
    return job


def complete_in(session, job_id: int, token: str, result: dict[str, Any], what: str = "its run") -> None:
    """Inside the transaction that records a run job's variant (record.finish_run) or a search
    job's search: the job ends succeeded with its result, or, if a cancel came first, raises
    Cancelled and nothing of the transaction is written. cancel() takes the same row lock, so
    exactly one of the two wins: a cancel after this one is refused as too late (the job already
    succeeded)."""
    job = hold_in(session, job_id, token, what)
    job.variant_id, job.run_number = result.get("variant_id"), result.get("run_number")
    _end(session, job, SUCCEEDED, result=result)


def retry_or_fail(engine: Engine, job_id: int, token: str, error: str) -> str | None:
    """The attempt died without an answer (killed, out of memory): queue the job again while
    attempts remain, else fail it with the reason. Returns the new status (None: lease lost)."""
    with write_session(engine) as s:
        job = _held(s, job_id, token)
        if job is None:
            return None
        return _requeue_or_fail(s, job, FAILED, error)


def release(engine: Engine, job_id: int, token: str, reason: str) -> bool:
    """The worker is shutting down: the job goes back to the queue, and the attempt it gave up
    does not count against max_attempts (the job did nothing wrong)."""
    with write_session(engine) as s:
        job = _held(s, job_id, token)
        if job is None:
            return False
        if job.cancel_requested:
            _end(s, job, CANCELLED, error=CANCELLED_WHILE_RUNNING)
            return True
        _close_attempt(s, job, RELEASED, reason)
        job.attempts -= 1
        _back_to_queue(job, f"re-queued: {reason}")
        return True


def _back_to_queue(job: Job, stage: str) -> None:
    job.status, job.stage = QUEUED, stage[:200]
    job.lease_token = job.lease_expires_at = job.worker_id = None


def _requeue_or_fail(session, job: Job, outcome: str, error: str) -> str:
    if job.cancel_requested:
        _end(session, job, CANCELLED, error=CANCELLED_WHILE_RUNNING, outcome=outcome)
        return CANCELLED
    if job.attempts >= job.max_attempts:
        _end(session, job, FAILED, outcome=outcome,
             error=f"{error}; gave up after {job.attempts} attempt(s) (jobs.max_attempts={job.max_attempts})")
        return FAILED
    _close_attempt(session, job, outcome, error)
    job.error = error
    _back_to_queue(job, f"re-queued after attempt {job.attempts}: {error}")
    return QUEUED


@dataclass(frozen=True)
class LostRun:
    """A registry run an attempt had started when its worker was lost."""

    variant_id: str
    run_number: int
    error: str


def requeue_expired(engine: Engine) -> list[LostRun]:
    """Jobs whose lease expired (their worker died or stalled): re-queued while attempts remain,
    else failed with the reason; a job whose cancel was pending is cancelled. Returns the
    registry runs those attempts left `running`, for mark_lost_runs."""
    lost = []
    with write_session(engine) as s:
        now = db_now(s)
        for job in s.scalars(select(Job).where(Job.status == RUNNING, Job.lease_expires_at < now)
                             .order_by(Job.id).with_for_update(skip_locked=True)):
            error = (f"worker {job.worker_id} stopped renewing its lease during attempt {job.attempts} "
                     f"(it died or stalled)")
            if job.variant_id and job.run_number:
                lost.append(LostRun(job.variant_id, job.run_number, f"job {job.id}: {error}"))
            _requeue_or_fail(s, job, LOST, error)
    return lost


def mark_lost_runs(engine: Engine, lost: list[LostRun], tracking=None) -> None:
    """Mark the registry runs of lost attempts failed, and their MLflow runs FAILED where
    `tracking` names the store (a re-run records a new run of the variant)."""
    from ..record import close_abandoned_run

    for run in lost:
        close_abandoned_run(engine, run.variant_id, run.run_number, run.error, "FAILED", tracking)


# -- anyone's side --------------------------------------------------------------------------------

def cancel(engine: Engine, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is marked, and its worker stops it at its
    next heartbeat. Cancelling a cancelled job again is harmless; a finished one is refused."""
    with write_session(engine) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise JobNotFound(f"job {job_id}: no such job; `qrecipe jobs list` shows the ids")
        if job.status == QUEUED:
            _end(s, job, CANCELLED, error="cancelled before it started")
        elif job.status == RUNNING:
            job.cancel_requested = True
            job.stage = "cancelling"
        elif job.status != CANCELLED:
            raise JobFinished(f"job {job_id}: already {job.status}; only queued or running jobs can be cancelled")
        return job


def get_job(engine: Engine, job_id: int) -> Job:
    with read_session(engine) as s:
        job = s.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id}: no such job; `qrecipe jobs list` shows the ids")
    return job


def list_jobs(engine: Engine, status: str | None = None, limit: int = 100, before: int | None = None) -> list[Job]:
    """Newest first; `before` pages back from a job id."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if before:
        query = query.where(Job.id < before)
    with read_session(engine) as s:
        return list(s.scalars(query))


def attempts(engine: Engine, job_id: int) -> list[JobAttempt]:
    with read_session(engine) as s:
        return list(s.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)))


def logs(engine: Engine, job_id: int, after: int = 0, limit: int = 500) -> list[JobLog]:
    """Log chunks of the job with id > after, oldest first."""
    with read_session(engine) as s:
        return list(s.scalars(select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after)
                              .order_by(JobLog.id).limit(limit)))
