"""Run folders: concurrent runs that want the same name each get their own."""

import pytest

from qrecipe.engine.errors import ConfigError
from qrecipe.engine.run import reserve_output


def test_runs_wanting_one_name_get_numbered_folders(tmp_path):
    want = tmp_path / "runs" / "20260101-000000-w8a16-abcd1234"
    first, first_staging = reserve_output(want, numbered=True)
    second, second_staging = reserve_output(want, numbered=True)
    assert (first, second) == (want, want.with_name(want.name + "-2"))
    assert first_staging.is_dir() and second_staging.is_dir() and first_staging != second_staging
    first_staging.rename(first)  # a finished run's folder is not reused either
    third, _ = reserve_output(want, numbered=True)
    assert third == want.with_name(want.name + "-3")


def test_a_fixed_output_dir_is_not_shared(tmp_path):
    want = tmp_path / "mine"
    reserve_output(want, numbered=False)
    with pytest.raises(ConfigError, match="run.output_dir: .* is being written by another run"):
        reserve_output(want, numbered=False)


def test_a_run_folder_never_lies_outside_paths_root_runs(tmp_path):
    """Recipe names are validated as names; whatever builds one, the folder stays inside runs/."""
    from types import SimpleNamespace

    from qrecipe.engine.run import run_folder

    settings = SimpleNamespace(run=SimpleNamespace(output_dir=None), paths=SimpleNamespace(root=str(tmp_path)))
    ok = run_folder(settings, SimpleNamespace(recipe="w8a16", plan_hash="abcd1234ef"))
    assert ok.parent == tmp_path / "runs" and ok.name.endswith("-w8a16-abcd1234")
    for name in ("../../../../tmp/x", "x/../../..", "a/b"):
        with pytest.raises(ConfigError, match="recipe.name: .* would put the run folder outside"):
            run_folder(settings, SimpleNamespace(recipe=name, plan_hash="abcd1234ef"))
    assert list(tmp_path.iterdir()) == []  # nothing created by the check
