"""One attempt of one job, in a process of its own: `python -m qrecipe.registry.jobs.attempt`.

It reads the job (JSON) on stdin, writes its output to stdout/stderr (the job's log) and its
progress as JSON lines on the file descriptor named by QRECIPE_JOB_EVENTS_FD:

    {"event": "stage", "stage": ..., "progress": ...}     a step of the job
    {"event": "started", "variant_id": ..., "run_number": ..., "output_dir": ..., "staging": ...}
                                                          the registry run it recorded, its folder
    {"event": "result", "result": {...}}                  it succeeded (exit code 0)
    {"event": "error", "message": ..., "user_error": bool} it failed (exit code != 0)

It dies with the process that started it (PR_SET_PDEATHSIG), so a worker killed with SIGKILL
leaves no attempt running on behind its back, and SIGTERM unwinds a run the way Ctrl-C does, so
the run records itself as failed and removes its staged folder (engine/process.py's Terminated).
A sleep job imports nothing heavy, so queue tests and benchmarks start it in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

EVENTS_FD = "QRECIPE_JOB_EVENTS_FD"
PARENT_PID = "QRECIPE_PARENT_PID"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has."""
    parent = os.environ.get(PARENT_PID)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


class Events:
    def __init__(self, fd: int | None):
        self.stream = os.fdopen(fd, "w", buffering=1) if fd is not None else None

    def __call__(self, event: str, **data: Any) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps({"event": event, **data}, default=str) + "\n")


def run_job(payload: dict[str, Any], emit: Events) -> dict[str, Any]:
    kind = payload["kind"]
    if kind == "sleep":
        return _sleep(payload["params"], emit)
    if kind in ("run", "plan", "search"):
        return _recipe(payload, emit)
    raise ValueError(f"unknown job kind {kind!r}")


def _sleep(params: dict[str, Any], emit: Events) -> dict[str, Any]:
    seconds = float(params.get("seconds", 0))
    print(f"sleep job: pid {os.getpid()}, sleeping {seconds}s", flush=True)
    emit("stage", stage="sleeping", progress=0.0)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
        emit("stage", stage="sleeping", progress=round(1 - max(left - 0.2, 0) / seconds, 3) if seconds else 1.0)
    if params.get("fail"):
        from qrecipe.engine.errors import QRecipeError

        raise QRecipeError("sleep job: asked to fail (sleep.fail=true)")
    print("sleep job: done", flush=True)
    return {"slept_seconds": seconds, "pid": os.getpid()}


class JobGate:
    """Where a run job's attempt meets its job row: at every stage boundary it asks whether the
    job was cancelled (then the run stops there) or taken from it (its lease lost), and the write
    that records the run succeeded is also the one that ends the job succeeded (queue.complete_in),
    so a cancel and the registration are decided in one transaction.

    Debug (jobs.debug_kinds): `pause_at` holds the run at that stage until the job is cancelled,
    then lets it go on, so tests can cancel a real run at each stage."""

    POLL_SECONDS = 0.1
    PAUSE_LIMIT_SECONDS = 600.0

    def __init__(self, engine, job_id: int, token: str, pause_at: str | None = None):
        self.engine, self.job_id, self.token, self.pause_at = engine, job_id, token, pause_at

    def boundary(self, stage: str) -> None:
        from qrecipe.engine.process import Cancelled

        from . import queue

        state = queue.cancel_state(self.engine, self.job_id, self.token)
        if state == "cancel":
            raise Cancelled(f"job {self.job_id} was cancelled (the run stopped at stage {stage})")
        if state == "lost":
            raise queue.LeaseLost(f"job {self.job_id}: this attempt lost its lease at stage {stage}; the job runs "
                                  f"again")
        if stage == self.pause_at:
            print(f"debug: paused at stage {stage} until the job is cancelled", flush=True)
            deadline = time.monotonic() + self.PAUSE_LIMIT_SECONDS
            while queue.cancel_state(self.engine, self.job_id, self.token) == "go" and time.monotonic() < deadline:
                time.sleep(self.POLL_SECONDS)
            print(f"debug: going on from stage {stage}", flush=True)

    def complete_in(self, session, result: dict[str, Any]) -> None:
        from . import queue

        queue.complete_in(session, self.job_id, self.token, result)


