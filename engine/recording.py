"""The seam between a run and whatever keeps a record of it.

The engine computes and returns; it records nothing itself. A caller that keeps records (the
registry and MLflow, registry/recorder.py) passes a `Recorder`; the engine calls it at the
points below and never imports what is behind it. Without one, a run records nothing
(`NullRecorder`), which is what engine-level tests and library users get.

    start     the plan is resolved and every input checked, before the run folder is reserved
              and the model loads
    baseline  the baseline the variant is scored against is known (computed or cached)
    outputs   the run folder is complete in its staging place (metrics, plan, checkpoint)
    succeed   the folder is in place under its final name; once it returns the run is recorded.
              It may refuse (raise, e.g. Cancelled: a job cancelled meanwhile): the run then
              fails and its folder is removed
    fail      anything went wrong (also Ctrl-C, SIGTERM and a cancel: engine.process.stopped
              tells those apart); must not raise, and may be called more than once
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config.settings import Settings
from .plan import Plan


@dataclass(frozen=True)
class RunStart:
    """What a recorder learns when a run starts."""

    settings: Settings
    plan: Plan
    model_type: str
    device: str
    dtype: str
    # how the run measures (engine/evaluate/protocol.py): gates, compare and report use only
    # runs measured under one protocol
    eval_protocol: dict[str, Any] | None = None


@dataclass(frozen=True)
class BaselineRecord:
    """The baseline a variant was scored against: its cache key and folder, what the key covers,
    and its headline figures per eval text."""

    key: str
    device: str
    dtype: str
    key_parts: dict[str, Any]
    metrics: dict[str, Any]
    cache_path: str


class Recorder(Protocol):
    def start(self, run: RunStart) -> str:
        """Record the start; return one line for the run's log saying where it is recorded."""

    def baseline(self, record: BaselineRecord) -> None: ...

    def outputs(self, staging: Path, metrics: dict[str, Any], layer_errors: list[dict]) -> None: ...

    def succeed(self, output_dir: Path, metrics: dict[str, Any]) -> None: ...

    def fail(self, error: BaseException) -> None:
        """Record the failure; never raises (the original error is what the user must see)."""

    def summary(self) -> dict[str, Any]:
        """What the record is called (e.g. variant_id, run_number), for the run's result."""


class NullRecorder:
    """Records nothing."""

    def start(self, run: RunStart) -> str:
        return "not recorded (no recorder: tracking and registry are not used)"

    def baseline(self, record: BaselineRecord) -> None:
        pass

    def outputs(self, staging: Path, metrics: dict[str, Any], layer_errors: list[dict]) -> None:
        pass

    def succeed(self, output_dir: Path, metrics: dict[str, Any]) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}
