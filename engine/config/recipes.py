"""Where recipes come from: qrecipe's own recipes/ folder, then the folders in
$QRECIPE_RECIPE_PATH (os.pathsep-separated; a later folder's recipe of the same name wins).

Each file is read on its own: a file that is not valid YAML (or not a mapping) is set aside
with one line naming the file and the line, and only choosing that recipe is an error; every
other recipe still works. A folder named in QRECIPE_RECIPE_PATH that does not exist is an error
(a typo there would otherwise hide the user's recipes behind "no recipe named ...").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

ENV = "QRECIPE_RECIPE_PATH"


def shipped_dir() -> Path:
    import qrecipe.recipes

    return Path(qrecipe.recipes.__file__).resolve().parent


def recipe_dirs(user: bool = True) -> list[Path]:
    """recipes/ shipped with qrecipe, then (unless user=False) the folders in $QRECIPE_RECIPE_PATH."""
    dirs = [shipped_dir()]
    for extra in filter(None, os.environ.get(ENV, "").split(os.pathsep) if user else []):
        folder = Path(extra).expanduser().resolve()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"{ENV}: {folder} {what}; create the folder or remove it from {ENV}")
        dirs.append(folder)
    return dirs


@dataclass(frozen=True)
class RecipeFile:
    """One recipe as found on disk: its node, or why it cannot be read."""

    name: str
    path: Path
    node: Any = None  # the loaded mapping (a DictConfig); None when broken
    error: str | None = None  # one line naming the file and the line

    @property
    def description(self) -> str:
        return "" if self.node is None else str(self.node.get("description") or "")


def read_recipe(path: Path) -> RecipeFile:
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML syntax, duplicate keys, bad encoding: one line each
        return RecipeFile(path.stem, path, error=f"{path}{_where(e)}: {_problem(e)}")
    if not isinstance(node, DictConfig):
        return RecipeFile(path.stem, path, error=f"{path}: the file holds a list; a recipe is a mapping (name:, "
                                                 f"base:, rules:)")
    return RecipeFile(path.stem, path, node=node)


def _where(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _problem(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = getattr(e, "problem", None) or (lines[0] if lines else type(e).__name__)
    return " ".join(str(text).split())


def recipe_files(user: bool = True) -> dict[str, RecipeFile]:
    """name -> the file that defines it (a later folder wins), in name order."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs(user):
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return {name: read_recipe(found[name]) for name in sorted(found)}


def available_recipes() -> list[str]:
    return sorted(p.stem for d in recipe_dirs() for p in d.glob("*.yaml"))
