"""Model structures for plan tests: real Llama-shaped configs on the meta device."""

from __future__ import annotations

import json

import pytest

SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
LLAMA_70B_SHAPE = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                       max_position_embeddings=131072, rope_theta=500000.0)


def write_llama_config(folder, **shape):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", **shape}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


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
