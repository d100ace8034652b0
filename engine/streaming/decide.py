"""In memory or streamed, and the peak memory each would take, decided before any weight is read.

`run.streaming=auto` streams when the float weights plus one block's work do not fit the
memory the compute device has free (CUDA: free device memory; CPU: available host memory),
keeping 10% in reserve; `always` and `never` force it. The estimate (README "Models bigger
than memory") is a formula of the largest block, the calibration windows and the batch:

  block      largest decoder block's float weights            (run dtype)
  work       one batch through a block: B x S x (8 H + 3 I + heads x S) x E (the last term: attention
             scores where attention materializes them)
  stats      calibration statistics of one block (GPTQ/AWQ: one K x K float32 Gram matrix per
             input the block's linears read, plus 3 x K_max^2 x 4 + 3 x the largest linear in
             float32 while GPTQ/AWQ solve it: its factorization copies; absmax/static scales: negligible)
  acts       hidden states of all calibration windows: samples x S x H x E (x2 while one block
             turns them into the next one's; above run.activation_budget_gib they go to disk)
  eval       the baseline's eval windows the same way, plus one batch of logits
             (eval.batch_size x eval.seq_len x vocab x 4 x 2) and its top-k (windows x seq_len x k x 8)
  tail       embeddings or head + norm on the device, whichever is larger

  streamed device peak = max(block + work + stats, tail + logits batch)
  streamed host peak   = min(2 x acts, budget) + min(eval acts, budget) + top-k + 2 x a packed block
                         (+ the device peak when the device is the CPU)
  in memory            = all float weights + acts + work + stats

E is the run dtype's element size, H the hidden size, I the widest linear, S and B the
calibration sequence length and batch. It is an estimate (allocator slack, the interpreter and
libraries come on top): the run prints it next to the plan; bench/big_model.py measures it.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config.settings import Settings
from ..models.describe import ModelInfo, dtype_bytes
from ..models.families import BLOCK_LISTS, final_norm
from ..plan import Plan

STREAMED, IN_MEMORY = "streamed", "in-memory"
RESERVE = 0.9  # share of the free memory a run may plan to use
_HESSIAN_ALGORITHMS = ("gptq", "awq")


def free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _blocks(info: ModelInfo) -> dict[str, list]:
    pattern = re.compile("^(" + "|".join(re.escape(b) for b in BLOCK_LISTS) + r")\.(\d+)\.")
    out: dict[str, list] = {}
    for li in info.units:  # linears, expert tensors (all their experts) and MoE routers
        m = pattern.match(li.name)
        if m:
            out.setdefault(m.group(0), []).append(li)
    return out


def estimate(settings: Settings, plan: Plan, info: ModelInfo, dtype: torch.dtype) -> dict[str, int]:
    """The terms of the formula above, in bytes."""
    e = dtype_bytes(dtype)
    h, v = info.hidden_size, info.vocab_size
    blocks = _blocks(info)
    by_name = {lp.name: lp for lp in plan.layers}
    linear_params = sum(li.numel + (li.out_features if li.bias else 0) for li in info.units
                        if li.name != info.tied_lm_head)
    float_bytes = (linear_params + info.other_params) * e
    norms = 2 * h  # a block's norms, beside its linears
    block = max((sum(li.numel for li in lis) + norms for lis in blocks.values()), default=0) * e
    packed = max((sum(by_name[li.name].bytes_after for li in lis) for lis in blocks.values()), default=0)
    widest = max((li.out_features for lis in blocks.values() for li in lis), default=h)
    calib = settings.calib
    calibrates = any(lp.calibrates for lp in plan.quantized())
    hessian = any(lp.algorithm in _HESSIAN_ALGORITHMS for lp in plan.quantized())
    stats = 0
    if hessian and blocks:
        lis = max(blocks.values(), key=lambda ls: sum(li.numel for li in ls))
        # linears a serving engine fuses read one input (q/k/v, gate/up); an experts module's
        # gate_up and down, fused into one MoE layer, do not
        kinds = {u.name: u.kind for u in info.units}
        grouped = {n for g in info.fused_groups if kinds.get(g[0]) == "linear" for n in g[1:]}
        k_max = max(li.in_features for li in lis)
        # one Gram matrix per input read (an expert tensor: one per expert, its gate and up share one)
        stats = sum(li.in_features ** 2 * 4 * li.num_experts for li in lis
                    if li.kind != "router" and li.name not in grouped)
        # GPTQ's factorization: <= 3 copies at a time of one linear's (one expert's) matrices
        stats += 3 * k_max ** 2 * 4 + 3 * max(li.in_features * li.out_features for li in lis) * 4
    seq, batch = calib.seq_len, calib.batch_size
    work = batch * seq * ((8 * h + 3 * widest) + info.num_heads * seq) * e if calibrates else 0
    acts = calib.samples * seq * h * e if calibrates else 0
    ev = settings.eval
    texts = len(ev.all_texts())
    eval_acts = texts * ev.windows * ev.seq_len * h * e
    eval_work = ev.batch_size * ev.seq_len * ((8 * h + 3 * widest) + info.num_heads * ev.seq_len) * e
    logits = ev.batch_size * ev.seq_len * v * 4 * 2
    topk = texts * ev.windows * ev.seq_len * ev.kl_topk * 8
    tail = v * h * e + h * e
    return {"float_weights": float_bytes, "largest_block": block, "packed_block": packed, "block_work": max(work, eval_work),
            "calibration_stats": stats, "calibration_activations": acts, "eval_activations": eval_acts,
            "logits_batch": logits, "topk_reference": topk, "tail": tail}


def peaks(t: dict[str, int], device: torch.device, budget: int) -> dict[str, int]:
    streamed_device = max(t["largest_block"] + t["block_work"] + t["calibration_stats"], t["tail"] + t["logits_batch"])
    host_extra = (min(2 * t["calibration_activations"], budget) + min(t["eval_activations"], budget)
                  + t["topk_reference"] + 2 * t["packed_block"])
    in_memory = t["float_weights"] + t["calibration_activations"] + t["block_work"] + t["calibration_stats"]
    on_cpu = device.type == "cpu"
    return {"streamed_device": streamed_device,
            "streamed_host": host_extra + (streamed_device if on_cpu else 0),
            "in_memory_device": in_memory + (t["logits_batch"] if on_cpu else 0),
            "in_memory_host": in_memory + t["logits_batch"] if on_cpu else t["float_weights"]}


def execution_plan(settings: Settings, plan: Plan, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                   free_bytes: int | None = None) -> dict[str, Any]:
    """{mode, setting, reason, device, free_bytes, peak_device_bytes, peak_host_bytes, terms}."""
    from ..plan.render import human_bytes

    setting = settings.run.streaming
    terms = estimate(settings, plan, info, dtype)
    budget = int(settings.run.activation_budget_gib * 2**30)
    p = peaks(terms, device, budget)
    free = free_device_bytes(device) if free_bytes is None else free_bytes
    need = p["in_memory_device"]
    where = f"{human_bytes(free)} free on {device.type}"
    streamable = final_norm(info.model_type) is not None and bool(_blocks(info))
    if setting == "never":
        mode, reason = IN_MEMORY, "run.streaming=never"
    elif setting == "always":
        if not streamable:
            from ..errors import ConfigError

            raise ConfigError(f"run.streaming: model type {info.model_type!r} has no known decoder block list and "
                              f"final norm (engine/models/families.py BLOCK_LISTS, FINAL_NORMS), so it cannot stream; "
                              f"set run.streaming=auto or never")
        mode, reason = STREAMED, "run.streaming=always"
    elif need <= RESERVE * free:
        mode, reason = IN_MEMORY, (f"run.streaming=auto: the float weights ({human_bytes(terms['float_weights'])}) "
                                   f"plus one block's work need ~{human_bytes(need)}, which fits in {where}")
    elif not streamable:
        mode, reason = IN_MEMORY, (f"run.streaming=auto: needs ~{human_bytes(need)} with {where}, but model type "
                                   f"{info.model_type!r} cannot stream (engine/models/families.py FINAL_NORMS); "
                                   f"running in memory")
    else:
        mode, reason = STREAMED, (f"run.streaming=auto: the float weights ({human_bytes(terms['float_weights'])}) "
                                  f"plus one block's work need ~{human_bytes(need)}, more than {int(RESERVE * 100)}% "
                                  f"of {where}")
    key = "streamed" if mode == STREAMED else "in_memory"
    return {"mode": mode, "setting": setting, "reason": reason, "device": str(device), "free_bytes": free,
            "peak_device_bytes": p[f"{key}_device"], "peak_host_bytes": p[f"{key}_host"],
            "activation_budget_bytes": budget, "terms": terms}
