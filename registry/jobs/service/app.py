"""The FastAPI app: JSON errors with the documented statuses only, a body size limit, bearer
tokens; the API's description at /openapi.json, and Swagger UI at /docs only with service.docs
(its page loads assets from a CDN, which an offline machine cannot reach)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import Engine, func, select, text

from ...db import read_session
from ..config import JobsConfig, ServiceConfig
from ..models import Job
from ..submit import Submitter
from . import errors, routes_jobs, routes_variants
from .limits import BodyLimit


@dataclass
class ServiceState:
    engine: Engine
    jobs: JobsConfig
    service: ServiceConfig
    submitter: Submitter
    tokens: dict[str, str]  # token -> scope; empty: loopback only, everyone writes
    sections: dict[str, Any]  # the operator's other config sections (gates, for promotion)
    mirror: Any = None  # the MLflow Model Registry mirror promotions move (None: tracking off)
    # the eval protocol the operator's config measures under on this machine: what promotion
    # gates judge unless gates.protocol or gates.any_protocol says otherwise
    default_protocol: str | None = None


def create_app(state: ServiceState) -> FastAPI:
    # redirect_slashes=False: /jobs/ is a 404 like any unknown path, not a 307 to /jobs
    app = FastAPI(title="qrecipe", version="1", description="Submit, watch and cancel recipe runs; read the "
                  "registry's variants. Send 'Authorization: Bearer TOKEN' when the service has tokens.",
                  docs_url="/docs" if state.service.docs else None, redoc_url=None, redirect_slashes=False)
    for name, value in vars(state).items():
        setattr(app.state, name, value)
    errors.install(app)
    app.include_router(routes_jobs.router)
    app.include_router(routes_variants.router)

    @app.get("/healthz", tags=["service"], summary="The service answers and its database too (no token needed)")
    def healthz(request: Request) -> dict:
        with read_session(request.app.state.engine) as s:
            s.execute(text("SELECT 1"))
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        return {"status": "ok", "database": request.app.state.engine.dialect.name, "jobs": counts}

    app.add_middleware(BodyLimit, max_bytes=state.service.max_body_bytes)
    return app
