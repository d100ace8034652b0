"""Per-architecture facts, kept as data rather than subclasses.

FUSED_SHARDS: sibling projections that serving engines (vLLM, TensorRT-LLM) fuse into one
tensor, so they must share one scheme. BLOCK_LISTS: where the decoder blocks live (the
calibration driver walks them one at a time). FINAL_NORMS: the module between the last block
and the head (a streamed run computes logits from the last block's outputs with it). PAIRINGS:
inside one block, which module produces the input that a set of linears reads; AWQ and
SmoothQuant divide that input by per-channel scales folded into the producer and multiply the
linears' weights by them.
MOE_LAYOUTS: how a mixture-of-experts block holds its experts (transformers 5 keeps them as
fused 3-D tensors of one experts module) and how checkpoints on the hub name them.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_STYLE_SHARDS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

FUSED_SHARDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "llama": LLAMA_STYLE_SHARDS,
    "mistral": LLAMA_STYLE_SHARDS,
    # transformers 5 fuses Mixtral's experts (w1/w3 are halves of experts.gate_up_proj): only q/k/v
    # are separate linears; an MoE layer's expert tensors are fused groups of their own (describe.py)
    "mixtral": (("q_proj", "k_proj", "v_proj"),),
    "qwen2": LLAMA_STYLE_SHARDS,
    "qwen3": LLAMA_STYLE_SHARDS,
    "qwen3_moe": LLAMA_STYLE_SHARDS,  # gate/up: its dense-MLP layers (mlp_only_layers)
    "gemma": LLAMA_STYLE_SHARDS,
    "gemma2": LLAMA_STYLE_SHARDS,
    "phi3": (),  # already fused: qkv_proj, gate_up_proj
}

BLOCK_LISTS: tuple[str, ...] = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")


# Families whose logits are head(final_norm(last block's output)), nothing more, and whose
# checkpoint names are the model's own tensor names, or (mixture-of-experts) the hub's per-expert
# names that MoeLayout maps them to: a streamed run (engine/streaming/) reads them block by block.
# Others (Gemma 2's soft-capped logits) are not listed until someone checks them.
FINAL_NORMS: dict[str, str] = {family: "model.norm"
                               for family in ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral")}


def final_norm(model_type: str) -> str | None:
    return FINAL_NORMS.get(model_type)


def fused_shards(model_type: str) -> tuple[tuple[str, ...], ...] | None:
    """The model type's fused sibling projections, or None when the type is not listed here."""
    return FUSED_SHARDS.get(model_type)


@dataclass(frozen=True)
class MoeLayout:
    """One architecture's mixture-of-experts block, as transformers 5 models it: an experts
    module holding `gate_up` [experts, 2 x intermediate, hidden] (the gate rows, then the up
    rows) and `down` [experts, hidden, intermediate], and a router beside it. The experts'
    forward is down(act(gate(x)) * up(x)) per expert, weighted by the router's top-k weights.

    Checkpoints on the hub (what transformers' conversion mapping merges into the fused
    tensors when it loads, and writes back when it saves; what vLLM loads) keep one linear per
    expert and projection: `{block}.{checkpoint_block}.experts.{e}.{gate|up|down shard}`, and
    the router as `{block}.{checkpoint_block}.{router leaf}`."""

    experts: str = "mlp.experts"  # the experts module, inside a decoder block
    router: str = "mlp.gate"  # the router (Qwen3MoeTopKRouter, MixtralTopKRouter): kept in float
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    checkpoint_block: str = "mlp"  # what the block's `mlp` is called in checkpoints
    checkpoint_shards: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # gate, up, down

    def checkpoint_name(self, block: str, inside_block: str) -> str:
        """A name inside decoder block `block`'s MoE part (`mlp.gate.weight`) as checkpoints
        spell it (Mixtral: `block_sparse_moe.gate.weight`); other names are unchanged."""
        head, _, rest = inside_block.partition(".")
        return f"{block}.{self.checkpoint_block}.{rest}" if head == self.experts.split(".")[0] \
            else f"{block}.{inside_block}"

    def checkpoint_shards_of(self, tensor: str) -> list[tuple[str, int | None]]:
        """[(checkpoint leaf, which half of fused tensor `tensor`'s rows it is: 0 gate, 1 up;
        None: all)] for `gate_up` or `down`."""
        gate, up, down = self.checkpoint_shards
        return [(gate, 0), (up, 1)] if tensor == self.gate_up else [(down, None)]


MOE_LAYOUTS: dict[str, MoeLayout] = {
    "qwen3_moe": MoeLayout(),
    "mixtral": MoeLayout(checkpoint_block="block_sparse_moe", checkpoint_shards=("w1", "w3", "w2")),
}


