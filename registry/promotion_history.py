"""Reading the promotions trail: a model's history, and a slot's variants as a stack.

The trail is append-only (triggers refuse UPDATE and DELETE), so everything here is replayed
from it: who promoted or rolled back what, when, from which variant, with which gate numbers
and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Engine, select

from .db import RegistryError, read_session
from .models import BaseModelRecord, Promotion, StagePointer, Variant

PROMOTE, ROLLBACK = "promote", "rollback"


def base_model_id(session, model: str) -> int:
    found = session.scalar(select(BaseModelRecord.id).where(BaseModelRecord.name == model))
    if found is None:
        raise RegistryError(f"model {model!r}: no such base model in the registry; `qrecipe variants list` "
                            f"shows the models")
    return found


def serving_stack(trail: Sequence[Promotion]) -> list[str]:
    """A slot's variants as a stack, oldest first, replayed from its trail (oldest row first):
    a promotion pushes its variant, a rollback pops the top."""
    stack: list[str] = []
    for row in trail:
        if row.action == PROMOTE:
            stack.append(row.variant_id)
        elif row.action == ROLLBACK and stack:
            stack.pop()
    return stack


@dataclass(frozen=True)
class TrailEntry:
    """One promotions row with the names a reader wants."""

    id: int
    created_at: datetime
    action: str
    target: str
    stage: str
    variant_id: str | None
    variant_recipe: str | None
    previous_variant_id: str | None
    actor: str
    forced: bool
    reason: str | None
    gates: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        # stored in UTC; SQLite hands it back without its zone
        when = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=timezone.utc)
        return {"id": self.id, "created_at": when.isoformat(), "action": self.action,
                "target": self.target, "stage": self.stage, "variant_id": self.variant_id,
                "variant_recipe": self.variant_recipe, "previous_variant_id": self.previous_variant_id,
                "actor": self.actor, "forced": self.forced, "reason": self.reason, "gates": self.gates}


def history(engine: Engine, model: str, target: str | None = None, stage: str | None = None) -> list[TrailEntry]:
    """The promotions trail of a base model (optionally of one target and stage), oldest first."""
    with read_session(engine) as session:
        model_id = base_model_id(session, model)
        query = (select(Promotion, Variant.recipe_name).outerjoin(Variant, Variant.id == Promotion.variant_id)
                 .where(Promotion.base_model_id == model_id).order_by(Promotion.id))
        if target:
            query = query.where(Promotion.target == target)
        if stage:
            query = query.where(Promotion.stage == stage)
        return [TrailEntry(id=p.id, created_at=p.created_at, action=p.action, target=p.target, stage=p.stage,
                           variant_id=p.variant_id, variant_recipe=recipe, previous_variant_id=p.previous_variant_id,
                           actor=p.actor, forced=p.forced, reason=p.reason, gates=p.gates)
                for p, recipe in session.execute(query)]


def stage_holders(engine: Engine, model: str | None = None) -> list[StagePointer]:
    """Who holds each stage now, per base model and target."""
    with read_session(engine) as session:
        query = select(StagePointer).join(StagePointer.base_model).order_by(BaseModelRecord.name, StagePointer.target,
                                                                          StagePointer.stage)
        if model:
            query = query.where(BaseModelRecord.name == model)
        return list(session.scalars(query).unique())
