"""The allowlist of overrides a job request may carry (no config is composed here)."""

from __future__ import annotations

import pytest

from qrecipe.engine.errors import ConfigError
from qrecipe.registry.jobs.overrides import check_overrides

ALLOWED = [
    "recipe=mixed", "model=tinystories-656k", "target=cpu", "data@eval.data=tinystories", "data@calib.data=c4",
    "+data@eval.texts.extra=wikitext2", "recipe.rules.mlp.group_size=64", "~recipe.rules.attn",
    "+recipe.rules.head={match: lm_head, scheme: W8A16}", "recipe.overlap=first_match", "eval.windows=4",
    "eval.tasks.families=[prose]", "eval.speed.repeats=1", "eval.memory.method=off", "calib.samples=8",
    "model.path=/shared/models/x", "model.dtype=float32", "target.memory_gib=40", "run.seed=3",
    "run.output_dir=/runs/x", "eval.data.path=/shared/data/x.txt", "eval=default",
    "eval.lm_eval.tasks=[arc_easy,piqa]", "eval.lm_eval.limit=50", "eval.lm_eval.data=/shared/data",
]

REFUSED = {
    "hydra.run.dir=/tmp": "hydra.* settings are not part of a qrecipe config",
    "hydra/launcher=basic": "hydra.* settings are not part of a qrecipe config",
    "paths.root=/": "paths.* is set by the operator",
    "tracking.uri=http://evil:5000": "tracking.* is set by the operator",
    "registry.url=sqlite:////tmp/x.db": "registry.* is set by the operator",
    "registry=off": "registry.* is set by the operator",
    "jobs.allow_hub=true": "jobs.* is set by the operator",
    "model.trust_remote_code=true": "may not run code shipped with a model",
    "model.allow_hub=true": "hub access is the service's choice",
    "+recipe.rules.x={_target_: os.system}": "Hydra instantiation keys",
    "+recipe._target_=os.system": "Hydra instantiation keys",
    "recipe.description=${oc.env:HOME}": "interpolations",
    "recipe.ignore=[a, '${oc.env:SECRET}']": "interpolations",
    "recipe=../../../etc/passwd": "no recipe named",
    "model=../secret": "no model config named",
    "recipe=nope": "no recipe named 'nope'; available: awq, fp8",
    "model.path=pypi:os": "cannot name an installed package",
    "eval.data.hub.id=evil/data": "not a key a job request may set",
    "+foo=bar": "not a key a job request may set",
    "recipe.base.group_size=64,128": "need \"sweep\": true",
    "data@paths=c4": "may choose data only for",
    "~model": "cannot delete a config group",
}


@pytest.mark.parametrize("override", ALLOWED)
def test_a_request_may_set(override):
    check_overrides([override], allow_hub=False)


@pytest.mark.parametrize("override,message", REFUSED.items(), ids=list(REFUSED))
def test_a_request_may_not_set(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("$", r"\$")) as e:
        check_overrides([override], allow_hub=False)
    assert "\n" not in str(e.value)


def test_recipes_come_from_qrecipe_s_own_folder_only(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("name: mine\nbase: {scheme: W8A16}\n")
    monkeypatch.setenv("QRECIPE_RECIPE_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="no recipe named 'mine'"):
        check_overrides(["recipe=mine"], allow_hub=False)
