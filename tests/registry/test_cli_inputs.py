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


READ_ONLY = [("variants", "list"), ("variants", "list", "--json"), ("variants", "compare"),
             ("variants", "show", "3f9a"), ("variants", "history", "tiny"), ("report", "tiny"), ("export", "3f9a", "out"),
             ("jobs", "list", "--server", "http://127.0.0.1:9")]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_create_no_registry(capsys, args):
    home = Path(os.environ["QRECIPE_HOME"])
    rc, out, err = _run(capsys, *args)
    assert _written(home) == [] and not Path("out").exists()
    if args[0] == "jobs":
        assert rc == 2 and "cannot reach the qrecipe service" in err
    elif args[:2] in (("variants", "list"), ("variants", "compare")):  # nothing to list: said, not an error
        assert rc == 0 and out.strip() in ("[]", f"no registry at {home}/registry.db: nothing has been recorded there "
                                                 f"yet (`qrecipe run` creates it); to read another, set QRECIPE_HOME, "
                                                 f"paths.root=DIR or registry.url")
    else:
        assert rc == 2 and err.startswith(f"error: no registry at {home}/registry.db: nothing has been recorded")


def test_help_and_variants_list_import_no_torch_transformers_or_mlflow(tmp_path, measured_variant):
    """Start-up of the light commands (measured by `python -X importtime` too: see the README)."""
    import subprocess
    import sys

    from qrecipe.registry.db import default_url, open_registry

    measured_variant(open_registry(default_url(tmp_path)), "w8a16", {"ppl_delta_pct": 1.0})

    probe = ("import sys\nfrom qrecipe.registry.cli import main\n"
             "for argv in (['--help'], ['variants', '--help'], ['variants', 'list'], ['recipes']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QRECIPE_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "w8a16" in p.stdout and p.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.fixture
def bad_files(tmp_path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "latin1.txt").write_bytes("un café au lait\n".encode("latin-1"))
    (folder / "model.json").write_text("{}")
    return folder


BAD_INPUTS = [
    (["eval.data.path={d}"], "eval.data.path: {d} is a folder, not a file; pass eval.data.path=FILE"),
    (["eval.data.path={d}/binary.txt"], "eval.data.path: {d}/binary.txt is a binary file (it holds NUL bytes), not "
                                        "text; pass a UTF-8 plain text or jsonl file"),
    (["eval.data.path={d}/latin1.txt"], "eval.data.path: {d}/latin1.txt is not UTF-8 text (the byte at offset 6 is "
                                        "0xe9); convert it"),
    (["+data@eval.texts.extra=text", "eval.texts.extra.path={d}"], "eval.texts.extra.path: {d} is a folder, not a "
                                                                   "file"),
    (["eval.tasks.gsm8k={d}"], "eval.tasks.gsm8k: {d} is a folder, not a file"),
    (["model=hf", "model.path={d}/model.json"], "model.path: '{d}/model.json' is not a local model folder (it is a "
                                                "file, not a folder)"),
    (["recipe=gptq", "recipe.base.group_size=32", "calib.data.path={d}/latin1.txt"],
     "calib.data.path: {d}/latin1.txt is not UTF-8 text"),
    (["recipe=w8a16", "recipe.base.activation=static"], "recipe.base.activation: ignored by every rule that inherits "
                                                        "it (linears): W8A16 keeps activations in float"),
    (["recipe=w8a8", "recipe.base.algorithm=awq"], "recipe.rules.linears.algorithm: awq does not apply to W8A8; "
                                                   "algorithms for W8A8: rtn, gptq, smoothquant"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_inputs_are_refused_by_plan_and_run_before_anything_is_recorded(capsys, bad_files, command, overrides,
                                                                            message):
    home = Path(os.environ["QRECIPE_HOME"])
    rc, out, err = _run(capsys, command, *TINY_RUN, *[o.format(d=bad_files) for o in overrides])
    assert (rc, out) == (2, ""), err
    assert err.startswith("error: " + message.format(d=bad_files)) and err.count("\n") == 1, err
    assert _written(home) == []  # no registry row, no MLflow run, no folder


def test_an_rtn_recipe_does_not_read_the_calibration_data(capsys):
    rc, out, err = _run(capsys, "plan", *TINY_RUN, "recipe=w8a16", "calib.data.path=/nonexistent/calib.txt")
    assert rc == 0 and "W8A16" in out, err
    rc, _, err = _run(capsys, "plan", *TINY_RUN, "recipe=gptq", "recipe.base.group_size=32",
                      "calib.data.path=/nonexistent/calib.txt")
    assert rc == 2 and err.startswith("error: calib.data.path: file '/nonexistent/calib.txt' does not exist")


def test_a_tracking_server_that_does_not_answer_fails_the_run_before_any_record(capsys):
    """MLflow's client would retry a refused connection for minutes (257 s seen) after the registry
    had recorded a run; the run now asks the server first and stops with one line."""
    from local_servers import free_port

    home = Path(os.environ["QRECIPE_HOME"])
    uri = f"http://127.0.0.1:{free_port()}"
    rc, out, err = _run(capsys, "run", *TINY_RUN, "recipe=w8a16", "tracking=server", f"tracking.uri={uri}")
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1].startswith(f"error: tracking.uri: the MLflow server {uri} does not answer (")
    assert err.splitlines()[-1].endswith("start it, fix tracking.uri (or MLFLOW_TRACKING_URI), or set tracking=off")
    assert _written(home) == []  # no registry row (no registry at all), no run folder
