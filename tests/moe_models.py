"""Tiny mixture-of-experts models of real architectures (Qwen3-MoE, Mixtral) for the tests.

No pretrained MoE is available offline, so these are synthetic: the configs are in
tests/fixtures/moe/ (2 layers, hidden 128, 4 experts, top-2), and the weights are seeded
but built from the trained TinyStories-656K (same hidden size, heads and vocabulary), so the
activations they quantize are those of a real small model on real text:
  - embeddings, attention projections and norms are TinyStories-656K's (Qwen3-MoE's extra
    per-head q/k norms start at ones);
  - expert e of layer i is layer i's trained MLP with each weight scaled by (1 + 0.3 z),
    z ~ N(0, 1) seeded per expert (experts differ, at the trained weights' scales);
  - the router is seeded N(0, 1/hidden) (it spreads tokens over the experts).
They are saved with transformers' save_pretrained, which writes the hub's per-expert layout
(experts.{e}.gate_proj.weight; Mixtral: block_sparse_moe.experts.{e}.w1.weight), and loaded
back through transformers' conversion mapping, as a real hub MoE is. Figures measured on them
are figures of a synthetic model: its float outputs are still a fair target for the error of
its quantized versions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "moe"
ARCHS = ("qwen3-moe-tiny", "mixtral-tiny")


@torch.no_grad()
def build_moe(arch: str, tiny_dir: Path, out: Path, seed: int = 0) -> Path:
    """Write the synthetic MoE `arch` (a folder of tests/fixtures/moe) into `out`, with
    TinyStories-656K's tokenizer; returns `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(FIXTURES / arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    source = dense.state_dict()
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name in source and source[name].shape == p.shape:
            p.copy_(source[name])
        elif name.endswith("_norm.weight"):  # Qwen3's per-head q/k norms
            p.fill_(1.0)
        elif name.endswith("mlp.gate.weight"):  # the router
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            mlp = name.rsplit(".mlp.", 1)[0] + ".mlp."
            trained = torch.cat([source[mlp + "gate_proj.weight"], source[mlp + "up_proj.weight"]]) \
                if name.endswith("gate_up_proj") else source[mlp + "down_proj.weight"]
            for e in range(p.shape[0]):
                p[e].copy_(trained * (1 + 0.3 * torch.randn(trained.shape, generator=g)))
        else:
            raise AssertionError(f"no source for {name} {tuple(p.shape)}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def moe_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """arch -> folder of the saved synthetic MoE model (built once per test session)."""
    root = tmp_path_factory.mktemp("moe")
    return {arch: build_moe(arch, tiny_model_dir, root / arch) for arch in ARCHS}


def load_moe(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
