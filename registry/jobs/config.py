"""The operator's settings for the queue, its workers and the service: the `jobs` and `service`
config groups (conf/jobs/, conf/service/), composed only by `qrecipe serve|worker|jobs`, so a
plain `qrecipe run` records neither section in its config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrecipe.engine.errors import ConfigError

OPERATOR_GROUPS = ("jobs", "service")
# Sections of a job's config that belong to the machine running it, not to the request.
OPERATOR_SECTIONS = ("paths", "tracking", "registry")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RaySpec:
    address: str | None = None
    num_cpus: float = 1.0


@dataclass(frozen=True)
class JobsConfig:
    executor: str = "local"
    workers: int = 2
    max_attempts: int = 3
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    cancel_grace_seconds: float = 20.0
    log_flush_seconds: float = 1.0
    allowed_roots: tuple[str, ...] = ()
    allow_hub: bool = False
    debug_kinds: bool = False
    max_sweep_points: int = 64
    ray: RaySpec = field(default_factory=RaySpec)

    def roots(self) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in self.allowed_roots]


@dataclass(frozen=True)
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    tokens_file: str | None = None
    max_body_bytes: int = 65536
    max_overrides: int = 64
    docs: bool = False  # Swagger UI at /docs (its assets come from a CDN); /openapi.json is always served


def with_operator_groups(overrides: list[str]) -> list[str]:
    """The user's overrides with `+jobs=default +service=default` in front, unless the user
    chose those groups (`jobs=NAME` or `+jobs=NAME`) themselves."""
    chosen = {o.lstrip("+").split("=", 1)[0] for o in overrides if "=" in o}
    front = [f"+{g}=default" for g in OPERATOR_GROUPS if g not in chosen]
    return front + [f"+{o}" if o.split("=", 1)[0] in OPERATOR_GROUPS else o for o in overrides]


def jobs_config(sections: dict[str, Any]) -> JobsConfig:
    from qrecipe.engine.config.typed import build

    cfg = build(JobsConfig, sections.get("jobs") or {}, "jobs")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"jobs.executor: expected local or ray, got {cfg.executor!r}")
    for name in ("lease_seconds", "heartbeat_seconds", "poll_seconds", "log_flush_seconds", "max_attempts",
                 "max_sweep_points"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"jobs.{name}: must be positive, got {getattr(cfg, name)}")
    if cfg.workers < 0 or cfg.cancel_grace_seconds < 0:
        raise ConfigError("jobs.workers and jobs.cancel_grace_seconds: must be 0 or more")
    if cfg.heartbeat_seconds * 2 > cfg.lease_seconds:
        raise ConfigError(f"jobs.heartbeat_seconds: {cfg.heartbeat_seconds} is more than half of jobs.lease_seconds "
                          f"({cfg.lease_seconds}); a worker would lose its lease between two heartbeats. Lower it "
                          f"or raise jobs.lease_seconds")
    return cfg


def service_config(sections: dict[str, Any]) -> ServiceConfig:
    from qrecipe.engine.config.typed import build

    cfg = build(ServiceConfig, sections.get("service") or {}, "service")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"service.port: {cfg.port} is not a TCP port; pass 1-65535")
    if cfg.max_body_bytes < 1024 or cfg.max_overrides < 1:
        raise ConfigError("service.max_body_bytes (>= 1024) and service.max_overrides (>= 1): too small")
    return cfg


def operator_sections(cfg) -> dict[str, Any]:
    """The operator's paths, tracking and registry, resolved on this machine (paths.root made
    absolute, so a job's outputs land where the operator said, whatever the job's cwd)."""
    from omegaconf import OmegaConf

    out = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in OPERATOR_SECTIONS if name in cfg}
    for key in ("root", "shared", "cache"):
        if out.get("paths", {}).get(key):
            out["paths"][key] = str(Path(out["paths"][key]).expanduser().resolve())
    return out


def with_operator_sections(job_cfg, sections: dict[str, Any], registry_url: str | None = None):
    """A job's config with the operator's paths, tracking and registry in place of its own (a
    request never sets them); registry_url, when given, is the queue's database, where the run
    then records its variant."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(job_cfg, resolve=False))
    for name, node in sections.items():
        cfg[name] = node
    if registry_url is not None:
        cfg.registry = {"enabled": True, "url": registry_url}
    return cfg
