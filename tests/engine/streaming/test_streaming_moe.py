"""Mixture-of-experts models stream like dense ones: the tiny synthetic Qwen3-MoE and Mixtral of
tests/moe_models.py (2 blocks, 4 experts, top-2; saved in the hub's per-expert layout, which
the streamed run fuses itself, tensor by tensor, as transformers does when it loads the folder
whole) quantized with GPTQ on every linear and expert tensor, on 8 windows of 128 tokens of
real text: the same packed tensors bit for bit, the same per-expert token counts and notes,
the same logits; a run stopped after its first block resumes into the same checkpoint; and the
float baseline streamed block by block scores exactly as the model loaded whole.
"""

from __future__ import annotations

import json

import pytest
import torch

from moe_models import ARCHS, moe_dirs  # noqa: F401  (fixture)
from streaming_helpers import assert_same_tensors, in_memory, settings_of, streamed
from tiny_quant import calib_text  # noqa: F401  (fixture)

from qrecipe.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _settings(folder, calib_text, resume_dir):
    return settings_of("model=hf", f"model.path={folder}", "data@calib.data=text", f"calib.data.path={calib_text}",
                       "calib.samples=8", "calib.seq_len=128", "recipe=w4a16", "recipe.base.group_size=64",
                       "recipe.base.algorithm=gptq", "run.streaming=always", resume_dir=resume_dir)


class Stop(Exception):
    pass


@pytest.mark.parametrize("arch", ARCHS)
def test_a_streamed_moe_run_gives_the_in_memory_checkpoint_and_resumes_into_it(arch, moe_dirs, calib_text, tmp_path):
    s = _settings(moe_dirs[arch], calib_text, tmp_path / "resume")
    mem_report = in_memory(s, tmp_path / "memory")
    report = streamed(s, tmp_path / "streamed")
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")
    assert report.expert_tokens == mem_report.expert_tokens and len(report.expert_tokens) == 2
    assert report.notes == mem_report.notes
    meta = {name: json.loads((tmp_path / name / "qrecipe_quant.json").read_text()) for name in ("memory", "streamed")}
    assert meta["memory"] == meta["streamed"] and len(meta["streamed"]["experts"]) == 2

    a, tok, _ = load_checkpoint(tmp_path / "memory")
    b, _, _ = load_checkpoint(tmp_path / "streamed")
    ids = torch.tensor([tok("Once upon a time, there was a little dog named Max. He liked to run.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)

    def stop_after_block_1(msg: str) -> None:
        if msg.startswith("block 1/2 quantized"):
            raise Stop

    with pytest.raises(Stop):  # block 1 is written and recorded as done, then the run stops
        streamed(s, tmp_path / "stopped", stop_after_block_1)
    said: list[str] = []
    streamed(s, tmp_path / "resumed", said.append)
    assert any(m.startswith("resumed from block 1 of 2") for m in said), said
    assert_same_tensors(tmp_path / "memory", tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "qrecipe_quant.json").read_text()) == meta["memory"]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_moe_baseline_streamed_block_by_block_is_the_in_memory_one(arch, moe_dirs, tmp_path):
    """Perplexity, top-k log-probs and ids of the float MoE, its blocks read from the per-expert
    checkpoint one at a time, equal those of the model loaded whole by transformers."""
    from conftest import STORIES
    from moe_models import load_moe
    from transformers import AutoTokenizer

    from qrecipe.engine.data import token_windows
    from qrecipe.engine.evaluate.divergence import reference_pass
    from qrecipe.engine.streaming.baseline import streamed_references
    from qrecipe.engine.streaming.skeleton import StreamedModel
    from qrecipe.engine.streaming.source import WeightSource

    model = load_moe(moe_dirs[arch])
    windows = token_windows(AutoTokenizer.from_pretrained(moe_dirs[arch]), [STORIES.read_text(encoding="utf-8")], 128, 4)
    ref = reference_pass(model, windows, 2, 16, progress=False)
    skeleton = StreamedModel(model.config, WeightSource(moe_dirs[arch]), torch.device("cpu"), torch.float32)
    got = streamed_references(skeleton, {"stories": windows}, 2, 16, tmp_path / "work", 1 << 30,
                              lambda m: None)["stories"]
    assert got.nll == ref.nll and got.tokens == ref.tokens
    assert torch.equal(got.topk_logp, ref.topk_logp) and torch.equal(got.topk_ids, ref.topk_ids)
