"""The composed config, validated into frozen settings before any model weights load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from ..errors import ConfigError
from ..models.spec import ModelSpec
from ..recipe import Recipe, parse_recipe
from ..targets import Target, parse_target
from .typed import build


@dataclass(frozen=True)
class HubSpec:
    id: str
    config: str | None = None
    split: str = "train"
    field: str = "text"


@dataclass(frozen=True)
class DataSpec:
    name: str
    path: str
    format: str = "auto"  # auto | text | jsonl
    field: str = "text"  # the text key of a jsonl document
    split: str | None = None
    hub: HubSpec | None = None


@dataclass(frozen=True)
class EvalSpec:
    data: DataSpec = field(metadata={"hint": "choose a dataset with data@eval.data=NAME (e.g. data@eval.data=text "
                                             "eval.data.path=FILE)"})
    seq_len: int = 512
    windows: int = 32
    batch_size: int = 4


@dataclass(frozen=True)
class CalibSpec:
    data: DataSpec = field(metadata={"hint": "choose a dataset with data@calib.data=NAME (e.g. data@calib.data=c4)"})
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 8


@dataclass(frozen=True)
class RunSpec:
    device: str = "auto"
    seed: int = 0
    output_dir: str | None = None
    save_checkpoint: bool = True


@dataclass(frozen=True)
class PathsSpec:
    shared: str
    root: str
    cache: str


@dataclass(frozen=True)
class Settings:
    recipe: Recipe
    model: ModelSpec
    eval: EvalSpec
    calib: CalibSpec
    target: Target
    run: RunSpec
    paths: PathsSpec
    sections: dict[str, Any]  # sections owned by other subsystems (tracking, ...), resolved
    raw: DictConfig

    def resolved_yaml(self) -> str:
        return OmegaConf.to_yaml(self.raw, resolve=True)


# Sections validated here; other subsystems validate their own (tracking, registry, ...).
CORE_SECTIONS = ("recipe", "model", "eval", "calib", "target", "run", "paths")
OTHER_SECTIONS = ("tracking", "registry", "gates", "jobs", "service")


def _positive(value: int, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: must be a positive integer, got {value}")


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = e.full_key
        raise ConfigError(f"{key}: missing; set it on the command line with {key}=VALUE") from None
    except InterpolationResolutionError as e:
        raise ConfigError(f"{e.full_key}: cannot resolve its value ({e.msg.splitlines()[0]})") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', 'config')}: {str(e).splitlines()[0]}") from None


def load_settings(cfg: DictConfig) -> Settings:
    from ..algorithms import algorithm_names, check_recipe_algorithms

    node = _resolve(cfg)
    for key in node:
        if key not in CORE_SECTIONS + OTHER_SECTIONS:
            raise ConfigError(f"{key}: unknown top-level key; known sections are "
                              f"{', '.join(CORE_SECTIONS + OTHER_SECTIONS)}")
    recipe = parse_recipe(node.get("recipe"), algorithm_names())
    check_recipe_algorithms(recipe)
    model = build(ModelSpec, node.get("model"), "model")
    eval_spec = build(EvalSpec, node.get("eval"), "eval")
    calib = build(CalibSpec, node.get("calib"), "calib")
    for where, value in (("eval.seq_len", eval_spec.seq_len), ("eval.windows", eval_spec.windows),
                         ("eval.batch_size", eval_spec.batch_size), ("calib.samples", calib.samples),
                         ("calib.seq_len", calib.seq_len), ("calib.batch_size", calib.batch_size)):
        _positive(value, where)
    for where, data in (("eval.data", eval_spec.data), ("calib.data", calib.data)):
        if data.format not in ("auto", "text", "jsonl"):
            raise ConfigError(f"{where}.format: expected auto, text or jsonl, got {data.format!r}")
    run = build(RunSpec, node.get("run"), "run")
    if run.device not in ("auto", "cpu", "cuda") and not run.device.startswith("cuda:"):
        raise ConfigError(f"run.device: expected auto, cpu or cuda[:N], got {run.device!r}")
    return Settings(recipe=recipe, model=model, eval=eval_spec, calib=calib, target=parse_target(node.get("target")),
                    run=run, paths=build(PathsSpec, node.get("paths"), "paths"),
                    sections={k: node[k] for k in OTHER_SECTIONS if k in node}, raw=cfg)
