"""The job tables (revision 0003). Jobs live in the registry database, beside the variants they
produce, so a job and its variant are written by the same database and survive the same restarts.

    job_submissions  one POST: its Idempotency-Key (if any) and a hash of the request, so the same
                     key with the same request returns the jobs it made, and a sweep is one
                     submission of many jobs
    jobs             one unit of work: what to run (the composed config, kept as submitted), its
                     status, lease, progress and outcome
    job_attempts     each time a worker claimed the job: who, when, how it ended
    job_logs         the output of each attempt, in chunks, so any client of the service can
                     read it wherever the worker ran

Leases are compared against the database's clock (seconds since the epoch, as a float), never
a worker's, so workers on machines whose clocks disagree still agree on when a lease expired.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..models import Base, utcnow

# A job's statuses; the last three are final.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = (SUCCEEDED, FAILED, CANCELLED)

# What a job runs: a recipe run; a plan only; a sleep (tests and benchmarks, off by default).
KINDS = ("run", "plan", "sleep")

# How an attempt ended (job_attempts.outcome).
LOST, RELEASED = "lost", "released"  # worker died (lease expired) / worker shut down and gave it back


class JobSubmission(Base):
    __tablename__ = "job_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    # claim: the oldest of the highest priority among the queued
    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("job_submissions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # what was asked for (for people), and what runs (the composed config, unresolved)
    recipe: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    target: Mapped[str | None] = mapped_column(String(100))
    overrides: Mapped[list[Any]]
    params: Mapped[dict[str, Any]]
    config_yaml: Mapped[str | None] = mapped_column(Text)
    plan_hash: Mapped[str | None] = mapped_column(String(64))
    expected_variant_id: Mapped[str | None] = mapped_column(String(32))  # from the plan at submit time
    # attempts and the current lease (lease_token fences every write of an attempt)
    max_attempts: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(32))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)  # database clock, epoch seconds
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # progress and outcome
    stage: Mapped[str | None] = mapped_column(String(200))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    variant_id: Mapped[str | None] = mapped_column(String(32))  # the variant the run recorded
    run_number: Mapped[int | None] = mapped_column(Integer)  # its variant_runs.run_number
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]  # first claimed
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobAttempt(Base):
    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_job_attempts_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)
    lease_token: Mapped[str] = mapped_column(String(32))
    worker_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(20))  # a job status, lost or released
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class JobLog(Base):
    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
