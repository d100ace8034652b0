"""Writing a run into the registry: the variant it belongs to (found or created), the run
itself (running -> succeeded | failed) and the baseline it was scored against.

A variant is identified by its base model, target, recipe hash and plan hash; its id is a
hash of those, so a re-run of the same recipe on the same model and target finds the same
row and is recorded as run number n + 1 of it. Each step is one short transaction that
takes the write lock first (db.write_session), so concurrent runs serialise instead of
racing; on PostgreSQL, where two sessions can still both miss a row and insert it, the
loser of the unique constraint retries and finds the winner's row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from .db import write_session
from .models import (FAILED, MEASURED, PENDING, RUNNING, SUCCEEDED, Baseline, BaseModelRecord, Variant, VariantRun,
                     utcnow)

T = TypeVar("T")


@dataclass(frozen=True)
class VariantIdentity:
    model: str
    model_source: str
    model_type: str
    target: str
    recipe_name: str
    recipe_hash: str
    plan_hash: str
    scheme_mix: str
    requires: tuple[str, ...]

    @property
    def variant_id(self) -> str:
        blob = json.dumps([self.model, self.target, self.recipe_hash, self.plan_hash]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class RunHandle:
    variant_id: str
    run_id: int
    run_number: int

    @property
    def is_rerun(self) -> bool:
        return self.run_number > 1


def write_with_retry(engine: Engine, step: Callable[[Any], T]) -> T:
    """step(session) in a write transaction; once more if a concurrent insert won the race."""
    for attempt in (1, 2):
        try:
            with write_session(engine) as session:
                return step(session)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _base_model(session, ident: VariantIdentity) -> BaseModelRecord:
    row = session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == ident.model))
    if row is None:
        row = BaseModelRecord(name=ident.model, source=ident.model_source, model_type=ident.model_type)
        session.add(row)
        session.flush()
    return row


def begin_run(engine: Engine, ident: VariantIdentity, device: str, qrecipe_version: str,
              git_commit: str | None, eval_protocol: dict[str, Any] | None = None,
              mlflow_run_id: str | None = None) -> RunHandle:
    """Find or create the variant and add a `running` run to it, with the eval protocol it
    will be measured under (engine/evaluate/protocol.py) and its MLflow run (so that whoever
    finds the run abandoned can close that too)."""
    from qrecipe.engine.evaluate.protocol import protocol_hash

    protocol = protocol_hash(eval_protocol) if eval_protocol is not None else None

    def step(session) -> RunHandle:
        model = _base_model(session, ident)
        variant = session.scalar(select(Variant).where(Variant.id == ident.variant_id).with_for_update(of=Variant))
        if variant is None:
            variant = Variant(id=ident.variant_id, base_model_id=model.id, target=ident.target,
                              recipe_name=ident.recipe_name, recipe_hash=ident.recipe_hash,
                              plan_hash=ident.plan_hash, scheme_mix=ident.scheme_mix, requires=list(ident.requires),
                              status=PENDING, runs_count=0)
            session.add(variant)
            session.flush()
        number = (session.scalar(select(func.max(VariantRun.run_number))
                                 .where(VariantRun.variant_id == variant.id)) or 0) + 1
        run = VariantRun(variant_id=variant.id, run_number=number, status=RUNNING, device=device,
                         qrecipe_version=qrecipe_version, git_commit=git_commit, eval_protocol=protocol,
                         eval_protocol_spec=eval_protocol, mlflow_run_id=mlflow_run_id)
        session.add(run)
        variant.runs_count = number
        variant.updated_at = utcnow()
        session.flush()
        return RunHandle(variant.id, run.id, number)

    return write_with_retry(engine, step)


def record_baseline(engine: Engine, model: str, cache_key: str, device: str, dtype: str,
                    eval_settings: dict[str, Any], metrics: dict[str, Any], cache_path: str) -> int:
    """The baselines row for this cache key (created by the first run that computes it)."""
    def step(session) -> int:
        row = session.scalar(select(Baseline).where(Baseline.cache_key == cache_key))
        if row is None:
            model_id = session.scalar(select(BaseModelRecord.id).where(BaseModelRecord.name == model))
            row = Baseline(base_model_id=model_id, cache_key=cache_key, device=device, dtype=dtype,
                           eval_settings=eval_settings, metrics=metrics, cache_path=cache_path)
            session.add(row)
            session.flush()
        return row.id

    return write_with_retry(engine, step)


def finish_run(engine: Engine, handle: RunHandle, metrics: dict[str, Any], output_dir: str,
               mlflow_run_id: str | None, baseline_id: int | None,
               before_commit: Callable[[Any], None] | None = None) -> None:
    """Mark the run succeeded; the variant now shows this run's metrics and output.
    `before_commit(session)` runs in the same transaction and may refuse it by raising (a job's
    cancel and its success are decided there, registry/jobs/queue.py complete_in)."""
    with write_session(engine) as session:
        if before_commit is not None:
            before_commit(session)
        run = session.get(VariantRun, handle.run_id)
        run.status, run.metrics, run.output_dir = SUCCEEDED, metrics, output_dir
        run.mlflow_run_id, run.baseline_id, run.finished_at = mlflow_run_id, baseline_id, utcnow()
        variant = session.get(Variant, handle.variant_id)
        variant.status, variant.metrics, variant.output_dir = MEASURED, metrics, output_dir
        variant.mlflow_run_id, variant.device, variant.updated_at = mlflow_run_id, run.device, utcnow()


def fail_run(engine: Engine, handle: RunHandle, error: str, mlflow_run_id: str | None) -> None:
    """Mark the run failed; a variant that never succeeded is marked failed too."""
    with write_session(engine) as session:
        run = session.get(VariantRun, handle.run_id)
        run.status, run.error, run.mlflow_run_id, run.finished_at = FAILED, error[:4000], mlflow_run_id, utcnow()
        variant = session.get(Variant, handle.variant_id)
        if variant.status != MEASURED:
            variant.status = FAILED
        variant.updated_at = utcnow()


def close_abandoned_run(engine: Engine, variant_id: str, run_number: int, error: str, mlflow_status: str,
                        tracking=None) -> bool:
    """Mark a run that its process left `running` (it was killed, or its worker lost) failed with
    the reason, and end its MLflow run `mlflow_status` (FAILED or KILLED) when `tracking` (the
    settings naming the store) is given. False when the run was not left running."""
    from .db import read_session

    with read_session(engine) as s:
        row = s.scalar(select(VariantRun).where(VariantRun.variant_id == variant_id,
                                                VariantRun.run_number == run_number))
    if row is None or row.status != RUNNING:
        return False
    fail_run(engine, RunHandle(variant_id, row.id, run_number), error, row.mlflow_run_id)
    if row.mlflow_run_id and tracking is not None and tracking.tracking.enabled:
        from .tracking import close_run

        close_run(tracking, row.mlflow_run_id, mlflow_status)
    return True
