"""Which config overrides a job request may carry: an allowlist, checked before anything composes.

A request chooses a recipe, model, target and datasets among the shipped configs, and may
change recipe fields, evaluation and calibration sizes, a few model and run fields, and paths
(checked afterwards against the allowed roots, paths.py). It may not touch what belongs to
the operator (paths, tracking, registry, jobs, service), Hydra itself (hydra.*), code loading
(model.trust_remote_code, Hydra's _target_ and friends), or smuggle values in through
interpolations (${oc.env:SECRET} would copy the service's environment into the run's record).
"""

from __future__ import annotations

import re
from typing import Any

from qrecipe.engine.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a config choice: no folders, no '..'
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")

# Value keys a request may set, as full-match patterns on the dotted key.
_DATA_FIELDS = r"(path|format|field|split)"
ALLOWED_KEYS = tuple(re.compile(p) for p in (
    r"recipe(\.[A-Za-z0-9_-]+)+",
    r"eval\.(seq_len|windows|batch_size|kl_topk)",
    r"eval\.tasks\.(families|prompts|new_tokens|reference_tokens|max_prompt_tokens|batch_size|chat_template"
    r"|gsm8k|humaneval|mbpp)",
    r"eval\.lm_eval\.(tasks|limit|batch_size|source|data)",
    r"eval\.speed\.(enabled|prompt_len|batch_size|context_len|decode_batch_size|new_tokens|warmup|repeats"
    r"|max_rel_iqr|timing)",
    r"eval\.memory\.method",
    rf"eval\.data\.{_DATA_FIELDS}",
    rf"eval\.texts\.[A-Za-z0-9_-]+(\.{_DATA_FIELDS})?",
    r"calib\.(samples|seq_len|seed|batch_size)",
    rf"calib\.data\.{_DATA_FIELDS}",
    r"model\.(name|path|gguf_file|dtype|revision|cache_gguf)",
    r"target\.(memory_gib|compute_capability|capabilities|dtype|memory_utilization|max_devices|bandwidth_gb_s"
    r"|dense_tflops(\.[a-z0-9]+)?)",
    r"run\.(seed|device|output_dir|save_checkpoint|streaming|activation_budget_gib)",
    r"search(\.[A-Za-z0-9_-]+)+",
))
# Config groups a request may choose from, by the package they fill (None: their own).
GROUPS = {"recipe": (None,), "model": (None,), "target": (None,), "eval": (None,), "calib": (None,),
          "search": (None,),
          "data": ("eval.data", "calib.data", "eval.texts.*")}
OPERATOR_OWNED = ("paths", "tracking", "registry", "jobs", "service", "gates")
ALLOWED_SUMMARY = ("recipe=NAME, model=NAME, target=NAME, data@eval.data=NAME, data@calib.data=NAME, recipe.*, "
                   "eval.*, calib.*, model.name/path/gguf_file/dtype/revision, target.* sizes, "
                   "run.seed/device/output_dir/save_checkpoint/streaming/activation_budget_gib, search.* (search jobs)")


def shipped_recipes() -> list[str]:
    """Recipes in qrecipe's own recipes/ folder: a request never reaches QRECIPE_RECIPE_PATH."""
    from qrecipe.engine.config.recipes import recipe_files

    return list(recipe_files(user=False))


def group_options(group: str) -> list[str]:
    if group == "recipe":
        return shipped_recipes()
    from qrecipe.engine.config.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_overrides(overrides: list[str], *, allow_hub: bool) -> None:
    """Raise ConfigError (one sentence naming the key and the fix) for the first override a
    request may not carry. Sweeps must be expanded first (submit.py)."""
    from qrecipe.engine.config.compose import parse_overrides

    for ov in parse_overrides(list(overrides)):
        key = ov.key_or_group
        if ov.is_sweep_override():
            raise ConfigError(f"{key}: sweep values (a=1,2) need \"sweep\": true in the request, which submits one "
                              f"job per point")
        if key in GROUPS and (ov.package is not None or ov.value() is None or isinstance(ov.value(), str)):
            _check_group(key, ov.package, ov.value())
        else:
            _check_key(key, ov.package)
            if key == "model.path" and isinstance(ov.value(), str) and ov.value().startswith("pypi:"):
                raise ConfigError("model.path: a job request cannot name an installed package (pypi:...); choose a "
                                  "model config (model=NAME) or a folder under the service's allowed roots")
            _check_value(key, ov.value())


def _check_group(group: str, package: str | None, name: Any) -> None:
    packages = GROUPS[group]
    if not any(package == p or (p and p.endswith(".*") and package and package.startswith(p[:-1])
                                and _SEGMENT.match(package[len(p) - 1:])) for p in packages):
        raise ConfigError(f"{group}@{package}: a job request may choose {group} only for "
                          f"{', '.join(str(p) for p in packages)}; use data@eval.data=NAME or data@calib.data=NAME")
    if name is None:
        raise ConfigError(f"~{group}: a job request cannot delete a config group; choose another {group}=NAME")
    options = group_options(group)
    if not _NAME.match(name) or ".." in name or name not in options:
        what = "recipe" if group == "recipe" else f"{group} config"
        raise ConfigError(f"{group}={name}: no {what} named {name!r}; available: {', '.join(options)}")


def _check_key(key: str, package: str | None) -> None:
    if package is not None:
        raise ConfigError(f"{key}@{package}: a job request may only retarget the data group (data@eval.data=NAME)")
    top = key.split(".", 1)[0]
    if top.split("/", 1)[0] == "hydra":
        raise ConfigError(f"{key}: hydra.* settings are not part of a qrecipe config; remove the override")
    if top in OPERATOR_OWNED:
        raise ConfigError(f"{key}: {top}.* is set by the operator of the service, not by a job request; remove the "
                          f"override")
    if key == "model.trust_remote_code":
        raise ConfigError("model.trust_remote_code: a job request may not run code shipped with a model; remove "
                          "the override")
    if key == "model.allow_hub":
        raise ConfigError("model.allow_hub: hub access is the service's choice (jobs.allow_hub); remove the override")
    if any(_reserved(part) for part in key.split(".")):
        raise ConfigError(f"{key}: Hydra instantiation keys (_target_ and the like) are refused in a job request")
    if not any(p.fullmatch(key) for p in ALLOWED_KEYS):
        raise ConfigError(f"{key}: not a key a job request may set; requests may set {ALLOWED_SUMMARY}")


def _reserved(name: str) -> bool:
    return len(name) > 1 and name.startswith("_") and name.endswith("_")


def _check_value(key: str, value: Any) -> None:
    """No interpolation (the rule compose applies to every override) and no instantiation key
    anywhere inside the value."""
    from qrecipe.engine.config.compose import INTERPOLATION_REFUSED, has_interpolation

    if has_interpolation(value):
        raise ConfigError(f"{key}: {INTERPOLATION_REFUSED}")
    if isinstance(value, dict):
        for k, v in value.items():
            if _reserved(str(k)):
                raise ConfigError(f"{key}.{k}: Hydra instantiation keys (_target_ and the like) are refused in a job "
                                  f"request")
            _check_value(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_value(key, v)
