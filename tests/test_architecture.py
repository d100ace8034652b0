"""The import graph follows the data flow (kernels <- engine <- registry): read from the source,
so a new arrow the wrong way fails here, also one hidden inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"kernels": "qrecipe.kernels", "engine": "qrecipe.engine", "registry": "qrecipe.registry"}
# what each package may import from qrecipe (besides itself and the config data packages)
ALLOWED = {"kernels": set(), "engine": {"kernels"}, "registry": {"kernels", "engine"}}


def _imports(path: Path, package: str) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in the file, anywhere in it."""
    module = ".".join([package, *path.relative_to(ROOT / package.split(".")[1]).with_suffix("").parts])
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
        base = module.split(".")
    else:
        base = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def _sources():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield folder, package, path


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_imports_follow_the_flow(folder):
    wrong = []
    for owner, package, path in _sources():
        if owner != folder:
            continue
        for target, _, line in _imports(path, package):
            parts = target.split(".")
            if parts[0] != "qrecipe" or len(parts) < 2 or parts[1] in (owner, "conf", "recipes"):
                continue
            if parts[1] not in ALLOWED[owner]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def test_no_private_name_crosses_a_package():
    crossing = []
    for owner, package, path in _sources():
        for target, names, line in _imports(path, package):
            parts = target.split(".")
            if parts[0] != "qrecipe" or len(parts) < 2 or parts[1] == owner:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(p.startswith("_") and not p.startswith("__") for p in parts):
                crossing.append(f"{path.relative_to(ROOT)}:{line} imports {private or target} from {target}")
    assert crossing == []
