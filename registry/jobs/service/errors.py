"""Every error leaves the service as JSON, {"error": "one sentence"}, with the right status;
a traceback only ever goes to the service's own log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from qrecipe.engine.errors import QRecipeError

from ...db import RegistryError
from ..queue import IdempotencyConflict, JobFinished, JobNotFound

log = logging.getLogger(__name__)



class NotFound(QRecipeError):
    """A variant (or other record) the request names does not exist."""


# A QRecipeError not listed here is the caller's to fix (a bad recipe, override, path): 422.
STATUS = {JobNotFound: 404, NotFound: 404, IdempotencyConflict: 409, JobFinished: 409, RegistryError: 503}


def status_of(error: QRecipeError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 422


def _where(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = [{"field": "body", "message": "not valid JSON; send a JSON object"} if e.get("type") == "json_invalid"
                  else {"field": _where(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return JSONResponse(status_code=422, content={"error": f"{first['field']}: {first['message']}",
                                                      "errors": errors})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)},
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(QRecipeError)
    async def user_error(request: Request, exc: QRecipeError):
        return JSONResponse(status_code=status_of(exc), content={"error": str(exc)})

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"error": f"internal error ({type(exc).__name__}); the "
                                                               f"service's log has the details"})
