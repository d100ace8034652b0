"""Promoting a variant to a stage (production) and rolling back: the registry's write path.

    promote(engine, variant, *, stage, force, reason, actor, gates, mirror) -> PromotionResult
    rollback(engine, model, target, *, stage, reason, actor, mirror) -> PromotionResult

Each is one write transaction that locks the (base model, target, stage) row of
stage_pointers, judges, appends the promotions row and moves the pointer, so the trail and
the pointer never disagree, and of two concurrent promotions one commits first and the other
then replaces it, recording it as the variant it replaced. On PostgreSQL two first
promotions of a slot can both find no pointer row: the unique constraint refuses the second
insert and that transaction is retried, now finding (and waiting for) the winner's row.

A refused promotion writes nothing: the trail records what served when and who forced what,
not attempts; the caller gets PromotionRefused naming every failed gate with its numbers.
Promoting the variant that already holds the stage is a no-op (no row), so a retried
request is harmless.

Rollback replays the slot's trail as a stack (a promotion pushes, a rollback pops) and
restores the variant below the top: rolling back twice after promoting A, B, C serves A.

After the commit the MLflow Model Registry mirror (registry/mirror.py) catches up; where
MLflow cannot be reached the promotion stands and the mirror stays pending until a sync.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, Sequence

from sqlalchemy import Engine, select

from qrecipe.engine.errors import QRecipeError

from .artifacts import checkpoint_dir
from .gates import GateCheck, GatePolicy, check_gates
from .models import MEASURED, SUCCEEDED, Promotion, StagePointer, Variant, VariantRun, utcnow
from .promotion_history import PROMOTE, ROLLBACK, base_model_id, serving_stack
from .queries import find_variant
from .record import write_with_retry
from .stages import STAGES


class PromotionError(QRecipeError):
    """A promotion or rollback request that cannot be carried out as asked (bad argument,
    nothing to roll back to)."""


class PromotionRefused(PromotionError):
    """The variant may not hold the stage: it failed quality gates (checks lists them) or it
    was never measured. Exit code 3, so a pipeline can tell a refusal from a usage error."""

    exit_code = 3

    def __init__(self, message: str, checks: Sequence[GateCheck] = ()):
        super().__init__(message)
        self.checks = tuple(checks)


class Mirror(Protocol):
    """What promote/rollback need of the MLflow mirror (registry/mirror.py)."""

    def sync(self, engine: Engine): ...

    def slot_status(self, engine: Engine, model: str, target: str, stage: str) -> str: ...


def alias_name(stage: str, target: str) -> str:
    """The MLflow alias of a stage on a target, e.g. production-h100."""
    return f"{stage}-{target}"


def default_actor() -> str:
    """Who acts when --actor is not given: $QRECIPE_ACTOR, else the OS user."""
    actor = os.environ.get("QRECIPE_ACTOR", "").strip()
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


@dataclass(frozen=True)
class PromotionResult:
    action: str  # promote | rollback
    changed: bool  # False: the variant already held the stage, nothing was written
    promotion_id: int | None
    model: str
    target: str
    stage: str
    variant_id: str
    previous_variant_id: str | None
    actor: str
    forced: bool = False
    reason: str | None = None
    checks: tuple[GateCheck, ...] = ()
    created_at: datetime | None = None
    mirror: str = "off"  # synced | pending: WHY | off (tracking is off)

    @property
    def alias(self) -> str:
        return alias_name(self.stage, self.target)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "changed": self.changed, "promotion_id": self.promotion_id,
                "model": self.model, "target": self.target, "stage": self.stage, "alias": self.alias,
                "variant_id": self.variant_id, "previous_variant_id": self.previous_variant_id,
                "actor": self.actor, "forced": self.forced, "reason": self.reason,
                "gates": [c.to_dict() for c in self.checks],
                "created_at": self.created_at.isoformat() if self.created_at else None, "mirror": self.mirror}


def _check_request(stage: str, actor: str, reason: str | None) -> str | None:
    if stage not in STAGES:
        raise PromotionError(f"--stage: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if not actor or not actor.strip() or len(actor) > 200:
        raise PromotionError("--actor: name who acts (1 to 200 characters), or set QRECIPE_ACTOR")
    return reason.strip() if reason and reason.strip() else None


def _check_promotable(variant: Variant) -> None:
    """Measured, with metrics and a checkpoint: --force overrides gates, never these."""
    what = f"variant {variant.id} ({variant.recipe_name} of {variant.base_model.name} for {variant.target})"
    if variant.status != MEASURED or not variant.metrics:
        raise PromotionRefused(f"{what} has status {variant.status}: only a variant with a succeeded, measured run "
                               f"can be promoted, even with --force; run its recipe again with `qrecipe run`")
    if checkpoint_dir(variant.output_dir) is None:
        raise PromotionRefused(f"{what} has no checkpoint under {variant.output_dir} (its run had "
                               f"run.save_checkpoint=false, or the folder was moved); run its recipe again to "
                               f"write one")


def _refusal(variant: Variant, failed: list[GateCheck]) -> PromotionRefused:
    listed = "; ".join(c.describe() for c in failed)
    return PromotionRefused(
        f"variant {variant.id} ({variant.recipe_name} of {variant.base_model.name} for {variant.target}) fails "
        f"{len(failed)} quality gate{'s' if len(failed) > 1 else ''}: {listed}; promote a variant that passes, "
        f"change gates.* in the config, or override with --force --reason \"why\"", failed)


def _lock_pointer(session, model_id: int, target: str, stage: str) -> StagePointer | None:
    """The slot's pointer row, locked until commit (SQLite: the whole database already is)."""
    return session.scalar(select(StagePointer).where(StagePointer.base_model_id == model_id,
                                                     StagePointer.target == target, StagePointer.stage == stage)
                          .with_for_update(of=StagePointer))


