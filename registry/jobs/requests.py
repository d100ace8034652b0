"""What a client may send: every field typed and bounded, unknown fields refused (pydantic),
before any config is composed. Overrides are then checked key by key (overrides.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qrecipe.engine.events import Stage

Override = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class SleepParams(BaseModel):
    """A `sleep` job (queue tests and benchmarks; the service must enable jobs.debug_kinds)."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(0.0, ge=0, le=3600)
    fail: bool = False  # end with an error instead of a result


class DebugParams(BaseModel):
    """Test hooks for run jobs (the service must enable jobs.debug_kinds)."""

    model_config = ConfigDict(extra="forbid")
    pause_at: Literal[tuple(s.value for s in Stage if s is not Stage.DONE)] = Field(
        description="hold the run at this stage until the job is cancelled, then let it go on")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["run", "plan", "search", "sleep"] = Field(
        "run", description="run: quantize and measure (a variant); plan: resolve the plan only; search: find the "
                           "cheapest per-layer mix for a budget (search.budget.*), write it as a recipe, run it")
    recipe: Name | None = Field(None, description="a recipe in qrecipe's recipes/ folder (same as recipe=NAME)")
    model: Name | None = Field(None, description="a model config (same as model=NAME)")
    target: Name | None = Field(None, description="a deployment target config (same as target=NAME)")
    overrides: list[Override] = Field(default_factory=list, max_length=1000,
                                      description="Hydra-style overrides, checked against an allowlist")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first; equal priorities run in order")
    sweep: bool = Field(False, description="expand sweep syntax (a=1,2) into one job per point")
    max_attempts: int | None = Field(None, ge=1, le=10, description="default: the service's jobs.max_attempts")
    sleep: SleepParams | None = None
    debug: DebugParams | None = None

    def canonical_hash(self) -> str:
        """Equal for equal requests (the Idempotency-Key check compares these)."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,49}$")] = "production"
    force: bool = False
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None
