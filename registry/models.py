"""The registry's tables. The registry is the source of truth for variants and promotions;
MLflow mirrors them (each run row names its MLflow run).

    base_models   one row per model name qrecipe quantizes
    baselines     one row per cached baseline (model, eval settings, device): where the cache
                  lives and the baseline's own scores
    variants      one row per distinct variant: model + target + recipe hash + plan hash. Its
                  metrics, output and MLflow run are those of its latest successful run.
    variant_runs  every `qrecipe run` of a variant (re-runs of one recipe add rows here, never
                  a second variant), with its status, metrics, output folder, MLflow run and
                  eval protocol (gates, compare and report use runs of one protocol)
    promotions    append-only audit trail of promotions and rollbacks (the promotion workflow
                  fills it; database triggers refuse UPDATE and DELETE)
    stage_pointers  which variant holds a stage (production) for a base model and target: one
                  row per (model, target, stage), a unique constraint, moved in the same
                  transaction that appends the promotions row (registry/promotion.py)
    sensitivity_scopes / sensitivities  the sensitivity cache of `qrecipe search`: one scope per
                  (model weights, calibration slice, numerics), one row per (measure, unit, candidate)
    searches      one row per search: its budget, the found recipe, the plans it measured (the
                  Pareto front) and the variant the found recipe became

    job_*         the job queue (jobs/models.py): submissions, jobs, attempts, log lines

Changes to these classes need an Alembic revision in migrations/versions/.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Statuses
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"  # a run
PENDING, MEASURED = "pending", "measured"  # a variant: measured once any run succeeded


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON().with_variant(JSONB(), "postgresql"),
                           list[Any]: JSON().with_variant(JSONB(), "postgresql"),
                           datetime: DateTime(timezone=True)}


class BaseModelRecord(Base):
    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)  # model.path as configured (folder, pypi:..., hub id)
    model_type: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Baseline(Base):
    __tablename__ = "baselines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)  # model files + eval settings + device
    device: Mapped[str] = mapped_column(String(100))
    dtype: Mapped[str] = mapped_column(String(32))
    eval_settings: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]  # the baseline's own scores (perplexity per text, ...)
    cache_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("base_model_id", "target", "recipe_hash", "plan_hash",
                                       name="uq_variants_identity"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # hash of the identity (variant_id())
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    target: Mapped[str] = mapped_column(String(100))
    recipe_name: Mapped[str] = mapped_column(String(200))
    recipe_hash: Mapped[str] = mapped_column(String(64))
    plan_hash: Mapped[str] = mapped_column(String(64))
    scheme_mix: Mapped[str] = mapped_column(Text)
    requires: Mapped[list[Any]]  # target capabilities its schemes need to run natively
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    # from the latest successful run
    device: Mapped[str | None] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any] | None]
    output_dir: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    runs_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    base_model: Mapped[BaseModelRecord] = relationship(lazy="joined", innerjoin=True)
    runs: Mapped[list["VariantRun"]] = relationship(back_populates="variant", order_by="VariantRun.id")


class VariantRun(Base):
    __tablename__ = "variant_runs"
    __table_args__ = (UniqueConstraint("variant_id", "run_number", name="uq_variant_runs_number"),
                      Index("ix_variant_runs_variant_status", "variant_id", "status"),
                      Index("ix_variant_runs_variant_protocol", "variant_id", "eval_protocol", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    run_number: Mapped[int] = mapped_column(Integer)  # 1 for the first run of the variant, 2 for a re-run...
    status: Mapped[str] = mapped_column(String(20), default=RUNNING)
    baseline_id: Mapped[int | None] = mapped_column(ForeignKey("baselines.id"))
    device: Mapped[str] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any] | None]
    output_dir: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    qrecipe_version: Mapped[str] = mapped_column(String(50), default="")
    git_commit: Mapped[str | None] = mapped_column(String(64))
    # how it was measured (engine/evaluate/protocol.py): its hash, and the protocol itself
    eval_protocol: Mapped[str | None] = mapped_column(String(32))
    eval_protocol_spec: Mapped[dict[str, Any] | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    variant: Mapped[Variant] = relationship(back_populates="runs")


class Promotion(Base):
    """One promotion or rollback; rows are only ever added (see the migration's triggers)."""

    __tablename__ = "promotions"
    __table_args__ = (Index("ix_promotions_model_target", "base_model_id", "target", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    target: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(50), default="production")
    action: Mapped[str] = mapped_column(String(20))  # promote | rollback | demote
    variant_id: Mapped[str | None] = mapped_column(ForeignKey("variants.id"))  # now serving (None: nothing)
    previous_variant_id: Mapped[str | None] = mapped_column(ForeignKey("variants.id"))
    gates: Mapped[dict[str, Any] | None]  # each gate: threshold, measured value, passed
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StagePointer(Base):
    """The variant that holds a stage for a base model and target, now.

    The unique constraint makes "one production variant per (model, target)" a fact of the
    database, not of the code; promotions and rollbacks move the pointer in the transaction
    that appends their promotions row. mirrored_promotion_id is the promotion the MLflow
    Model Registry last reflected (registry/mirror.py): where it differs from promotion_id,
    the mirror is behind and the next sync catches up.
    """

    __tablename__ = "stage_pointers"
    __table_args__ = (UniqueConstraint("base_model_id", "target", "stage", name="uq_stage_pointers_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    target: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(50))
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    promotion_id: Mapped[int] = mapped_column(ForeignKey("promotions.id"))
    mirrored_promotion_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[BaseModelRecord] = relationship(lazy="joined", innerjoin=True)


class SensitivityScope(Base):
    """What a cached sensitivity depends on besides its unit and candidate (engine/search/cache.py)."""

    __tablename__ = "sensitivity_scopes"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    fingerprint: Mapped[dict[str, Any]]
    settings: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sensitivity(Base):
    __tablename__ = "sensitivities"
    __table_args__ = (UniqueConstraint("scope_key", "measure", "unit", "candidate", name="uq_sensitivities_entry"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_key: Mapped[str] = mapped_column(ForeignKey("sensitivity_scopes.key"))
    measure: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str] = mapped_column(String(300))
    candidate: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Search(Base):
    """One `qrecipe search`: points are the plans it measured, each {label, weight_bytes,
    bits_per_weight, predicted, measured, chosen, pareto_kl, pareto_ppl, mix}."""

    __tablename__ = "searches"
    __table_args__ = (Index("ix_searches_model", "base_model_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    target: Mapped[str] = mapped_column(String(100))
    recipe_name: Mapped[str] = mapped_column(String(200))
    recipe_path: Mapped[str] = mapped_column(Text)
    budget: Mapped[dict[str, Any]]
    settings: Mapped[dict[str, Any]]
    predicted: Mapped[dict[str, Any]]
    points: Mapped[list[Any]]
    spearman: Mapped[dict[str, Any]]
    seconds: Mapped[dict[str, Any]]
    variant_id: Mapped[str | None] = mapped_column(ForeignKey("variants.id"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[BaseModelRecord] = relationship(lazy="joined", innerjoin=True)


# The job tables share this metadata (one schema, one migration history); imported here so that
# whoever loads the registry's models sees every table the migrations create.
from .jobs import models as _job_tables  # noqa: E402,F401
