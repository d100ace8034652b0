"""Reading the registry: variants by model, one variant by id (or a unique prefix), its runs."""

from __future__ import annotations

from sqlalchemy import Engine, select

from .db import RegistryError, read_session
from .models import MEASURED, BaseModelRecord, Search, Variant, VariantRun


def list_variants(engine: Engine, model: str | None = None, measured_only: bool = False) -> list[Variant]:
    with read_session(engine) as session:
        query = select(Variant).join(Variant.base_model).order_by(BaseModelRecord.name, Variant.created_at)
        if model:
            query = query.where(BaseModelRecord.name == model)
        if measured_only:
            query = query.where(Variant.status == MEASURED)
        return list(session.scalars(query).unique())


def find_variant(engine: Engine, ref: str) -> Variant:
    """The variant whose id is ref or starts with it."""
    with read_session(engine) as session:
        rows = list(session.scalars(select(Variant).where(Variant.id.startswith(ref, autoescape=True))).unique())
    if not rows:
        raise RegistryError(f"variant {ref!r}: no such variant in the registry; `qrecipe variants list` shows the ids")
    if len(rows) > 1:
        raise RegistryError(f"variant {ref!r}: matches {len(rows)} variants ({', '.join(r.id for r in rows)}); "
                            f"give more of the id")
    return rows[0]


def variant_runs(engine: Engine, variant_id: str) -> list[VariantRun]:
    with read_session(engine) as session:
        return list(session.scalars(select(VariantRun).where(VariantRun.variant_id == variant_id)
                                    .order_by(VariantRun.run_number)))


def model_names(engine: Engine) -> list[str]:
    with read_session(engine) as session:
        return list(session.scalars(select(BaseModelRecord.name).order_by(BaseModelRecord.name)))


def list_searches(engine: Engine, model: str, limit: int = 3) -> list[Search]:
    """A model's latest searches, newest first."""
    with read_session(engine) as session:
        return list(session.scalars(select(Search).join(Search.base_model).where(BaseModelRecord.name == model)
                                    .order_by(Search.id.desc()).limit(limit)).unique())
