"""A model big enough to matter here, streamed: the process's memory grows by a fraction of the
model, not by the model.

The model is synthetic (bench/synthetic_llama.py: seeded random weights at trained-Llama
scales, Llama-shaped, hidden 1024, 22 blocks, intermediate 2816, GQA 16/4, 962 MiB in
float32, 4 shards of 256 MiB with an index, TinyStories-656K's real tokenizer), built once
per test session. Each run happens in a child process (tests/engine/streaming/stream_child.py),
which reads its RSS after its imports and plan and its high-water mark (VmHWM, which counts
the checkpoint's mapped pages too) at the end. The GPTQ run calibrates every block's inputs
(the activations flow through all 22 blocks) and applies GPTQ to the last block, whose Hessians
(down_proj: 2816 x 2816) and solver are the largest working set; GPTQ on all 22 blocks would
take minutes on 2 CPU cores and not raise the peak, which is one block's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streaming_helpers import synthetic_llama  # noqa: F401 (fixture)
from qrecipe.engine.checkpoint import load_checkpoint

CHILD = Path(__file__).with_name("stream_child.py")
SHAPE = dict(hidden=1024, layers=22, intermediate=2816, heads=16, kv_heads=4, vocab=2048, dtype="float32")
BOUND = 0.35  # of the model's float32 bytes
RECIPES = {
    "rtn": ["recipe=w4a16"],
    "gptq": ["recipe=w4a16", "data@calib.data=tinystories", "calib.samples=8", "calib.seq_len=128",
             '+recipe.rules.last.match="re:model\\.layers\\.21\\..*"', "+recipe.rules.last.algorithm=gptq"],
}


@pytest.fixture(scope="module")
def big_model(synthetic_llama, tmp_path_factory):
    cfg = synthetic_llama.llama_config(**SHAPE)
    folder = synthetic_llama.build(tmp_path_factory.mktemp("synthetic") / "llama-1g", cfg, shard_bytes=256 << 20)
    return folder, synthetic_llama.float32_bytes(cfg)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_streamed_run_grows_memory_by_a_fraction_of_the_model(big_model, recipe, tmp_path):
    folder, model_bytes = big_model
    out = tmp_path / "ckpt"
    overrides = ["model=hf", f"model.path={folder}", "model.name=synthetic-1g", "target=cpu", "run.device=cpu",
                 "run.streaming=always", f"run.resume_dir={tmp_path / 'resume'}", *RECIPES[recipe]]
    env = {**os.environ, "QRECIPE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(CHILD), json.dumps({"overrides": overrides, "out": str(out)})],
                       capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    rise = r["peak_rss"] - r["rss_before"]
    print(f"{recipe}: peak RSS rise {rise / 2**20:.0f} MiB = {rise / model_bytes:.1%} of the float32 model "
          f"({model_bytes / 2**20:.0f} MiB); estimated {r['estimated_host_bytes'] / 2**20:.0f} MiB; {r['seconds']:.0f}s")
    assert rise < BOUND * model_bytes
    assert rise < r["estimated_host_bytes"]  # the plan's estimate is an upper bound here
    assert len(r["block_seconds"]) == SHAPE["layers"]

    model, tok, meta = load_checkpoint(out)
    assert len(meta["layers"]) == 22 * 7 + 1  # every linear, the untied head included
    from qrecipe.engine.data import token_windows
    from qrecipe.engine.evaluate import perplexity
    from conftest import STORIES

    windows = token_windows(tok, [STORIES.read_text(encoding="utf-8")], 64, 2)
    ppl = perplexity(model, windows, 2, progress=False).ppl
    assert torch.isfinite(torch.tensor(ppl)) and ppl > 1
