"""The composed config, validated into frozen settings before any model weights load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..models.spec import ModelSpec
from ..targets import Target, parse_target
from .typed import build

if TYPE_CHECKING:  # the recipe schema imports the weight formats (torch): loaded when a recipe is parsed
    from ..recipe import Recipe


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


TASK_FAMILIES = ("prose", "math", "code", "json")


@dataclass(frozen=True)
class TaskSpec:
    """Behaviour by task family (conf/eval/default.yaml explains each field)."""

    families: tuple[str, ...] = ()
    prompts: int = 6
    new_tokens: int = 32
    reference_tokens: int = 64
    max_prompt_tokens: int = 320
    batch_size: int = 8
    chat_template: str = "auto"  # auto | never
    gsm8k: str = ""
    humaneval: str = ""
    mbpp: str = ""


LM_EVAL_SOURCES = ("local", "hub")


@dataclass(frozen=True)
class LmEvalSpec:
    """Multiple-choice tasks through lm-evaluation-harness (conf/eval/default.yaml explains each field)."""

    tasks: tuple[str, ...] = ()  # empty: off
    limit: int | None = None  # the first N items of each task (lm-eval's --limit); None: all
    batch_size: int = 8
    source: str = "local"  # local: the task files under `data`; hub: lm-eval's own task definitions
    data: str = ""  # the folder holding arc-easy/, piqa/, ... (source=local)

    @property
    def enabled(self) -> bool:
        return bool(self.tasks)


MIN_SPEED_REPEATS = 5  # fewer timed repeats cannot state an interquartile range worth the name
SPEED_TIMINGS = ("auto", "interleaved", "sequential")


@dataclass(frozen=True)
class SpeedSpec:
    """How speed is timed (conf/eval/default.yaml explains each field); the roofline
    prediction (engine/plan/roofline.py) is made for the same workload."""

    enabled: bool = True
    prompt_len: int = 256  # prefill: batch_size x prompt_len tokens in one forward
    batch_size: int = 1
    context_len: int = 256  # decode: tokens already in the KV cache when the timed steps start
    decode_batch_size: int = 1
    new_tokens: int = 8
    warmup: int = 1
    repeats: int = 5
    max_rel_iqr: float = 0.10  # a model's IQR / median of repeats above which its speedups are noisy
    timing: str = "auto"  # auto | interleaved | sequential (see engine/evaluate/speed.py)


@dataclass(frozen=True)
class MemorySpec:
    method: str = "auto"  # auto | child | cuda | off


@dataclass(frozen=True)
class EvalSpec:
    data: DataSpec = field(metadata={"hint": "choose a dataset with data@eval.data=NAME (e.g. data@eval.data=text "
                                             "eval.data.path=FILE)"})
    seq_len: int = 512
    windows: int = 32
    batch_size: int = 4
    kl_topk: int = 64
    texts: dict[str, Any] = field(default_factory=dict)  # name -> DataSpec: more texts to score
    tasks: TaskSpec = field(default_factory=TaskSpec)
    lm_eval: LmEvalSpec = field(default_factory=LmEvalSpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    memory: MemorySpec = field(default_factory=MemorySpec)

    def all_texts(self) -> dict[str, DataSpec]:
        """The primary eval text first (its name), then the extra texts."""
        return {self.data.name: self.data, **self.texts}

    def text_field(self, name: str) -> str:
        """The config field that names a text (for error messages)."""
        return "eval.data" if name == self.data.name else f"eval.texts.{name}"


@dataclass(frozen=True)
class CalibSpec:
    data: DataSpec = field(metadata={"hint": "choose a dataset with data@calib.data=NAME (e.g. data@calib.data=c4)"})
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 8
    # An expert the router sends fewer calibration tokens than this is quantized with RTN
    # (statistics of a handful of tokens overfit them); the run's notes list each one.
    min_expert_tokens: int = 128
    # The dtype of the calibration's forward passes and GPTQ's refinement steps: float32 or
    # bfloat16 (autocast; statistics and solvers stay float32): engine/quant/precision.py.
    precision: str = "float32"


STREAMING_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class RunSpec:
    device: str = "auto"
    seed: int = 0
    output_dir: str | None = None
    save_checkpoint: bool = True
    # Models bigger than memory (engine/streaming/): auto streams the float weights block by block
    # when they do not fit the compute device with room for one block's work.
    streaming: str = "auto"  # auto | always | never
    activation_budget_gib: float = 4.0  # host memory for calibration activations; the rest spills to disk
    resume_dir: str = "qrecipe_runs/resume"  # streamed runs keep finished blocks here until they succeed


@dataclass(frozen=True)
class PathsSpec:
    shared: str
    root: str
    cache: str


@dataclass(frozen=True)
class TrackingSpec:
    """MLflow: null uri means the embedded store under paths.root (conf/tracking/)."""

    enabled: bool = False
    uri: str | None = None
    artifact_root: str | None = None
    experiment_prefix: str = "qrecipe-"


@dataclass(frozen=True)
class RegistrySpec:
    """The SQL registry: null url means SQLite under paths.root (conf/registry/)."""

    enabled: bool = False
    url: str | None = None


@dataclass(frozen=True)
class Settings:
    recipe: Recipe
    model: ModelSpec
    eval: EvalSpec
    calib: CalibSpec
    target: Target
    run: RunSpec
    paths: PathsSpec
    sections: dict[str, Any]  # sections owned by other subsystems (gates, jobs, ...), resolved
    raw: DictConfig
    tracking: TrackingSpec = TrackingSpec()
    registry: RegistrySpec = RegistrySpec()

    def resolved_yaml(self) -> str:
        return OmegaConf.to_yaml(self.raw, resolve=True)


# Sections validated here; other subsystems validate their own (gates, jobs, ...).
CORE_SECTIONS = ("recipe", "model", "eval", "calib", "target", "run", "paths", "tracking", "registry")
OTHER_SECTIONS = ("gates", "jobs", "service", "search")


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


@dataclass(frozen=True)
class StoreSettings:
    """Where records are kept (paths, tracking, registry) and the other subsystems' sections:
    all that commands reading the registry need. Built without the recipe, model or target, so
    those commands load no torch."""

    paths: PathsSpec
    sections: dict[str, Any]
    raw: DictConfig
    tracking: TrackingSpec = TrackingSpec()
    registry: RegistrySpec = RegistrySpec()


def _known_sections(cfg: DictConfig) -> dict[str, Any]:
    node = _resolve(cfg)
    for key in node:
        if key not in CORE_SECTIONS + OTHER_SECTIONS:
            raise ConfigError(f"{key}: unknown top-level key; known sections are "
                              f"{', '.join(CORE_SECTIONS + OTHER_SECTIONS)}")
    return node


def _store_sections(node: dict[str, Any], cfg: DictConfig) -> StoreSettings:
    tracking = build(TrackingSpec, node.get("tracking") or {}, "tracking")
    registry = build(RegistrySpec, node.get("registry") or {}, "registry")
    if registry.url is not None and not registry.url.startswith(("sqlite:", "postgresql")):
        raise ConfigError(f"registry.url: {registry.url!r} is neither sqlite:///PATH nor postgresql://...; "
                          f"pass one of those or leave it null for SQLite under paths.root")
    return StoreSettings(paths=build(PathsSpec, node.get("paths"), "paths"),
                         sections={k: node[k] for k in OTHER_SECTIONS if k in node}, raw=cfg,
                         tracking=tracking, registry=registry)


def load_store_settings(cfg: DictConfig) -> StoreSettings:
    return _store_sections(_known_sections(cfg), cfg)


def load_settings(cfg: DictConfig) -> Settings:
    from ..algorithms import algorithm_names, check_recipe_algorithms
    from ..recipe import parse_recipe

    node = _known_sections(cfg)
    recipe = parse_recipe(node.get("recipe"), algorithm_names())
    check_recipe_algorithms(recipe)
    model = build(ModelSpec, node.get("model"), "model")
    eval_spec = build(EvalSpec, node.get("eval"), "eval")
    calib = build(CalibSpec, node.get("calib"), "calib")
    for where, value in (("eval.seq_len", eval_spec.seq_len), ("eval.windows", eval_spec.windows),
                         ("eval.batch_size", eval_spec.batch_size), ("calib.samples", calib.samples),
                         ("calib.seq_len", calib.seq_len), ("calib.batch_size", calib.batch_size),
                         ("calib.min_expert_tokens", calib.min_expert_tokens)):
        _positive(value, where)
    for where, data in (("eval.data", eval_spec.data), ("calib.data", calib.data)):
        if data.format not in ("auto", "text", "jsonl"):
            raise ConfigError(f"{where}.format: expected auto, text or jsonl, got {data.format!r}")
    from ..quant.precision import PRECISIONS

    if calib.precision not in PRECISIONS:
        raise ConfigError(f"calib.precision: expected {' or '.join(PRECISIONS)}, got {calib.precision!r}")
    eval_spec = _check_eval(eval_spec)
    run = build(RunSpec, node.get("run"), "run")
    if run.device not in ("auto", "cpu", "cuda") and not run.device.startswith("cuda:"):
        raise ConfigError(f"run.device: expected auto, cpu or cuda[:N], got {run.device!r}")
    if run.streaming not in STREAMING_MODES:
        raise ConfigError(f"run.streaming: expected auto, always or never, got {run.streaming!r}")
    if not run.activation_budget_gib >= 0:
        raise ConfigError(f"run.activation_budget_gib: must be 0 or more (GiB of host memory), got "
                          f"{run.activation_budget_gib}")
    store = _store_sections(node, cfg)
    return Settings(recipe=recipe, model=model, eval=eval_spec, calib=calib, target=parse_target(node.get("target")),
                    run=run, paths=store.paths, sections=store.sections, raw=cfg, tracking=store.tracking,
                    registry=store.registry)


def _check_speed(speed: SpeedSpec) -> None:
    if speed.warmup < 0:
        raise ConfigError(f"eval.speed.warmup: must be 0 or more, got {speed.warmup}")
    if speed.repeats < MIN_SPEED_REPEATS:
        raise ConfigError(f"eval.speed.repeats: at least {MIN_SPEED_REPEATS} timed repeats are needed to state a "
                          f"spread (median and interquartile range), got {speed.repeats}; set "
                          f"eval.speed.repeats={MIN_SPEED_REPEATS} or more, or eval.speed.enabled=false")
    if not 0 < speed.max_rel_iqr < 10:
        raise ConfigError(f"eval.speed.max_rel_iqr: expected a share such as 0.1 (10%), got {speed.max_rel_iqr}")
    if speed.timing not in SPEED_TIMINGS:
        raise ConfigError(f"eval.speed.timing: expected {', '.join(SPEED_TIMINGS)}, got {speed.timing!r}")


def _check_eval(spec: EvalSpec) -> EvalSpec:
    """Types the extra texts and checks the measurement fields; returns the typed spec."""
    texts = {}
    for name, node in spec.texts.items():
        texts[name] = build(DataSpec, node, f"eval.texts.{name}")
        if name == spec.data.name:
            raise ConfigError(f"eval.texts.{name}: {name!r} is already the primary eval text (eval.data); "
                              f"remove it from eval.texts")
    for where, value in (("eval.kl_topk", spec.kl_topk), ("eval.tasks.prompts", spec.tasks.prompts),
                         ("eval.tasks.new_tokens", spec.tasks.new_tokens),
                         ("eval.tasks.reference_tokens", spec.tasks.reference_tokens),
                         ("eval.tasks.max_prompt_tokens", spec.tasks.max_prompt_tokens),
                         ("eval.tasks.batch_size", spec.tasks.batch_size),
                         ("eval.lm_eval.batch_size", spec.lm_eval.batch_size),
                         ("eval.speed.prompt_len", spec.speed.prompt_len),
                         ("eval.speed.batch_size", spec.speed.batch_size),
                         ("eval.speed.context_len", spec.speed.context_len),
                         ("eval.speed.decode_batch_size", spec.speed.decode_batch_size),
                         ("eval.speed.new_tokens", spec.speed.new_tokens),
                         ("eval.speed.repeats", spec.speed.repeats)):
        _positive(value, where)
    _check_speed(spec.speed)
    unknown = [f for f in spec.tasks.families if f not in TASK_FAMILIES]
    if unknown:
        raise ConfigError(f"eval.tasks.families: unknown {unknown}; choose from {list(TASK_FAMILIES)} "
                          f"(or [] for none)")
    if spec.lm_eval.limit is not None:
        _positive(spec.lm_eval.limit, "eval.lm_eval.limit")
    if spec.lm_eval.source not in LM_EVAL_SOURCES:
        raise ConfigError(f"eval.lm_eval.source: expected local or hub, got {spec.lm_eval.source!r}")
    if spec.tasks.chat_template not in ("auto", "never"):
        raise ConfigError(f"eval.tasks.chat_template: expected auto or never, got {spec.tasks.chat_template!r}")
    if spec.memory.method not in ("auto", "child", "cuda", "off"):
        raise ConfigError(f"eval.memory.method: expected auto, child, cuda or off, got {spec.memory.method!r}")
    return dataclasses.replace(spec, texts=texts)