def _append_and_point(session, pointer: StagePointer | None, row: Promotion) -> Promotion:
    """Append the trail row and move (or create) the pointer in the same transaction."""
    session.add(row)
    session.flush()  # row.id
    if pointer is None:
        session.add(StagePointer(base_model_id=row.base_model_id, target=row.target, stage=row.stage,
                                 variant_id=row.variant_id, promotion_id=row.id, updated_at=row.created_at))
    else:
        pointer.variant_id, pointer.promotion_id, pointer.updated_at = row.variant_id, row.id, row.created_at
    session.flush()  # a concurrent first promotion of this slot fails here (unique constraint) and is retried
    return row


def _result(row: Promotion, model: str, checks: Sequence[GateCheck] = ()) -> PromotionResult:
    return PromotionResult(action=row.action, changed=True, promotion_id=row.id, model=model, target=row.target,
                           stage=row.stage, variant_id=row.variant_id, previous_variant_id=row.previous_variant_id,
                           actor=row.actor, forced=row.forced, reason=row.reason, checks=tuple(checks),
                           created_at=row.created_at)


def _mirrored(result: PromotionResult, engine: Engine, mirror: Mirror | None) -> PromotionResult:
    if mirror is None:
        return result
    mirror.sync(engine)
    return replace(result, mirror=mirror.slot_status(engine, result.model, result.target, result.stage))


def _judged_run(session, v: Variant, protocol: str | None) -> VariantRun | None:
    """The run whose metrics the gates judge: the latest successful one under `protocol` (None: any)."""
    query = select(VariantRun).where(VariantRun.variant_id == v.id, VariantRun.status == SUCCEEDED)
    if protocol is not None:
        query = query.where(VariantRun.eval_protocol == protocol)
    return session.scalars(query.order_by(VariantRun.run_number.desc()).limit(1)).first()


def _protocol_refusal(session, v: Variant, protocol: str) -> PromotionRefused:
    from qrecipe.engine.evaluate.protocol import describe_protocol

    runs = session.scalars(select(VariantRun).where(VariantRun.variant_id == v.id, VariantRun.status == SUCCEEDED)
                           .order_by(VariantRun.run_number.desc())).all()
    theirs = {r.eval_protocol or "unrecorded": describe_protocol(r.eval_protocol_spec) for r in runs}
    return PromotionRefused(
        f"variant {v.id} ({v.recipe_name} of {v.base_model.name} for {v.target}) has no successful run under eval "
        f"protocol {protocol}, the one the gates judge, so they cannot judge it: its runs were measured under "
        + "; ".join(f"{h} ({d})" for h, d in theirs.items())
        + f". Run it again with the eval settings of that protocol, set gates.protocol=HASH to the one the gates "
          f"were written for, pass --any-protocol to judge its latest run anyway, or --force --reason \"why\"")


