"""Per-architecture facts, kept as data rather than subclasses.

FUSED_SHARDS: sibling projections that serving engines (vLLM, TensorRT-LLM) fuse into one
tensor, so they must share one scheme. BLOCK_LISTS: where the decoder blocks live (the
calibration driver walks them one at a time).
"""

from __future__ import annotations

LLAMA_STYLE_SHARDS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

FUSED_SHARDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "llama": LLAMA_STYLE_SHARDS,
    "mistral": LLAMA_STYLE_SHARDS,
    "mixtral": (("q_proj", "k_proj", "v_proj"), ("w1", "w3")),
    "qwen2": LLAMA_STYLE_SHARDS,
    "qwen3": LLAMA_STYLE_SHARDS,
    "gemma": LLAMA_STYLE_SHARDS,
    "gemma2": LLAMA_STYLE_SHARDS,
    "phi3": (),  # already fused: qkv_proj, gate_up_proj
}

BLOCK_LISTS: tuple[str, ...] = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")


def fused_shards(model_type: str) -> tuple[tuple[str, ...], ...]:
    return FUSED_SHARDS.get(model_type, LLAMA_STYLE_SHARDS)
