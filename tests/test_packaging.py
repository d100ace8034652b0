"""The folders install under one package, `qrecipe`, and the explicit package list in
pyproject.toml keeps up with the tree. What is installed is read from a wheel built here from
the checkout (what `pip install .` would put in site-packages), not from paths on sys.path."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy, so setuptools' build/ and egg-info folders never land in the checkout
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "build", "*.egg-info",
                                                                "__pycache__", "qrecipe_runs", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(out), str(source)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("qrecipe-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_the_wheel_installs_one_top_level_package(wheel_files):
    # Hugging Face's `kernels` distribution owns that name (and `engine`, `conf` are as generic):
    # ours live under qrecipe.
    tops = {name.split("/")[0] for name in wheel_files}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"qrecipe"}
    assert not any(n.startswith(("kernels/", "engine/", "registry/", "conf/", "recipes/")) for n in wheel_files)


def test_the_wheel_holds_every_module_config_and_recipe(wheel_files):
    installed = set(wheel_files)
    missing = []
    for folder, package in MAPPED.items():
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in (".py", ".yaml", ".mako") and "__pycache__" not in f.parts:
                name = "/".join([*package.split("."), *f.relative_to(ROOT / folder).parts])
                if name not in installed:
                    missing.append(name)
    assert missing == []
    assert "qrecipe/recipes/w8a16.yaml" in installed and "qrecipe/conf/config.yaml" in installed
