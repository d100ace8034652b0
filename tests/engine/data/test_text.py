"""Datasets: local text and jsonl, windows per the documented protocol, clear errors."""

from __future__ import annotations

import pytest

from qrecipe.engine.config.settings import DataSpec
from qrecipe.engine.data import check_data, load_documents, token_windows
from qrecipe.engine.errors import ConfigError


def test_wikitext_and_c4_defaults_exist(settings, shared):
    s = settings()
    assert s.eval.data.path.endswith("wikitext-2-raw/wiki.test.raw")
    assert s.calib.data.path.endswith("c4-en-train-first1000.jsonl")
    check_data(s.eval.data, "eval.data")
    assert len(load_documents(s.calib.data)) == 1000


def test_windows_are_consecutive_non_overlapping_tokens(tiny_model):
    _, tok = tiny_model
    text = "Once upon a time there was a cat. " * 200
    w = token_windows(tok, [text], seq_len=32, windows=4)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert w.shape == (4, 32) and w.flatten().tolist() == ids[:128]


def test_too_few_tokens_names_the_field(tiny_model):
    _, tok = tiny_model
    with pytest.raises(ConfigError, match=r"eval.windows: the text holds 1 windows of 32 tokens, not 10"):
        token_windows(tok, ["Once upon a time there was a cat. " * 8], seq_len=32, windows=10)


def test_missing_file_says_what_to_pass(tmp_path):
    spec = DataSpec(name="text", path=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match=r"eval.data.path: file .* does not exist; pass eval.data.path=FILE"):
        check_data(spec, "eval.data")


def test_jsonl_field_and_bad_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert load_documents(DataSpec(name="t", path=str(f))) == ["a", "b"]
    with pytest.raises(ConfigError, match=r"data.field: line 1 .* has no key 'body'"):
        load_documents(DataSpec(name="t", path=str(f), field="body"))
    f.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"line 2 .* is not JSON"):
        load_documents(DataSpec(name="t", path=str(f)))
