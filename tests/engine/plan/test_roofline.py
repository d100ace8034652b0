"""The roofline predictions, recomputed here by hand from Llama-3-70B's config.json (the real
file, no weights) and NVIDIA's H100 SXM data sheet: 3.35 TB/s, 989.4 dense BF16 TFLOPS, 1978.9
dense FP8 TFLOPS (conf/target/h100.yaml names the sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrecipe.engine.plan.capacity import decode_bytes_per_token
from qrecipe.engine.planning import build_plan
from qrecipe.engine.targets import shipped_roofline

LLAMA3_70B = Path(__file__).parent / "fixtures" / "llama-3-70b"
H100_BYTES_PER_S, H100_BF16, H100_FP8 = 3.35e12, 989.4e12, 1978.9e12

# Llama-3-70B by hand: hidden 8192, 80 layers, 64 heads of 128, 8 KV heads, MLP 28672, vocab 128256
HIDDEN, LAYERS, KV, MLP, VOCAB = 8192, 80, 8 * 128, 28672, 128256
LINEARS = ([(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),  # q, k, v, o: (out, in)
            (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP)] * LAYERS  # gate, up, down
           + [(VOCAB, HIDDEN)])  # lm_head (not tied); the input embedding is gathered, not read whole
PARAMS = sum(n * k for n, k in LINEARS)  # 69,501,714,432
NORMS = (2 * LAYERS + 1) * HIDDEN  # two RMSNorms per block and the final one, kept in bf16
KV_BYTES_PER_TOKEN = 2 * LAYERS * 8 * 128 * 2  # K and V, 80 layers, 8 heads of 128, bf16


def _plan(settings, *overrides):
    return build_plan(settings("model=hf", f"model.path={LLAMA3_70B}", "target=h100", *overrides))[0]


def test_70b_weights_only_decode_on_h100_bf16_vs_w4a16_g128_vs_fp8(settings):
    assert PARAMS == 69_501_714_432
    bf16 = 2 * PARAMS + 2 * NORMS
    w4a16 = sum(n * k // 2 + n * (k // 128) * 2 for n, k in LINEARS) + 2 * NORMS  # 4-bit codes, fp16 scale / 128
    fp8 = sum(n * k + n * 4 for n, k in LINEARS) + 2 * NORMS  # 1-byte codes, fp32 scale per output channel
    w4 = _plan(settings, "recipe=w4a16").roofline
    f8 = _plan(settings, "recipe=fp8").roofline
    assert w4["baseline"]["weight_bytes_read"] == f8["baseline"]["weight_bytes_read"] == bf16
    assert w4["variant"]["weight_bytes_read"] == w4a16 and f8["variant"]["weight_bytes_read"] == fp8
    # decode reads every weight once per token: weights-only time = bytes / bandwidth
    assert w4["baseline"]["decode_ms_weights"] == pytest.approx(1000 * bf16 / H100_BYTES_PER_S)  # 41.5 ms
    assert w4["variant"]["decode_ms_weights"] == pytest.approx(1000 * w4a16 / H100_BYTES_PER_S)  # 10.7 ms
    assert f8["variant"]["decode_ms_weights"] == pytest.approx(1000 * fp8 / H100_BYTES_PER_S)  # 20.8 ms
    assert 41.4 < w4["baseline"]["decode_ms_weights"] < 41.6
    # plus the KV cache: 256 tokens of context (eval.speed.context_len) at batch 1, never quantized
    kv = 256 * KV_BYTES_PER_TOKEN
    assert w4["variant"]["kv_bytes_read"] == kv
    assert w4["variant"]["decode_ms_per_token"] == pytest.approx(1000 * (w4a16 + kv) / H100_BYTES_PER_S)
    assert w4["decode_speedup"] == pytest.approx((bf16 + kv) / (w4a16 + kv))  # 3.87x
    assert f8["decode_speedup"] == pytest.approx((bf16 + kv) / (fp8 + kv))  # 1.99x


def test_70b_prefill_is_bound_by_math_in_the_layers_math_type(settings):
    tokens = 2048
    w4 = _plan(settings, "recipe=w4a16", f"eval.speed.prompt_len={tokens}").roofline
    f8 = _plan(settings, "recipe=fp8", f"eval.speed.prompt_len={tokens}").roofline
    bf16_s = 2 * PARAMS * tokens / H100_BF16  # 288 ms of bf16 math against 41.5 ms of weight reads
    assert w4["baseline"]["prefill_tokens_per_s"] == pytest.approx(tokens / bf16_s)
    assert w4["baseline"]["prefill_bound"] == "math"
    # W4A16 dequantizes into bf16 MMAs: the same math, so no faster to prefill
    assert w4["variant"]["prefill_tokens_per_s"] == pytest.approx(tokens / bf16_s) and w4["prefill_speedup"] == \
        pytest.approx(1.0)
    # FP8 runs its matmuls on fp8 tensor cores at twice the rate
    assert f8["variant"]["prefill_tokens_per_s"] == pytest.approx(tokens / (2 * PARAMS * tokens / H100_FP8))
    assert f8["prefill_speedup"] == pytest.approx(H100_FP8 / H100_BF16)
    # at 256 tokens (the default) even bf16 prefill is still bound by reading the weights
    short = _plan(settings, "recipe=w4a16").roofline
    assert short["baseline"]["prefill_bound"] == "bytes"
    assert short["baseline"]["prefill_tokens_per_s"] == pytest.approx(256 / ((2 * PARAMS + 2 * NORMS) / H100_BYTES_PER_S))


def test_a_kept_tied_head_reads_the_embedding_it_shares(settings):
    plan = build_plan(settings("model=tinystories-656k", "recipe=w8a16", "target=h100"))[0]
    head = plan.layer("lm_head")
    assert head.status == "kept" and head.bytes_after == 0  # shares the embedding's bytes
    r = plan.roofline
    embedding = head.in_features * head.out_features * 2
    linears = sum(lp.bytes_after for lp in plan.layers)
    assert r["variant"]["weight_bytes_read"] == linears + embedding + (plan.other_bytes - embedding)


def test_the_plan_prints_predictions_and_says_when_there_are_none(settings):
    from qrecipe.engine.plan.render import render_plan

    text = render_plan(_plan(settings, "recipe=w4a16"))
    assert "predicted on h100 (roofline, not a measurement: 3350 GB/s" in text
    assert "41.5 ms -> 10.7 ms per token (3.87x)" in text and "256 tokens of KV cache" in text
    cpu = build_plan(settings("model=tinystories-656k", "target=cpu"))[0]
    assert cpu.roofline == {"available": False, "target": "cpu", "reason": (
        "target cpu states no memory bandwidth; set target.bandwidth_gb_s (GB/s) and target.dense_tflops (e.g. "
        "'target.dense_tflops={fp32: 1.5}'; with target=auto add them: +target.bandwidth_gb_s=...) to get one")}
    assert "predicted on cpu: unavailable (target cpu states no memory bandwidth" in render_plan(cpu)
    own = build_plan(settings("model=tinystories-656k", "target=cpu", "target.bandwidth_gb_s=50",
                              "target.dense_tflops={fp32: 1.5}"))[0].roofline
    assert own["available"] and own["prefill_speedup"] > 0 and own["bandwidth_gb_s"] == 50


def test_auto_takes_the_roofline_of_the_shipped_target_with_that_exact_gpu():
    assert shipped_roofline("NVIDIA H100 80GB HBM3") == (3350.0, {"bf16": 989.4, "fp16": 989.4, "int8": 1978.9,
                                                                  "fp8": 1978.9})
    assert shipped_roofline("NVIDIA H200")[0] == 4800.0
    assert shipped_roofline("NVIDIA H100 PCIe") == (None, {})  # another part: 2 TB/s, not the SXM's figures


def test_a_mixture_of_experts_decode_reads_and_computes_the_routed_experts_only(settings):
    """Qwen3-30B-A3B (config only): 128 experts, 8 routed per token. At batch 1 decode reads what
    the plan's capacity says one token reads; a 256-token prefill touches every expert."""
    moe = Path(__file__).parents[2] / "fixtures" / "moe" / "qwen3-30b-a3b"
    plan, info = build_plan(settings("model=hf", f"model.path={moe}", "target=h100", "recipe=w4a16",
                                     "recipe.base.group_size=128"))
    r = plan.roofline
    assert r["variant"]["weight_bytes_read"] == plan.capacity["decode_bytes_per_token_after"]
    assert r["baseline"]["weight_bytes_read"] == plan.capacity["decode_bytes_per_token_before"]
    experts = [lp for lp in plan.layers if lp.kind == "experts"]
    assert experts and all(lp.num_experts == 128 for lp in experts)
    routed = sum(lp.in_features * lp.out_features * 8 for lp in experts)  # 8 of 128 experts per token
    dense = sum(lp.in_features * lp.out_features for lp in plan.layers if lp.kind != "experts")
    assert sum(r["baseline"]["macs_per_token"].values()) == routed + dense
    embedding = info.vocab_size * info.hidden_size * 2  # untied: gathered a row per token, not read
    assert decode_bytes_per_token(plan, info, after=False, tokens=256) == plan.totals()["weight_bytes_before"] - embedding