def moe_layout(model_type: str) -> MoeLayout | None:
    return MOE_LAYOUTS.get(model_type)


# In a pairing's names, EXPERT stands for each expert of the block's experts module: a layer
# name with it means "this projection of every expert"; a `previous` with it means one pairing
# per expert (its own producer and consumers). While a block calibrates, its experts module is
# unfused into per-expert linears named experts.{e}.gate_proj / up_proj / down_proj (the fused
# gate_up tensor split into its two halves, which read one input).
EXPERT = "*"


@dataclass(frozen=True)
class Pairing:
    """`layers` (names inside a block) all read the output of `previous`: a norm whose weight
    (and bias) can absorb a per-channel division, or a linear whose output rows can.
    `passive` modules read that output too but are not quantized (a MoE router): their weight
    columns take the scales, so the float function is unchanged."""

    previous: str
    layers: tuple[str, ...]
    passive: tuple[str, ...] = ()


# A linear-to-linear pairing (v -> o, up -> down) folds exactly only where the producer's
# output channels are the consumer's input channels one to one; the driver checks shapes
# (grouped-query attention makes v_proj narrower than o_proj's input, so it is skipped).
LLAMA_STYLE_PAIRINGS: tuple[Pairing, ...] = (
    Pairing("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Pairing("self_attn.v_proj", ("self_attn.o_proj",)),
    Pairing("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    Pairing("mlp.up_proj", ("mlp.down_proj",)),
)

MOE_PAIRINGS: tuple[Pairing, ...] = (
    Pairing("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Pairing("self_attn.v_proj", ("self_attn.o_proj",)),
    Pairing("post_attention_layernorm", ("mlp.experts.*.gate_proj", "mlp.experts.*.up_proj"), passive=("mlp.gate",)),
    Pairing("mlp.experts.*.up_proj", ("mlp.experts.*.down_proj",)),
    # Qwen3-MoE layers listed in mlp_only_layers (or off decoder_sparse_step) are dense MLPs.
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
    "qwen3_moe": MOE_PAIRINGS,
    "mixtral": MOE_PAIRINGS,
}

# Layers whose weights AWQ does not clip: their outputs meet in q.k^T before a softmax,
# where a clipped outlier costs more than the rounding it saves (as in the AWQ reference).
NO_CLIP: dict[str, tuple[str, ...]] = {family: ("self_attn.q_proj", "self_attn.k_proj") for family in PAIRINGS}


def pairings(model_type: str) -> tuple[Pairing, ...]:
    return PAIRINGS.get(model_type, ())


def _each_expert(name: str, count: int) -> list[str]:
    return [name.replace(EXPERT, str(e)) for e in range(count)] if EXPERT in name else [name]


def expand_pairings(pairings_: tuple[Pairing, ...], experts_in: dict[str, int]
                    ) -> tuple[list[Pairing], list[tuple[str, ...]]]:
    """(pairings with EXPERT replaced by expert indices, groups of layers that read one tensor).

    `experts_in` maps an experts module's name inside the block to its number of experts.
    Scaling and statistics part ways for experts: every expert's gate/up read the post-attention
    norm (one scale for all of them), but each expert sees only the tokens routed to it, so
    statistics are shared by one expert's gate and up alone."""
    def count(name: str) -> int:
        head = name.split(f".{EXPERT}.", 1)[0]
        return experts_in.get(head, 0)

    scaling: list[Pairing] = []
    shared: list[tuple[str, ...]] = []
    for p in pairings_:
        names = p.layers + (p.previous,)
        n = max((count(x) for x in names if EXPERT in x), default=0)
        if any(EXPERT in x for x in names) and n == 0:
            continue  # this block's experts are not unfused (not planned) or it has none
        if EXPERT in p.previous:  # one pairing per expert
            for e in range(n):
                one = tuple(x.replace(EXPERT, str(e)) for x in p.layers)
                scaling.append(Pairing(p.previous.replace(EXPERT, str(e)), one, p.passive))
                shared.append(one)
        elif any(EXPERT in x for x in p.layers):  # every expert's projections, one scale
            scaling.append(Pairing(p.previous, tuple(x for name in p.layers for x in _each_expert(name, n)),
                                   p.passive))
            shared += [tuple(x.replace(EXPERT, str(e)) for x in p.layers) for e in range(n)]
        else:
            scaling.append(p)
            shared.append(p.layers)
    return scaling, shared


def no_clip(model_type: str) -> tuple[str, ...]:
    return NO_CLIP.get(model_type, ())
