"""Speed and memory measurements run and report sane quantities (no assertion on time). The
child-process peak memory is checked end to end (tests/registry/test_end_to_end.py)."""

import math

import pytest
import torch

from qrecipe.engine.config.settings import SpeedSpec
from qrecipe.engine.errors import ConfigError
from qrecipe.engine.evaluate.memory import peak_method, weight_bytes
from qrecipe.engine.evaluate.speed import measure_speed, speed_tokens


def test_speed_is_measured_for_prefill_and_decode(tiny_model):
    model, tokenizer = tiny_model
    tokens = speed_tokens(torch.arange(1, 40).reshape(3, 13), 64)
    assert tokens.shape == (64,) and tokens[:39].tolist() == list(range(1, 40))  # repeated to length
    result = measure_speed(model, tokens, SpeedSpec(prompt_len=32, batch_size=2, new_tokens=3, warmup=0, repeats=1))
    assert result.device == "cpu"
    assert math.isfinite(result.prefill_tokens_per_s) and result.prefill_tokens_per_s > 0
    assert math.isfinite(result.decode_ms_per_token) and result.decode_ms_per_token > 0


def test_weight_bytes_counts_tied_storage_once(tiny_model):
    model, _ = tiny_model
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    assert weight_bytes(model) == sum(params.values())
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_peak_method_follows_the_device():
    assert peak_method("auto", torch.device("cpu")) == "child"
    assert peak_method("off", torch.device("cpu")) == "off"
    with pytest.raises(ConfigError, match="eval.memory.method: cuda needs"):
        peak_method("cuda", torch.device("cpu"))

