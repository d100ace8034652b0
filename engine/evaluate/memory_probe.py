"""Child process of the CPU peak-memory measurement (memory.py): load one model, run one
eval batch, print {"peak_bytes", "rss_before", "peak_rss"} as JSON on the last stdout line.

    python -m qrecipe.engine.evaluate.memory_probe '{"checkpoint": DIR, "batch_size": 4, "seq_len": 512}'
    python -m qrecipe.engine.evaluate.memory_probe '{"model": {...ModelSpec...}, "cache": DIR, "dtype": "float32", ...}'

Before the first RSS reading the child imports everything loading needs, builds the model's
skeleton on the meta device (that imports its modeling code: ~200 MB of Python modules for
transformers' Llama) and runs one small op (thread pools), so the difference it reports is
the model's own memory: its weights, activations and allocator overhead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _config(request: dict):
    from transformers import AutoConfig

    from ..models.loading import load_config
    from ..models.spec import ModelSpec

    if "checkpoint" in request:
        return AutoConfig.from_pretrained(request["checkpoint"])
    return load_config(ModelSpec(**request["model"]), Path(request["cache"]))


def _warm_up(request: dict) -> None:
    import torch

    from ..models.loading import build_skeleton

    build_skeleton(_config(request))  # imports the modeling code; the meta skeleton holds no memory
    x = torch.randn(64, 64)
    torch.log_softmax(x @ x, dim=-1)


def _load(request: dict):
    import torch

    from ..checkpoint import load_checkpoint
    from ..models.loading import load_model
    from ..models.spec import ModelSpec

    if "checkpoint" in request:
        return load_checkpoint(request["checkpoint"], "cpu")[0]
    model, _ = load_model(ModelSpec(**request["model"]), Path(request["cache"]), torch.device("cpu"),
                          getattr(torch, request["dtype"]))
    return model


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    from .memory import RssSampler, eval_batch_workload, rss_bytes

    _warm_up(request)
    before = rss_bytes()
    model = _load(request)
    with RssSampler() as sampler:
        eval_batch_workload(model, request["batch_size"], request["seq_len"])
    print(json.dumps({"peak_bytes": sampler.peak - before, "rss_before": before, "peak_rss": sampler.peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
