"""Hostile and malformed input on the command line: one line on stderr, exit 2, and nothing
written anywhere (no run folder, no registry, no MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TINY_RUN

from qrecipe.registry.cli import main


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


@pytest.mark.parametrize("override, message", [
    ("recipe.name=../../../../tmp/qrecipe-escape", "error: recipe.name: '../../../../tmp/qrecipe-escape' is not a "
                                                   "recipe name (1 to 64 letters, digits"),
    ("recipe.name=a/b", "error: recipe.name: 'a/b' is not a recipe name"),
    ("recipe.name=${oc.env:HOME}", "error: recipe.name: interpolations (${...}) are refused in overrides"),
    ("recipe.description=${oc.env:HOME}", "error: recipe.description: interpolations (${...}) are refused"),
    ("+recipe.rules.x={match: '${oc.env:HOME}'}", "error: recipe.rules.x: interpolations"),
])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_names_and_interpolations_are_refused_before_anything_is_written(capsys, tmp_path, command, override,
                                                                          message):
    home = Path(os.environ["QRECIPE_HOME"])
    rc, out, err = _run(capsys, command, "recipe=w8a16", *TINY_RUN, override)
    assert (rc, out) == (2, "") and err.startswith(message) and err.count("\n") == 1, err
    assert _written(home) == [] and not Path("/tmp/qrecipe-escape").exists()
