"""Shared fixtures: the shared data folder, tiny real models, isolated run folders.

Hermetic: the test suite never reads or writes the user's home. Before anything else is
imported, HOME points at an empty folder of this test session, and every cache a test fills
(qrecipe's converted models, Hugging Face, Triton, torch inductor, matplotlib) lives in the
checkout's git-ignored `.cache/tests/`, reused across runs (QRECIPE_TEST_CACHE moves it).
Processes the tests start inherit all of it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("QRECIPE_TEST_CACHE") or ROOT / ".cache" / "tests").resolve()
TEST_HOME = Path(tempfile.mkdtemp(prefix="qrecipe-test-home-"))
atexit.register(shutil.rmtree, TEST_HOME, ignore_errors=True)
os.environ.update({
    "HOME": str(TEST_HOME),
    "QRECIPE_CACHE": str(TEST_CACHE / "qrecipe"),
    "HF_HOME": str(TEST_CACHE / "huggingface"),
    "TRITON_CACHE_DIR": str(TEST_CACHE / "triton"),
    "TORCHINDUCTOR_CACHE_DIR": str(TEST_CACHE / "inductor"),
    "MPLCONFIGDIR": str(TEST_CACHE / "matplotlib"),
    "XDG_CACHE_HOME": str(TEST_CACHE / "xdg"),
})
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as the CLI does (registry/cli.py): idle OpenMP threads sleep, so a busy shared CPU does not stall them
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Without a GPU the Triton kernels run in Triton's interpreter (tests/kernels/). Triton reads
# this when a kernel is defined, so it is set here, before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qrecipe.engine.config.resolvers import shared_dir  # noqa: E402

SHARED = Path(shared_dir())
TINY = SHARED / "models" / "TinyStories-656K"
STORIES = SHARED / "data" / "tinystories" / "tinystories_val.txt"

# Overrides that make a run small and in-domain for the tiny model: few windows, one prompt per
# task family, short decodes, the fewest timing repeats (5), no child-process memory measurement.
TINY_RUN = ["model=tinystories-656k", "data@eval.data=tinystories", "eval.windows=8", "eval.seq_len=256",
            "target=cpu", "eval.tasks.prompts=1", "eval.tasks.new_tokens=8", "eval.tasks.reference_tokens=16",
            "eval.speed.prompt_len=32", "eval.speed.context_len=32", "eval.speed.new_tokens=2", "eval.speed.warmup=0",
            "eval.memory.method=off"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test writes runs (and stores) under its own temporary folder."""
    monkeypatch.setenv("QRECIPE_HOME", str(tmp_path / "qrecipe_home"))
    yield


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} not found (set QRECIPE_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model_dir(shared) -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) of TinyStories-656K in float32 on CPU; tests must not modify it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def fresh_tiny_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def compose():
    """compose(*overrides) -> DictConfig."""
    return compose_cfg


@pytest.fixture
def settings():
    """settings(*overrides) -> validated Settings."""
    return settings_for


def compose_cfg(*overrides: str):
    from qrecipe.engine.config import compose

    return compose(list(overrides))


def settings_for(*overrides: str):
    from qrecipe.engine.config import load_settings

    return load_settings(compose_cfg(*overrides))
