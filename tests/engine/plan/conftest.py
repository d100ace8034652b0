"""Model structures for plan tests: real Llama-shaped configs on the meta device."""

from __future__ import annotations

import pytest
from model_shapes import LLAMA_70B_SHAPE, SMOLLM2_SHAPE, write_llama_config


@pytest.fixture
def smollm2_shaped(tmp_path):
    """A folder with only a config.json shaped like SmolLM2-135M (no weights)."""
    return write_llama_config(tmp_path / "smollm2-shape", **SMOLLM2_SHAPE)


@pytest.fixture
def llama70b_shaped(tmp_path):
    return write_llama_config(tmp_path / "llama-70b", **LLAMA_70B_SHAPE)


@pytest.fixture
def tiny_info(settings):
    from qrecipe.engine.planning import model_info

    return model_info(settings("model=tinystories-656k"))
