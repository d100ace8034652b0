"""Llama-shaped configs (a config.json alone, no weights) for tests that plan on the meta device."""

from __future__ import annotations

import json

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
