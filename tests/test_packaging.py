"""The folders install under one package, `qrecipe`, and the explicit package list in
pyproject.toml keeps up with the tree."""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"engine": "qrecipe.engine", "kernels": "qrecipe.kernels", "registry": "qrecipe.registry",
          "conf": "qrecipe.conf", "recipes": "qrecipe.recipes"}


def _declared() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_declared():
    found = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    for group in (ROOT / "conf").iterdir():  # config groups: data-only packages
        if group.is_dir() and list(group.glob("*.yaml")):
            found.add(f"qrecipe.conf.{group.name}")
    assert found == _declared()


def test_declared_packages_import_under_qrecipe():
    for name in sorted(n for n in _declared() if not n.startswith("qrecipe.conf.")):
        assert importlib.import_module(name).__name__ == name


def test_no_generic_top_level_kernels_package():
    # Hugging Face's `kernels` distribution owns that name; ours lives at qrecipe.kernels.
    import qrecipe.kernels

    assert qrecipe.kernels.__name__ == "qrecipe.kernels"
    spec = importlib.util.find_spec("kernels")
    assert spec is None or "qrecipe" not in str(spec.origin or "")


def test_config_and_recipes_ship_as_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data["*"] == ["*.yaml"]
    assert list((ROOT / "recipes").glob("*.yaml")) and list((ROOT / "conf").rglob("*.yaml"))
