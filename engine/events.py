"""What a run tells its caller while it works: typed stage events.

A run moves through the stages below in order; each event names its stage, carries the
human line the run also prints, and the share of a typical CPU run's time done once that
stage is reached (rough, and only ever moving forward). A job's stage and progress come from
these events (registry/jobs/attempt.py), never from the wording of the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable


class Stage(str, Enum):
    """The stages of a recipe run, in run order (the values are what the job API shows)."""

    STARTED = "started"
    LOADING = "loading model"
    BASELINE = "baseline"
    QUANTIZING = "quantizing"
    SCORING = "scoring variant"
    TIMING = "timing"
    CHECKPOINT = "writing checkpoint"
    PEAK_MEMORY = "peak memory"
    LAYER_ERROR = "per-layer error"
    RECORDING = "recording"  # the folder is complete; the run is being recorded (the last point to cancel)
    DONE = "done"


# The share of a run's time done once a stage is reached (ascending, in Stage order).
PROGRESS: dict[Stage, float] = {
    Stage.STARTED: 0.05, Stage.LOADING: 0.10, Stage.BASELINE: 0.15, Stage.QUANTIZING: 0.45,
    Stage.SCORING: 0.55, Stage.TIMING: 0.75, Stage.CHECKPOINT: 0.85, Stage.PEAK_MEMORY: 0.88,
    Stage.LAYER_ERROR: 0.92, Stage.RECORDING: 0.96, Stage.DONE: 1.0,
}


@dataclass(frozen=True)
class RunEvent:
    """One step of a run: the stage it belongs to and the line it printed."""

    stage: Stage
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return PROGRESS[self.stage]


OnEvent = Callable[[RunEvent], None]


class SearchStage(str, Enum):
    """The stages of a search (`qrecipe search`, engine/search/), in order."""

    PLANNING = "planning"
    SENSITIVITY = "sensitivity"
    ALLOCATING = "allocating"
    FRONT = "front"


@dataclass(frozen=True)
class SearchEvent:
    """One step of a search: its stage, the share of the search's own work done, the line it printed."""

    stage: SearchStage
    progress: float
    message: str


OnSearchEvent = Callable[[SearchEvent], None]
