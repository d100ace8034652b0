"""A request -> the jobs to queue. A recipe job is composed and its plan resolved here, at
submit time, so a bad recipe, override or path is refused at once with the one-line error the
CLI gives, and the job stores the composed config it will run (a recipe file edited later
does not change a queued job)."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

from qrecipe.engine.errors import ConfigError

from .config import OPERATOR_SECTIONS, JobsConfig, with_operator_sections
from .overrides import check_overrides
from .paths import check_calibration_path, check_paths
from .queue import JobSpec
from .requests import JobRequest

# Hydra's compose API keeps global state (GlobalHydra): one composition at a time per process.
_COMPOSE_LOCK = threading.Lock()


def request_overrides(request: JobRequest) -> list[str]:
    """The request's recipe, model and target fields as group choices, then its overrides."""
    named = {o.lstrip("+~").split("=", 1)[0] for o in request.overrides}
    out = []
    for field in ("recipe", "model", "target"):
        value = getattr(request, field)
        if value is not None:
            if field in named:
                raise ConfigError(f"{field}: given both as a field and as the override {field}=...; give it once")
            out.append(f"{field}={value}")
    return out + list(request.overrides)


def sweep_points(overrides: list[str], sweep: bool, max_points: int) -> list[list[str]]:
    """One override list per point; the size is checked before anything is expanded."""
    from qrecipe.engine.config import expand_sweep
    from qrecipe.engine.config.compose import parse_overrides

    if not sweep:
        return [overrides]
    total = 1
    for ov in parse_overrides(overrides):
        if ov.is_sweep_override():
            try:
                total *= sum(1 for _ in itertools.islice(ov.sweep_string_iterator(), max_points + 1))
            except Exception as e:  # noqa: BLE001 - e.g. glob(), which needs the config to expand
                raise ConfigError(f"{ov.key_or_group}: cannot expand this sweep in a request ({e}); list the values "
                                  f"(a=1,2,3)") from None
            if total > max_points:
                raise ConfigError(f"sweep: more than {max_points} points (jobs.max_sweep_points); split it into "
                                  f"smaller requests")
    return expand_sweep(overrides)


@dataclass
class Submitter:
    jobs: JobsConfig
    operator: dict[str, Any]  # the service's paths, tracking and registry (config.operator_sections)

    def specs(self, request: JobRequest) -> list[JobSpec]:
        attempts = request.max_attempts or self.jobs.max_attempts
        if request.kind == "sleep":
            return [self._sleep(request, attempts)]
        if request.sleep is not None:
            raise ConfigError("sleep: only a sleep job takes sleep parameters; remove them or set \"kind\": \"sleep\"")
        params = self._debug(request)
        points = sweep_points(request_overrides(request), request.sweep, self.jobs.max_sweep_points)
        if request.kind == "search":
            from qrecipe.engine.search.spec import with_search_group

            points = [with_search_group(point) for point in points]
        for point in points:  # every point is checked before any is composed
            check_overrides(point, allow_hub=self.jobs.allow_hub)
        return [self._recipe_job(request, point, attempts, params) for point in points]

    def _debug(self, request: JobRequest) -> dict[str, Any]:
        if request.debug is None:
            return {}
        if not self.jobs.debug_kinds:
            raise ConfigError("debug: test hooks are turned off on this service (jobs.debug_kinds=false); remove "
                              "the field")
        if request.kind != "run":
            raise ConfigError("debug.pause_at: only a run job has stages to pause at; set \"kind\": \"run\"")
        return request.debug.model_dump()

    def _sleep(self, request: JobRequest, attempts: int) -> JobSpec:
        if not self.jobs.debug_kinds:
            raise ConfigError("kind: sleep jobs are turned off on this service (jobs.debug_kinds=false); submit a run "
                              "or plan job")
        if request.recipe or request.model or request.target or request.overrides or request.sweep:
            raise ConfigError("kind: a sleep job takes no recipe, model, target, overrides or sweep; remove them")
        params = (request.sleep.model_dump() if request.sleep else {"seconds": 0.0, "fail": False})
        return JobSpec(kind="sleep", priority=request.priority, max_attempts=attempts, overrides=[], params=params)

    def _recipe_job(self, request: JobRequest, point: list[str], attempts: int, params: dict[str, Any]) -> JobSpec:
        from omegaconf import OmegaConf

        from qrecipe.engine.config import compose, load_settings
        from qrecipe.engine.planning import check_inputs

        forced = [] if self.jobs.allow_hub else ["model.allow_hub=false"]
        with _COMPOSE_LOCK:
            composed = compose(point + forced, user_recipes=False)  # never the service's QRECIPE_RECIPE_PATH
            settings = load_settings(with_operator_sections(composed, self.operator))
            check_paths(settings, self.jobs.roots(), allow_hub=self.jobs.allow_hub)
            if request.kind == "search":  # a search always reads its calibration slice
                check_calibration_path(settings, self.jobs.roots())
                # what the files hold is looked at only once they are known to lie under the roots
                searched = _prepare_search(settings)
            else:
                plan, ident = _resolve(settings, request.kind)
                if plan.calibrates:
                    check_calibration_path(settings, self.jobs.roots())
                # what the files hold is looked at only once they are known to lie under the roots
                check_inputs(settings, plan)  # as `qrecipe plan` and `qrecipe run` do
        own = {k: v for k, v in OmegaConf.to_container(composed, resolve=False).items() if k not in OPERATOR_SECTIONS}
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(own))
        if request.kind == "search":  # the recipe's name and the variant are known once it has run
            return JobSpec(kind="search", priority=request.priority, max_attempts=attempts, overrides=point,
                           params={"budget": searched["budget"]}, model=searched["model"], target=searched["target"],
                           config_yaml=config_yaml)
        return JobSpec(kind=request.kind, priority=request.priority, max_attempts=attempts, overrides=point,
                       params=params, recipe=plan.recipe, model=plan.model_id, target=plan.target,
                       config_yaml=config_yaml, plan_hash=plan.plan_hash,
                       expected_variant_id=ident.variant_id if ident else None)


def _prepare_search(settings) -> dict[str, Any]:
    """The checks `qrecipe search` makes before any weights load (budget, candidates, output, the
    files it reads)."""
    from qrecipe.engine.search import prepare

    p = prepare(settings)
    return {"budget": {p.spec.budget.kind: p.spec.budget.value}, "model": p.info.model_id,
            "target": settings.target.name}


def _resolve(settings, kind: str):
    """(plan, variant identity or None); the plan resolved on a CPU where the job asks for a GPU this lacks."""
    import torch

    from qrecipe.engine.planning import build_plan

    from ..recorder import identity

    # The service plans on its own CPU when the job asks for a GPU it lacks: the worker's run
    # resolves the plan again on its device (the expected variant id says what the service saw).
    device = torch.device("cpu") if settings.run.device != "cpu" and not torch.cuda.is_available() else None
    plan, info = build_plan(settings, device)
    return plan, identity(settings, plan, info.model_type) if kind == "run" else None
