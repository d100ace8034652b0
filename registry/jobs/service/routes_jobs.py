"""/jobs: submit, list, show, stream the log of, and cancel jobs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from qrecipe.engine.errors import ConfigError

from .. import queue
from ..models import FINAL
from ..requests import JobRequest
from .auth import Principal, reader, writer
from .views import job_view

router = APIRouter(tags=["jobs"])
ROW_ID_MAX = 2**31 - 1  # ids are 32-bit integers in the database: a larger one is a 422, not an overflow
JobId = Annotated[int, Path(ge=1, le=ROW_ID_MAX, description="the job's id")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_LOG_POLL_SECONDS = 0.5


def _answer(body: JobRequest, jobs) -> dict:
    return {"jobs": [job_view(j) for j in jobs]} if body.sweep else job_view(jobs[0])


@router.post("/jobs", status_code=201, summary="Queue a recipe run (or a sweep: one job per point)")
def submit_job(request: Request, body: JobRequest, response: Response, who: Principal = Depends(writer),
               idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200,
                                                             pattern=r"^[A-Za-z0-9._:-]+$")] = None) -> dict:
    """The recipe is composed and its plan resolved now: a bad recipe, override or path is refused
    with 422 and the CLI's one-line error. The same Idempotency-Key with the same request answers
    200 with the jobs it made the first time; with a different request, 409."""
    state = request.app.state
    if len(body.overrides) > state.service.max_overrides:
        raise ConfigError(f"overrides: {len(body.overrides)} given, at most {state.service.max_overrides} "
                          f"(service.max_overrides); split the request")
    request_hash = body.canonical_hash()
    if idempotency_key is not None:  # answer a retry without composing the recipe again
        earlier = queue.replay(state.engine, idempotency_key, request_hash)
        if earlier is not None:
            response.status_code = 200
            return _answer(body, earlier)
    specs = state.submitter.specs(body)
    jobs, replayed = queue.submit(state.engine, specs, request_hash=request_hash, actor=who.actor,
                                  idempotency_key=idempotency_key)
    if replayed:
        response.status_code = 200
    return _answer(body, jobs)


@router.get("/jobs", summary="Jobs, newest first; `more` says whether older ones were left out (page with before=)")
def list_jobs(request: Request, status: Status | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              before: Annotated[int | None, Query(ge=1, le=ROW_ID_MAX)] = None,
              who: Principal = Depends(reader)) -> dict:
    jobs = queue.list_jobs(request.app.state.engine, status, limit + 1, before)
    return {"jobs": [job_view(j) for j in jobs[:limit]], "more": len(jobs) > limit}


@router.get("/jobs/{job_id}", summary="One job: status, stage, progress, timings, attempts, error, variant")
def show_job(request: Request, job_id: JobId, who: Principal = Depends(reader)) -> dict:
    engine = request.app.state.engine
    return job_view(queue.get_job(engine, job_id), queue.attempts(engine, job_id))


@router.get("/jobs/{job_id}/logs", summary="The job's output (follow=true streams it until the job ends)",
            response_class=StreamingResponse)
def job_logs(request: Request, job_id: JobId, follow: bool = False,
             after: Annotated[int, Query(ge=0, le=ROW_ID_MAX)] = 0,
             who: Principal = Depends(reader)) -> StreamingResponse:
    engine = request.app.state.engine
    queue.get_job(engine, job_id)  # 404 before the stream starts

    async def chunks():
        last = after
        while True:
            job = await run_in_threadpool(queue.get_job, engine, job_id)
            rows = await run_in_threadpool(queue.logs, engine, job_id, last)
            for row in rows:
                last = row.id
                yield row.text
            if rows:
                continue
            if not follow or job.status in FINAL:  # status read before the logs: nothing comes after
                return
            await asyncio.sleep(_LOG_POLL_SECONDS)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued job, or stop a running one")
def cancel_job(request: Request, job_id: JobId, who: Principal = Depends(writer)) -> dict:
    """A queued job is cancelled at once. A running job's process is stopped at its worker's next
    heartbeat (SIGTERM, then SIGKILL after jobs.cancel_grace_seconds) and the job marked cancelled."""
    return job_view(queue.cancel(request.app.state.engine, job_id))
