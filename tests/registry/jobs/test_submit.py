"""A request becomes jobs: composed and planned at submit time, with the CLI's one-line errors;
paths only under the allowed roots; sweeps expanded (and bounded) before anything composes."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import TINY

from qrecipe.engine.errors import ConfigError, QRecipeError
from qrecipe.registry.jobs.requests import JobRequest
from qrecipe.registry.jobs.service.serve import Operator
from qrecipe.registry.jobs.submit import Submitter

TINY_REQUEST = {"model": "tinystories-656k", "target": "cpu", "overrides": ["data@eval.data=tinystories"]}


def _submitter(*overrides: str) -> Submitter:
    op = Operator.load(list(overrides))
    return Submitter(op.jobs, op.sections())


def _specs(body: dict, *overrides: str):
    return _submitter(*overrides).specs(JobRequest(**body))


def test_a_job_stores_its_composed_config_without_the_operator_s_sections(shared):
    (spec,) = _specs({"recipe": "w8a16", **TINY_REQUEST})
    assert (spec.kind, spec.recipe, spec.model, spec.target) == ("run", "w8a16", "tinystories-656k", "cpu")
    assert spec.plan_hash and len(spec.expected_variant_id) == 12
    config = yaml.safe_load(spec.config_yaml)
    assert {"recipe", "model", "eval", "calib", "target", "run"} <= set(config)
    assert not {"paths", "tracking", "registry", "jobs", "service"} & set(config)
    assert config["model"]["allow_hub"] is False and config["recipe"]["base"]["scheme"] == "W8A16"
    assert spec.overrides == ["recipe=w8a16", "model=tinystories-656k", "target=cpu", "data@eval.data=tinystories"]


def test_a_bad_recipe_gets_the_cli_s_one_line_error(shared, capsys):
    from qrecipe.registry.cli import main

    bad = ["recipe=w4a16", "recipe.base.group_size=256", "model=tinystories-656k", "target=cpu"]
    assert main(["plan", *bad]) != 0
    cli_error = capsys.readouterr().err.strip().removeprefix("error: ")
    with pytest.raises(QRecipeError) as e:
        _specs({"kind": "plan", "overrides": bad})
    assert str(e.value) == cli_error and "group_size=256" in cli_error


def test_model_and_data_paths_must_lie_under_the_allowed_roots(shared, tmp_path):
    inside = {"kind": "plan", "overrides": ["model=hf", f"model.path={TINY}", "target=cpu"]}
    (spec,) = _specs(inside)
    assert spec.plan_hash
    with pytest.raises(ConfigError, match=r"model.path: .* lies outside the folders a job may use"):
        _specs({**inside, "overrides": ["model=hf", f"model.path={tmp_path}", "target=cpu"]})
    link = tmp_path / "escape"
    os.symlink("/etc", link)
    with pytest.raises(ConfigError, match="eval.data.path: .* lies outside"):
        _specs({**inside, "overrides": [*inside["overrides"], "data@eval.data=text", f"eval.data.path={link}/passwd"]},
               f"jobs.allowed_roots=[{shared},{tmp_path}]")
    with pytest.raises(ConfigError, match="eval.data.path: 'x.txt' is not an absolute path"):
        _specs({**inside, "overrides": [*inside["overrides"], "data@eval.data=text", "eval.data.path=x.txt"]})
    with pytest.raises(ConfigError, match="run.output_dir: /tmp/elsewhere lies outside"):
        _specs({**inside, "overrides": [*inside["overrides"], "run.output_dir=/tmp/elsewhere"]})
    with pytest.raises(ConfigError, match="does not fetch models from the hub"):
        _specs({**inside, "overrides": ["model=hf", "model.path=someone/model", "target=cpu"]})
    lm_eval = [*inside["overrides"], "eval.lm_eval.tasks=[piqa]"]
    assert _specs({**inside, "overrides": lm_eval})  # the shared task files lie under the allowed roots
    with pytest.raises(ConfigError, match="eval.lm_eval.data: /tmp/tasks lies outside"):
        _specs({**inside, "overrides": [*lm_eval, "eval.lm_eval.data=/tmp/tasks"]})
    with pytest.raises(ConfigError, match="eval.lm_eval.source: hub tasks download their data"):
        _specs({**inside, "overrides": [*lm_eval, "eval.lm_eval.source=hub"]})


def test_a_sweep_is_one_job_per_point_and_bounded(shared):
    specs = _specs({"kind": "plan", "sweep": True, **TINY_REQUEST,
                    "overrides": ["recipe=w8a16,w4a16", "data@eval.data=tinystories"]})
    assert [s.recipe for s in specs] == ["w8a16", "w4a16"] and specs[0].plan_hash != specs[1].plan_hash
    with pytest.raises(ConfigError, match="more than 64 points"):
        _specs({"kind": "plan", "sweep": True, "overrides": ["eval.windows=range(1,100000000)"]})
    with pytest.raises(ConfigError, match="need \"sweep\": true"):
        _specs({"kind": "plan", "overrides": ["recipe=w8a16,w4a16"]})


def test_fields_and_overrides_must_not_disagree_and_sleep_jobs_are_off_by_default():
    with pytest.raises(ConfigError, match="recipe: given both as a field and as the override"):
        _specs({"recipe": "w8a16", "overrides": ["recipe=w4a16"]})
    with pytest.raises(ConfigError, match="sleep jobs are turned off on this service"):
        _specs({"kind": "sleep"})
    (spec,) = _specs({"kind": "sleep", "sleep": {"seconds": 1}}, "jobs.debug_kinds=true")
    assert spec.params == {"seconds": 1.0, "fail": False}


def test_a_request_gets_the_shipped_recipe_even_where_the_service_has_its_own(shared, tmp_path, monkeypatch):
    """The service's QRECIPE_RECIPE_PATH is the operator's: a request never reaches it, not even
    through a file there named like a shipped recipe (nor trips on a broken one)."""
    (tmp_path / "w8a16.yaml").write_text("name: w8a16\nbase: {scheme: W4A16, group_size: 32}\n"
                                         "rules: {all: {match: 'class:Linear'}}\n")
    (tmp_path / "broken.yaml").write_text("base: [\n")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", str(tmp_path))
    (spec,) = _specs({"recipe": "w8a16", **TINY_REQUEST})
    assert yaml.safe_load(spec.config_yaml)["recipe"]["base"]["scheme"] == "W8A16"
    with pytest.raises(ConfigError, match="recipe=broken: no recipe named 'broken'; available: awq, "):
        _specs({"recipe": "broken", **TINY_REQUEST})
