"""/variants: the registry's variants, and their promotion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from sqlalchemy import select

from ...db import read_session
from ...gates import GatePolicy
from ...models import Variant
from ...promotion import PromotionRefused, promote
from ...queries import list_variants, variant_runs
from ..requests import PromoteRequest
from .auth import Principal, reader, writer
from .errors import NotFound
from .views import variant_view

router = APIRouter(tags=["variants"])
VariantRef = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="a variant id or a unique prefix of it")]


def _variant(engine, ref: str) -> Variant:
    with read_session(engine) as s:
        rows = list(s.scalars(select(Variant).where(Variant.id.startswith(ref, autoescape=True)).limit(2)).unique())
    if len(rows) != 1:
        raise NotFound(f"variant {ref!r}: " + ("no such variant in the registry; GET /variants lists them" if not rows
                                               else "matches several variants; give more of the id"))
    return rows[0]


@router.get("/variants", summary="Every variant in the registry (optionally of one model)")
def get_variants(request: Request, model: str | None = None, who: Principal = Depends(reader)) -> dict:
    return {"variants": [variant_view(v) for v in list_variants(request.app.state.engine, model)]}


@router.get("/variants/{variant_id}", summary="One variant: all its metrics and every run")
def get_variant(request: Request, variant_id: VariantRef, who: Principal = Depends(reader)) -> dict:
    engine = request.app.state.engine
    v = _variant(engine, variant_id)
    return variant_view(v, variant_runs(engine, v.id))


@router.post("/variants/{variant_id}/promote", summary="Promote a variant (its gates must pass unless force)",
             responses={409: {"description": "a gate failed (the message names each with its numbers)"},
                        422: {"description": "a bad request, e.g. force without a reason"}})
def promote_variant(request: Request, variant_id: VariantRef, body: PromoteRequest | None = None,
                    who: Principal = Depends(writer)) -> dict:
    """The same promotion as `qrecipe variants promote`: the operator's gates, the audit trail,
    and the MLflow mirror. 409 when refused (force=true with a reason overrides the gates and is
    recorded as forced)."""
    body = body or PromoteRequest()
    state = request.app.state
    v = _variant(state.engine, variant_id)
    policy = GatePolicy.from_section(state.sections.get("gates"))
    try:
        result = promote(state.engine, v.id, stage=body.stage, force=body.force, reason=body.reason, actor=who.actor,
                         gates=policy, mirror=state.mirror, protocol=policy.required_protocol(state.default_protocol))
    except PromotionRefused as e:
        raise HTTPException(status_code=409, detail=str(e)) from None
    return jsonable_encoder(result.to_dict())
