"""One llm-compressor configuration of bench/algorithms.py, run inside bench/.venv-llmc.

    bench/.venv-llmc/bin/python bench/llmc_run.py CONFIG MODEL_DIR WINDOWS_PT [float32 | bfloat16]

Prints one JSON line: ppl, quantization seconds and peak RSS. Uses the calibration and
evaluation windows qrecipe prepared (WINDOWS_PT), so both tools see the same tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import PeakRSS, Timer, perplexity  # noqa: E402

# llm-compressor's AWQ pins its cached activations for fast host-to-GPU copies; on a
# machine without an accelerator pinning fails, so it is a no-op here.
torch.Tensor.pin_memory = lambda self, *a, **k: self


def _w4(group: int, symmetric: bool):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=group))}


def _w8a8(static: bool):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="tensor", dynamic=False) if static \
        else QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=8, type="int", symmetric=True, strategy="channel"), input_activations=acts)}


def recipe(config: str):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    ignore = ["lm_head"]
    if config.endswith(("w4a16", "w4a16_asym")):
        groups = _w4(64, symmetric=not config.endswith("_asym"))
        modifier = {"rtn": QuantizationModifier, "awq": AWQModifier, "gptq": GPTQModifier}[config.split("_")[0]]
        return [modifier(config_groups=groups, ignore=ignore)]
    static = "static" in config
    quant = QuantizationModifier(config_groups=_w8a8(static), ignore=ignore)
    if config.startswith("sq_"):
        return [SmoothQuantModifier(smoothing_strength=0.5), quant]
    return [quant]


def main(config: str, model_dir: str, windows_pt: str, precision: str = "float32") -> None:
    """precision bfloat16: the model is loaded in bf16 (how llm-compressor calibrates in bf16) and
    cast back to float32 after quantization, so it is scored as qrecipe's models are."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    data = torch.load(windows_pt)
    calib, evaluation = data["calib"], data["eval"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, precision)).eval()
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    with PeakRSS() as mem, Timer() as t:
        oneshot(model=model, dataset=ds, recipe=recipe(config), num_calibration_samples=calib.shape[0],
                max_seq_length=calib.shape[1], shuffle_calibration_samples=False)
    model = model.float()
    ppl = perplexity(model, evaluation)
    extra = {name: perplexity(model, w) for name, w in data.get("extra", {}).items()}  # algorithms.HELD_OUT_TEXTS
    print(json.dumps({"tool": "llm-compressor", "config": config, "ppl": ppl, "seconds": t.seconds,
                      "peak_rss": mem.peak, "rss_before": mem.start, "ppl_by_text": extra}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
