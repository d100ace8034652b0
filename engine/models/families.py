"""Per-architecture facts, kept as data rather than subclasses.

FUSED_SHARDS: sibling projections that serving engines (vLLM, TensorRT-LLM) fuse into one
tensor, so they must share one scheme. BLOCK_LISTS: where the decoder blocks live (the
calibration driver walks them one at a time). FINAL_NORMS: the module between the last block
and the head (a streamed run computes logits from the last block's outputs with it). PAIRINGS: inside one block, which module
produces the input that a set of linears reads; AWQ and SmoothQuant divide that input by
per-channel scales folded into the producer and multiply the linears' weights by them.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# Families whose logits are head(final_norm(last block's output)), nothing more: a streamed
# run (engine/streaming/) can compute them block by block. Others (Gemma 2's soft-capped
# logits, say) are not listed until someone checks their tail.
FINAL_NORMS: dict[str, str] = {family: "model.norm" for family in ("llama", "mistral", "qwen2", "qwen3")}


def final_norm(model_type: str) -> str | None:
    return FINAL_NORMS.get(model_type)


def fused_shards(model_type: str) -> tuple[tuple[str, ...], ...]:
    return FUSED_SHARDS.get(model_type, LLAMA_STYLE_SHARDS)


@dataclass(frozen=True)
class Pairing:
    """`layers` (names inside a block) all read the output of `previous`: a norm whose weight
    (and bias) can absorb a per-channel division, or a linear whose output rows can."""

    previous: str
    layers: tuple[str, ...]


# A linear-to-linear pairing (v -> o, up -> down) folds exactly only where the producer's
# output channels are the consumer's input channels one to one; the driver checks shapes
# (grouped-query attention makes v_proj narrower than o_proj's input, so it is skipped).
LLAMA_STYLE_PAIRINGS: tuple[Pairing, ...] = (
    Pairing("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Pairing("self_attn.v_proj", ("self_attn.o_proj",)),
    Pairing("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    Pairing("mlp.up_proj", ("mlp.down_proj",)),
)

# Gemma's norms multiply by (1 + weight), so a division does not fold into the weight as
# is: it is left out until someone adds that fold.
PAIRINGS: dict[str, tuple[Pairing, ...]] = {
    "llama": LLAMA_STYLE_PAIRINGS,
    "mistral": LLAMA_STYLE_PAIRINGS,
    "qwen2": LLAMA_STYLE_PAIRINGS,
    "qwen3": LLAMA_STYLE_PAIRINGS,
}

# Layers whose weights AWQ does not clip: their outputs meet in q.k^T before a softmax,
# where a clipped outlier costs more than the rounding it saves (as in the AWQ reference).
NO_CLIP: dict[str, tuple[str, ...]] = {family: ("self_attn.q_proj", "self_attn.k_proj") for family in PAIRINGS}


def pairings(model_type: str) -> tuple[Pairing, ...]:
    return PAIRINGS.get(model_type, ())


def no_clip(model_type: str) -> tuple[str, ...]:
    return NO_CLIP.get(model_type, ())
