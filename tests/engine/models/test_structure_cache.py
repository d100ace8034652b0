"""The model structure cache: a second plan of the same config reads its description from the
cache, without building the skeleton or importing transformers' modeling code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from qrecipe.engine.models import structure_cache
from qrecipe.engine.planning import build_plan, model_info


def _counting(monkeypatch):
    calls = []
    real = structure_cache.cached_model_info

    def spy(spec, cache_root, describe_model):
        return real(spec, cache_root, lambda: calls.append(spec.name) or describe_model())

    monkeypatch.setattr("qrecipe.engine.planning.cached_model_info", spy)
    return calls


def test_the_description_is_cached_and_equal_to_a_fresh_one(settings, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QRECIPE_CACHE", str(tmp_path / "cache"))
    calls = _counting(monkeypatch)
    s = settings("model=tinystories-656k")
    first, again = model_info(s), model_info(s)
    assert calls == ["tinystories-656k"]  # described once
    assert again == first and build_plan(s)[0].plan_hash == build_plan(s)[0].plan_hash
    [cached] = (tmp_path / "cache" / "structures").glob("*.json")
    assert json.loads(cached.read_text())["units"][0]["name"] == first.units[0].name


def test_another_config_or_a_damaged_file_is_described_again(settings, tiny_model_dir, tmp_path, monkeypatch,
                                                              caplog):
    monkeypatch.setenv("QRECIPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    calls = _counting(monkeypatch)
    s = settings("model=hf", f"model.path={folder}")
    two_layers = model_info(s)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    one_layer = model_info(s)
    assert len(calls) == 2 and len(one_layer.units) < len(two_layers.units)
    for f in (tmp_path / "cache" / "structures").glob("*.json"):
        f.write_text("{not json")
    with caplog.at_level("WARNING", logger="qrecipe"):
        assert model_info(s) == one_layer
    assert len(calls) == 3 and "could not be read" in caplog.text


def test_a_warm_plan_imports_no_transformers_modeling_code(tiny_model_dir, tmp_path):
    code = ("import sys; from qrecipe.engine.config import compose, load_settings; "
            "from qrecipe.engine.planning import build_plan; "
            "build_plan(load_settings(compose(['model=tinystories-656k', 'target=h100']))); "
            "print('transformers.modeling_utils' in sys.modules)")
    env = {**os.environ, "QRECIPE_CACHE": str(tmp_path / "cache")}
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert cold.stdout.split()[-1] == "True" and warm.stdout.split()[-1] == "False"
