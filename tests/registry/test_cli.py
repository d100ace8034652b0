"""The command line as a user meets it: JSON output, one-line errors, no stray folders."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TINY_RUN


def qrecipe(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "qrecipe.registry.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_plan_json_and_no_hydra_folders(tmp_path):
    p = qrecipe("plan", "--json", "model=tinystories-656k", "recipe=mixed", "recipe.rules.mlp.group_size=64",
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert {"layers", "totals", "plan_hash", "capacity"} <= set(plan)
    assert {"name", "scheme", "status", "reason", "bytes_before", "bytes_after"} <= set(plan["layers"][0])
    assert list(tmp_path.iterdir()) == []  # no outputs/, multirun/ or .hydra left behind


def test_plan_table(tmp_path):
    p = qrecipe("plan", "model=tinystories-656k", "recipe=fp8", "target=h100", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "emulated" in p.stdout and "FP8" in p.stdout and "KV cache" in p.stdout


def test_bad_recipe_is_one_line_without_traceback(tmp_path):
    p = qrecipe("plan", "model=tinystories-656k", "recipe=w4a16", "recipe.base.group_size=100", cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: recipe.base.group_size=100")
    assert "Traceback" not in p.stderr


def test_unknown_recipe_lists_options(tmp_path):
    p = qrecipe("run", "recipe=nope", cwd=tmp_path)
    from qrecipe.engine.config import available_recipes

    assert p.returncode == 2 and f"available: {', '.join(available_recipes())}" in p.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    p = qrecipe("run", "--cfg", "job", "recipe=w8a8", "eval.windows=3", cwd=tmp_path)
    assert p.returncode == 0
    assert "scheme: W8A8" in p.stdout and "windows: 3" in p.stdout
    assert list(tmp_path.iterdir()) == []


def test_run_json_last_line_and_sweep(tmp_path):
    env = {**__import__("os").environ, "QRECIPE_HOME": str(tmp_path / "home")}
    p = qrecipe("run", "--json", "--no-progress", "-m", *TINY_RUN, "eval.windows=2",
                "recipe=w8a16,w4a16", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [x["recipe"] for x in lines] == ["w8a16", "w4a16"]
    for x in lines:
        assert {"ppl", "ppl_baseline", "weight_bytes", "weight_bytes_baseline"} <= set(x["metrics"])
        assert (tmp_path / "home" / "runs").is_dir() and x["output_dir"].startswith(str(tmp_path / "home"))


def test_export_formats_on_the_command_line_are_the_writers():
    from qrecipe.engine.export import WRITERS
    from qrecipe.registry.export_command import FORMATS

    assert set(FORMATS) == set(WRITERS)


def test_every_command_shows_an_example_in_its_help():
    from qrecipe.registry.cli import build_parser
    from qrecipe.registry.cli_examples import EXAMPLES, subparsers

    commands = dict(subparsers(build_parser()))
    assert set(commands) == set(EXAMPLES)  # every command has examples, and every example a command
    for path, parser in commands.items():
        help_text = parser.format_help()
        assert "examples:\n" in help_text and f"  qrecipe {path}" in help_text, path


def test_version_and_recipes_list(capsys):
    from importlib.metadata import version

    import pytest

    from qrecipe.engine.config import available_recipes
    from qrecipe.registry.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qrecipe {version('qrecipe')}"
    assert main(["recipes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == available_recipes()
    assert all(r["description"] and r["path"].endswith(f"recipes/{r['name']}.yaml") and r["error"] is None
               for r in listed)


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`qrecipe jobs list | head`: stdout closes before the command writes; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "qrecipe.registry.cli", "recipes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=120), err) == (141, b"")
