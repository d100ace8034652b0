"""Every file a job would read lies under the operator's allowed roots, and every folder it would
write lies under the output root; a model that is not a local folder (a hub id) needs the
operator's jobs.allow_hub. Checked on the composed, resolved settings (so interpolated paths
are checked as they will be used) when a job is submitted, and again by the process that runs
it, on the machine that runs it.

The calibration data is read only when the plan calibrates (Plan.calibrates), so its path is
checked apart, once the plan is resolved: `check_paths` first (the plan reads the model's
config), then `check_calibration_path` if the plan calibrates."""

from __future__ import annotations

import re
from pathlib import Path

from qrecipe.engine.errors import ConfigError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # it names folders under the cache and the runs


def check_paths(settings, roots: list[Path], *, allow_hub: bool) -> None:
    """Raise ConfigError naming the first field whose path lies outside where a job may go
    (all but the calibration data: check_calibration_path)."""
    model = settings.model
    if model.trust_remote_code:
        raise ConfigError("model.trust_remote_code: a job may not run code shipped with a model; set it to false")
    if not model.path.startswith("pypi:"):  # pypi: paths come only from shipped model configs (overrides.py)
        folder = Path(model.path)
        if folder.is_absolute() or model.path.startswith(("~", ".")) or not _looks_like_hub_id(model.path):
            _under(folder, roots, "model.path")
            if model.gguf_file:
                _under(folder / model.gguf_file, roots, "model.gguf_file")
        elif not (allow_hub and model.allow_hub):
            raise ConfigError(f"model.path: {model.path!r} is not a local folder, and this service does not fetch "
                              f"models from the hub (jobs.allow_hub=false); use a folder under "
                              f"{_listing(roots)}")
    # A GGUF model's name names its folder in the conversion cache (model=hf names it by its path)
    if (not _MODEL_NAME.match(model.name) or ".." in model.name) and (model.gguf_file or model.name != model.path):
        raise ConfigError(f"model.name: {model.name!r} must be a plain name (letters, digits, '.', '_', '-'); set "
                          f"model.name=NAME")
    for name, data in settings.eval.all_texts().items():
        _under(Path(data.path), roots, f"{settings.eval.text_field(name)}.path")
    tasks = settings.eval.tasks
    for key in ("gsm8k", "humaneval", "mbpp"):
        if getattr(tasks, key):
            _under(Path(getattr(tasks, key)), roots, f"eval.tasks.{key}")
    lm_eval = settings.eval.lm_eval
    if lm_eval.enabled:
        if lm_eval.source == "hub" and not allow_hub:
            raise ConfigError("eval.lm_eval.source: hub tasks download their data, and this service does not fetch "
                              "from the hub (jobs.allow_hub=false); use eval.lm_eval.source=local")
        if lm_eval.source == "local":
            _under(Path(lm_eval.data), roots, "eval.lm_eval.data")
    if settings.run.output_dir:
        _under(Path(settings.run.output_dir), [Path(settings.paths.root).resolve()], "run.output_dir")
    output = (settings.sections.get("search") or {}).get("output")
    if output:  # the recipe a search job writes
        _under(Path(output), [Path(settings.paths.root).resolve()], "search.output")
    # a streamed run's resume folder (written, and removed again): under the output root too
    _under(Path(settings.run.resume_dir).resolve(), [Path(settings.paths.root).resolve()], "run.resume_dir")


def check_calibration_path(settings, roots: list[Path]) -> None:
    """The calibration data lies under the allowed roots (call when the plan calibrates)."""
    _under(Path(settings.calib.data.path), roots, "calib.data.path")


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not Path(path).exists()


def _listing(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none: jobs.allowed_roots is empty)"


def _under(path: Path, roots: list[Path], where: str) -> None:
    if not path.is_absolute():
        raise ConfigError(f"{where}: {str(path)!r} is not an absolute path; a job request names files by absolute "
                          f"path under {_listing(roots)}")
    resolved = path.resolve()  # follows symlinks: a link inside a root that points outside it is outside
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ConfigError(f"{where}: {path} lies outside the folders a job may use ({_listing(roots)}); move it "
                          f"under one of them, or ask the operator to add its folder to jobs.allowed_roots")
