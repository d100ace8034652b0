"""Helpers of the streaming tests (import them by name; the fixture too): quantize a model in
memory and streamed, and compare their checkpoints tensor by tensor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="session")
def synthetic_llama():
    """build(folder, **config) -> folder: bench/synthetic_llama.py's seeded random Llama."""
    sys.path.insert(0, str(BENCH))
    try:
        import synthetic_llama
    finally:
        sys.path.remove(str(BENCH))
    return synthetic_llama


def settings_of(*overrides: str, resume_dir: Path):
    from conftest import settings_for

    return settings_for("target=cpu", "run.device=cpu", f"run.resume_dir={resume_dir}", *overrides)


def in_memory(settings, out: Path):
    """Quantize the model loaded whole and save its single-file checkpoint into `out`."""
    from qrecipe.engine.checkpoint import save_checkpoint
    from qrecipe.engine.models.loading import load_model
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.quantize import quantize_model

    plan, _ = build_plan(settings, torch.device("cpu"))
    model, tok = load_model(settings.model, Path(settings.paths.cache), torch.device("cpu"), torch.float32)
    report = quantize_model(model, plan, settings.calib, tok, progress=False)
    save_checkpoint(model, tok, plan, out)
    return report


def streamed(settings, out: Path, say=lambda msg: None):
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.streaming import quantize_to_checkpoint

    plan, _ = build_plan(settings, torch.device("cpu"))
    assert plan.execution["mode"] == "streamed"
    return quantize_to_checkpoint(settings, plan, out, torch.device("cpu"), torch.float32, say)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from qrecipe.engine.checkpoint import checkpoint_tensors

    with checkpoint_tensors(folder) as reader:
        return {k: reader.get_tensor(k) for k in reader.keys()}


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
