"""A synthetic Llama checkpoint: seeded random weights at realistic scales, written as sharded
safetensors with an index, plus a real tokenizer, so a model of any size can be streamed.

Not a trained model: its text quality means nothing; it exists where size and architecture
matter (memory, streaming, time per block). Scales follow trained Llama checkpoints: linear
weights ~ N(0, 1/in_features) (Llama-3-8B's are ~0.015-0.02 at 4096), embeddings ~ N(0, 0.02),
norms ~ 1 +- 0.05; a few input channels per linear get 8x larger weights, as trained models
have salient channels. Tensors are generated and written one shard at a time, so building a
16 GB checkpoint holds about one shard in memory.

    python bench/synthetic_llama.py OUT --hidden 1024 --layers 22 --intermediate 2816 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from qrecipe.engine.config.resolvers import shared_dir
from qrecipe.engine.models.weights import save_tensors

TOKENIZER = Path(shared_dir()) / "models" / "TinyStories-656K"  # a real tokenizer (vocab 2048)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DONE = "synthetic.json"


def llama_config(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
                 dtype: str) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": hidden // heads, "vocab_size": vocab,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype, "dtype": dtype}


def _tensors(cfg: dict):
    """(name, shape, kind) of every tensor, in checkpoint order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (v, h), "embedding"
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        yield p + "input_layernorm.weight", (h,), "norm"
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, q))):
            yield p + name + ".weight", shape, "linear"
        yield p + "post_attention_layernorm.weight", (h,), "norm"
        for name, shape in (("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)), ("mlp.down_proj", (h, i))):
            yield p + name + ".weight", shape, "linear"
    yield "model.norm.weight", (h,), "norm"
    yield "lm_head.weight", (v, h), "linear"


def _make(shape, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "norm":
        return 1 + 0.05 * torch.randn(shape, generator=g)
    if kind == "embedding":
        return 0.02 * torch.randn(shape, generator=g)
    w = torch.randn(shape, generator=g).mul_(shape[1] ** -0.5)
    salient = torch.randint(0, shape[1], (max(1, shape[1] // 256),), generator=g)
    w[:, salient] *= 8
    return w


def build(out: Path, cfg: dict, seed: int = 0, shard_bytes: int = 1 << 30) -> Path:
    """Write the checkpoint into `out` (once: an existing complete one is kept)."""
    out = Path(out)
    if (out / DONE).is_file() and json.loads((out / DONE).read_text()) == {"config": cfg, "seed": seed}:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = getattr(torch, cfg["torch_dtype"])
    g = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    names: list[list[str]] = [[]]

    def flush(index: int) -> None:
        save_tensors(shards[-1], tmp / f"part-{index:05d}.safetensors", {"format": "pt"})
        shards[-1] = {}

    for name, shape, kind in _tensors(cfg):
        t = _make(shape, kind, g).to(dtype)
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush(len(names))
            names.append([])
            size = 0
        shards[-1][name] = t
        names[-1].append(name)
        size += t.numel() * t.element_size()
    flush(len(names))
    n = len(names)
    weight_map, total = {}, 0
    for k, members in enumerate(names, start=1):
        final = f"model-{k:05d}-of-{n:05d}.safetensors"
        os.replace(tmp / f"part-{k:05d}.safetensors", tmp / final)
        total += (tmp / final).stat().st_size
        weight_map.update({m: final for m in members})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in _TOKENIZER_FILES:
        if (TOKENIZER / f).is_file():
            shutil.copyfile(TOKENIZER / f, tmp / f)
    (tmp / DONE).write_text(json.dumps({"config": cfg, "seed": seed}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def float32_bytes(cfg: dict) -> int:
    from math import prod

    return sum(4 * prod(shape) for _, shape, _ in _tensors(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = llama_config(a.hidden, a.layers, a.intermediate, a.heads, a.kv_heads, a.vocab, a.dtype)
    print(build(a.out, cfg, a.seed))


if __name__ == "__main__":
    main()