def promote(engine: Engine, variant: str, *, stage: str = "production", force: bool = False,
            reason: str | None = None, actor: str, gates: GatePolicy, mirror: Mirror | None = None,
            protocol: str | None = None) -> PromotionResult:
    """Make `variant` (an id or unique prefix) the one that holds `stage` for its base model and target.

    Judges the variant's recorded metrics against `gates` (its model's and recipe's thresholds;
    GatePolicy.from_settings(settings) reads them from the config). A variant that fails a gate
    is refused unless force=True, which needs a non-empty reason; a variant that was never
    measured or has no checkpoint is refused even then. Refusals raise PromotionRefused
    (message: every failed gate with its value and threshold; .checks: those GateChecks) and
    write nothing; bad arguments raise PromotionError. On success the promotions row is
    appended and the slot's pointer moved in one transaction, then `mirror` (if given) catches
    MLflow up. Promoting the variant that already holds the stage returns changed=False and
    writes nothing. `actor` is recorded as who promoted (default_actor() gives the CLI's default).
    `protocol` (an eval protocol hash; GatePolicy.required_protocol gives it) is the protocol the
    judged run must have been measured under: the variant's latest successful run under it is
    judged, and a variant without one is refused unless forced; None judges its latest run.
    """
    reason = _check_request(stage, actor, reason)
    if force and reason is None:
        raise PromotionError("--reason: a forced promotion needs a reason, which is recorded in the trail; "
                             "pass --reason \"why this variant must serve anyway\"")
    variant_id = find_variant(engine, variant).id

    def step(session) -> PromotionResult:
        v = session.get(Variant, variant_id)
        _check_promotable(v)
        judged = _judged_run(session, v, protocol)
        if judged is None and protocol is not None and not force:
            raise _protocol_refusal(session, v, protocol)
        metrics = judged.metrics if judged is not None and judged.metrics else v.metrics
        checks = check_gates(gates.thresholds_for(v.base_model.name, v.recipe_name), metrics)
        failed = [c for c in checks if not c.passed]
        if failed and not force:
            raise _refusal(v, failed)
        off_protocol = judged is None and protocol is not None  # forced past the protocol check
        pointer = _lock_pointer(session, v.base_model_id, v.target, stage)
        if pointer is not None and pointer.variant_id == v.id:
            return PromotionResult(action=PROMOTE, changed=False, promotion_id=pointer.promotion_id,
                                   model=v.base_model.name, target=v.target, stage=stage, variant_id=v.id,
                                   previous_variant_id=None, actor=actor, checks=tuple(checks))
        row = Promotion(base_model_id=v.base_model_id, target=v.target, stage=stage, action=PROMOTE,
                        variant_id=v.id, previous_variant_id=pointer.variant_id if pointer else None,
                        gates={"passed": not failed and not off_protocol, "checks": [c.to_dict() for c in checks],
                               "eval_protocol": {"required": protocol,
                                                 "judged_run": judged.run_number if judged else None,
                                                 "judged": (judged.eval_protocol if judged else None)}},
                        forced=bool(failed) or off_protocol, reason=reason, actor=actor, created_at=utcnow())
        return _result(_append_and_point(session, pointer, row), v.base_model.name, checks)

    return _mirrored(write_with_retry(engine, step), engine, mirror)


def rollback(engine: Engine, model: str, target: str, *, stage: str = "production", reason: str | None = None,
             actor: str, mirror: Mirror | None = None) -> PromotionResult:
    """Give `stage` of (model, target) back to the variant that held it before the current one.

    Appends a rollback row (variant_id: the restored variant, previous_variant_id: the one
    that held the stage) and moves the pointer, in one transaction; then `mirror` catches up.
    Raises PromotionError when the slot has no variant or nothing before it; gates are not
    judged again (the restored variant held the stage before).
    """
    reason = _check_request(stage, actor, reason)

    def step(session) -> PromotionResult:
        model_id = base_model_id(session, model)
        pointer = _lock_pointer(session, model_id, target, stage)
        if pointer is None:
            held = sorted(session.scalars(select(StagePointer.target).where(StagePointer.base_model_id == model_id,
                                                                             StagePointer.stage == stage)))
            raise PromotionError(f"--target: no {stage} variant of {model} for target {target!r} to roll back"
                                 + (f"; targets with one: {', '.join(held)}" if held else ""))
        trail = session.scalars(select(Promotion).where(Promotion.base_model_id == model_id, Promotion.target == target,
                                                        Promotion.stage == stage).order_by(Promotion.id)).all()
        stack = serving_stack(trail)
        if len(stack) < 2:
            raise PromotionError(f"nothing to roll back to: {pointer.variant_id} is the first {stage} variant of "
                                 f"{model} for {target} left in the trail (`qrecipe variants history {model}`)")
        row = Promotion(base_model_id=model_id, target=target, stage=stage, action=ROLLBACK, variant_id=stack[-2],
                        previous_variant_id=pointer.variant_id, gates=None, forced=False, reason=reason, actor=actor,
                        created_at=utcnow())
        return _result(_append_and_point(session, pointer, row), model)

    return _mirrored(write_with_retry(engine, step), engine, mirror)
