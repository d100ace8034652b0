"""Fixtures for the algorithm tests (import them into a test module by name): quantize
TinyStories-656K with a recipe and score it.

Evaluation: the first 32 windows of 256 tokens of tinystories_val.txt. Calibration: text
from the second half of the same file (written to a temporary file), so calibration and
evaluation never share tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qrecipe.engine.config import compose, load_settings
from qrecipe.engine.config.resolvers import shared_dir

STORIES = Path(shared_dir()) / "data" / "tinystories" / "tinystories_val.txt"
EVAL_WINDOWS, EVAL_LEN = 32, 256


@dataclass
class Quantized:
    ppl: float
    notes: list[str]
    model: torch.nn.Module
    plan: object


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory, shared) -> Path:
    text = STORIES.read_text(encoding="utf-8")
    second_half = text[text.index("\n", len(text) // 2) + 1:]
    path = tmp_path_factory.mktemp("calib") / "tinystories_second_half.txt"
    path.write_text(second_half, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def eval_windows(tiny_model):
    from qrecipe.engine.data import token_windows

    _, tokenizer = tiny_model
    return token_windows(tokenizer, [STORIES.read_text(encoding="utf-8")], EVAL_LEN, EVAL_WINDOWS)


@pytest.fixture(scope="session")
def quantize_tiny(calib_text, eval_windows, tiny_model_dir):
    """quantize_tiny(*overrides) -> Quantized: a fresh model quantized per the overrides."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qrecipe.engine.evaluate import perplexity
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.quantize import quantize_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def run(*overrides: str, samples: int = 64) -> Quantized:
        settings = load_settings(compose([
            "model=tinystories-656k", "target=cpu", "data@calib.data=text", f"calib.data.path={calib_text}",
            f"calib.samples={samples}", "calib.seq_len=256", *overrides]))
        plan, _ = build_plan(settings, torch.device("cpu"))
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        report = quantize_model(model, plan, settings.calib, tokenizer, progress=False)
        return Quantized(perplexity(model, eval_windows, 8, progress=False).ppl, report.notes, model, plan)

    return run


@pytest.fixture(scope="session")
def float_ppl(tiny_model, eval_windows) -> float:
    from qrecipe.engine.evaluate import perplexity

    return perplexity(tiny_model[0], eval_windows, 8, progress=False).ppl