def _recipe(payload: dict[str, Any], emit: Events) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from qrecipe.engine.config import load_settings
    from qrecipe.engine.config.resolvers import register_resolvers
    from qrecipe.engine.events import RunEvent, Stage
    from qrecipe.engine.planning import build_plan

    from ..db import open_registry, registry_url
    from ..recorder import RESULT_KEYS, RunRecorder
    from .paths import check_calibration_path, check_paths

    register_resolvers()
    cfg = OmegaConf.create(payload["config_yaml"])
    settings = load_settings(cfg)
    roots = [Path(r) for r in payload["allowed_roots"]]
    check_paths(settings, roots, allow_hub=payload["allow_hub"])
    if payload["kind"] == "search":  # a search always reads its calibration slice
        check_calibration_path(settings, roots)
        gate = JobGate(open_registry(registry_url(settings)), payload["job_id"], payload["lease_token"],
                       (payload.get("params") or {}).get("pause_at"))
        return _search(cfg, emit, gate)
    emit("stage", stage="planning", progress=0.01)
    plan, _ = build_plan(settings)
    if plan.calibrates:
        check_calibration_path(settings, roots)
    if payload["kind"] == "plan":
        return _plan(plan, emit)
    from qrecipe.engine.run import run

    gate = JobGate(open_registry(registry_url(settings)), payload["job_id"], payload["lease_token"],
                   (payload.get("params") or {}).get("pause_at"))
    recorder = RunRecorder(before_commit=gate.complete_in)

    def on_event(event: RunEvent) -> None:
        if event.stage is Stage.STARTED:  # the registry run now exists: say which, before anything else
            summary = recorder.summary()
            emit("started", variant_id=summary.get("variant_id"), run_number=summary.get("run_number"),
                 output_dir=event.data.get("output_dir"), staging=event.data.get("staging"))
        if event.stage is not Stage.DONE:  # the job is done when its result is written, not before
            emit("stage", stage=event.stage.value, progress=event.progress)
            gate.boundary(event.stage.value)

    # progress=True: off a terminal (here, the job's log) it is one line every 30 s, not bars
    result = run(cfg, recorder=recorder, progress=True, on_event=on_event)
    summary = result.summary()
    return {k: summary.get(k) for k in RESULT_KEYS}


SEARCH_RESULT_KEYS = ("recipe", "recipe_path", "model", "target", "budget", "predicted", "measured", "points",
                      "spearman", "sensitivities", "seconds", "variant_id", "run_number", "search_id", "mlflow_run_id",
                      "run_output_dir")


class SearchGate:
    """A search job's JobGate (registry/search_flow.py Gate): the same stage-boundary checks as a
    run job's; the found recipe's registration is refused if a cancel came first (the job goes on);
    the search's record is the job's success, decided against a cancel in one transaction. A
    cancel after the found recipe's run was recorded stops the search at its next boundary: that
    variant stays (its run is complete), the front and the search are not recorded."""

    def __init__(self, gate: JobGate):
        self.gate = gate

    def boundary(self, stage: str) -> None:
        self.gate.boundary(stage)

    def hold_in(self, session, result: dict[str, Any]) -> None:
        from . import queue

        queue.hold_in(session, self.gate.job_id, self.gate.token, "the found recipe's run")

    def complete_in(self, session, outcome: dict[str, Any]) -> None:
        from . import queue

        queue.complete_in(session, self.gate.job_id, self.gate.token,
                          {k: outcome.get(k) for k in SEARCH_RESULT_KEYS}, "the search")


def _search(cfg, emit: Events, gate: JobGate) -> dict[str, Any]:
    from ..search_flow import render, search_and_record

    def on_event(name: str, data: dict) -> None:
        if name == "started":
            emit("started", variant_id=data.get("variant_id"), run_number=data.get("run_number"))
        elif name == "stage":
            emit("stage", stage=data["stage"], progress=data["progress"])

    # progress=False: the found recipe's run reports through on_event (the job's stages) instead
    outcome = search_and_record(cfg, on_event=on_event, progress=False, gate=SearchGate(gate))
    print(render(outcome), flush=True)
    return {k: outcome.get(k) for k in SEARCH_RESULT_KEYS}


def _plan(plan, emit: Events) -> dict[str, Any]:
    from qrecipe.engine.plan.render import render_plan

    print(render_plan(plan), flush=True)
    return {"plan_hash": plan.plan_hash, "recipe": plan.recipe, "model": plan.model_id, "target": plan.target,
            "scheme_mix": plan.scheme_mix(), "totals": plan.totals()}


def main(read_payload: Callable[[], str] = sys.stdin.read) -> int:
    die_with_parent()
    from qrecipe.engine.process import Cancelled, Terminated, quiet_libraries, raise_terminated

    quiet_libraries()
    signal.signal(signal.SIGTERM, raise_terminated)
    fd = os.environ.get(EVENTS_FD)
    emit = Events(int(fd) if fd else None)
    from qrecipe.engine.errors import QRecipeError

    try:
        result = run_job(json.loads(read_payload()), emit)
    except QRecipeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        emit("error", message=str(e), user_error=True)
        return e.exit_code
    except Cancelled as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        emit("error", message=str(e), user_error=False)
        return Cancelled.exit_code
    except (Terminated, KeyboardInterrupt):
        print("error: terminated", file=sys.stderr, flush=True)
        emit("error", message="terminated", user_error=False)
        return Terminated.exit_code
    except Exception as e:  # noqa: BLE001 - the traceback goes to the job's log; the job gets one line
        traceback.print_exc()
        emit("error", message=f"{type(e).__name__}: {e}", user_error=False)
        return 1
    emit("stage", stage="done", progress=1.0)
    emit("result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
