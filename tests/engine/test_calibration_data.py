"""Calibration sampling: seeded windows from any text or jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from qrecipe.engine.config.settings import CalibSpec, DataSpec
from qrecipe.engine.data import calibration_windows
from qrecipe.engine.errors import ConfigError


def _spec(path, **kw) -> CalibSpec:
    return CalibSpec(data=DataSpec(name="t", path=str(path)), **{"samples": 8, "seq_len": 64, **kw})


def test_same_seed_same_windows_other_seed_other_windows(tiny_model, shared):
    _, tok = tiny_model
    text = shared / "data" / "tinystories" / "tinystories_val.txt"
    a = calibration_windows(tok, _spec(text))
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, calibration_windows(tok, _spec(text)))
    assert not torch.equal(a, calibration_windows(tok, _spec(text, seed=1)))
    # a plain text file is drawn from everywhere, not only its start
    first = tok(text.read_text()[:2000], add_special_tokens=False)["input_ids"][:64]
    assert a[0].tolist() != first


def test_jsonl_documents(tiny_model, tmp_path):
    _, tok = tiny_model
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"Tom had {i} red balls and a big dog."}) for i in range(200)))
    windows = calibration_windows(tok, _spec(path, samples=4, seq_len=32))
    assert windows.shape == (4, 32)


def test_too_little_text_names_the_field(tiny_model, tmp_path):
    _, tok = tiny_model
    path = tmp_path / "short.txt"
    path.write_text("Once upon a time there was a cat.")
    with pytest.raises(ConfigError, match=r"calib\.samples: .* holds 0 windows of 64 tokens"):
        calibration_windows(tok, _spec(path))
