"""What a run records about how it was measured: the eval protocol (only runs measured alike are
compared) and which backend ran each quantized layer (whether the speed is the production
kernel's on the target)."""

from __future__ import annotations

import copy
import shutil

import torch

from conftest import TINY_RUN, settings_for

from qrecipe.engine.evaluate.backends_used import backend_record
from qrecipe.engine.evaluate.protocol import describe_protocol, eval_protocol, protocol_hash
from qrecipe.engine.planning import build_plan
from qrecipe.engine.quantize import prepare_model, quantize_model

CPU = torch.device("cpu")


def _hash(*overrides, dtype=torch.float32):
    return protocol_hash(eval_protocol(settings_for(*TINY_RUN, *overrides), CPU, dtype))


def test_the_protocol_follows_what_was_measured_and_nothing_else(shared, tmp_path):
    same = _hash()
    assert _hash("recipe=w4a16") == same  # the variant is not part of how it is measured
    assert _hash("eval.speed.repeats=9", "eval.speed.max_rel_iqr=0.2") == same  # precision, not the quantity
    assert _hash("eval.batch_size=2") == same  # batching does not change the numbers
    for changed in ("eval.windows=4", "eval.seq_len=128", "eval.tasks.prompts=2", "eval.kl_topk=8",
                    "eval.speed.context_len=64", "eval.speed.enabled=false", "data@eval.data=wikitext2"):
        assert _hash(changed) != same, changed
    assert _hash(dtype=torch.bfloat16) != same
    # the text is its content, not its path: a copy elsewhere is the same protocol
    copy_of_text = tmp_path / "stories.txt"
    shutil.copyfile(settings_for(*TINY_RUN).eval.data.path, copy_of_text)
    assert _hash(f"eval.data.path={copy_of_text}") == same
    copy_of_text.write_text("other text")
    assert _hash(f"eval.data.path={copy_of_text}") != same
    text = describe_protocol(eval_protocol(settings_for(*TINY_RUN), CPU, torch.float32))
    assert text.startswith("tinystories (sha256 ") and "8x256 tokens; tasks prose,math,code,json x1" in text
    assert text.endswith("; speed prefill 1x32, decode 1x2 at 32; cpu float32")


def _quantized(tiny_model, dtype, *overrides):
    model = copy.deepcopy(tiny_model[0]).to(dtype)
    settings = settings_for("model=tinystories-656k", *overrides)
    plan, _ = build_plan(settings, CPU)
    quantize_model(model, plan, progress=False)
    prepare_model(model)
    return model, settings.target


def test_dequantize_then_matmul_is_named_as_not_the_production_kernel(tiny_model):
    model, h100 = _quantized(tiny_model, torch.float32, "recipe=w4a16", "recipe.base.group_size=64", "target=h100")
    m = backend_record(model, h100, "cpu", "cpu")
    assert m["backend.torch"] == 14 and m["layers_on_fallback"] == 14 and m["layers_on_kernel"] == 0
    assert m["speed_on_target"] is False and m["speed_production"] is False
    assert m["speed_caveat"] == ("not the production kernel's speed: 14 of 14 quantized layers ran no kernel of "
                                 "their format (torch: dequantize, then matmul); it was measured on cpu, not on "
                                 "target h100's NVIDIA H100 80GB HBM3")


def test_torchs_packed_cpu_kernel_on_a_cpu_target_is_the_production_kernel(tiny_model):
    model, cpu = _quantized(tiny_model, torch.bfloat16, "recipe=w4a16", "recipe.base.group_size=64", "target=cpu")
    m = backend_record(model, cpu, "cpu", "cpu")
    assert m["backend.cpu-int4pack"] == 14 and m["layers_on_kernel"] == 14
    assert m["speed_production"] is True and "speed_caveat" not in m
