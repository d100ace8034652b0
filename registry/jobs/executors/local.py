"""Each attempt in a child process of the worker (the embedded default)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from ..child import AttemptProcess, DbSink, attempt_env
from ..config import JobsConfig
from ..queue import Claim


class LocalExecutor:
    def __init__(self, cfg: JobsConfig, engine: Engine):
        self.cfg, self.engine = cfg, engine

    def start(self, claim: Claim, payload: dict[str, Any]) -> AttemptProcess:
        sink = DbSink(self.engine, claim.job.id, claim.attempt, claim.token, self.cfg.log_flush_seconds)
        process = AttemptProcess(payload, sink, attempt_env(self.cfg.allow_hub))
        process.start()
        return process

    def close(self) -> None:
        pass
