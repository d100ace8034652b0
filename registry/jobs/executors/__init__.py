"""Where an attempt runs: `local` (a child process of the worker) or `ray` (a Ray task that
starts the same child process on a node of a Ray cluster). Either gives the worker an
Execution to wait on and to stop; the worker keeps the lease and records the outcome."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Engine

from ..child import Outcome
from ..config import JobsConfig
from ..queue import Claim


class Execution(Protocol):
    def wait(self, timeout: float) -> Outcome | None:
        """The outcome if the attempt ended within timeout seconds, else None."""

    def stop(self, grace: float) -> None:
        """End the attempt: SIGTERM (a run records itself failed), then SIGKILL after grace seconds."""


class Executor(Protocol):
    def start(self, claim: Claim, payload: dict[str, Any]) -> Execution: ...

    def close(self) -> None: ...


def make_executor(cfg: JobsConfig, engine: Engine, registry_url: str) -> Executor:
    if cfg.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(cfg, registry_url)
    from .local import LocalExecutor

    return LocalExecutor(cfg, engine)
