"""One forward pass per block (engine/calibration/sequential.py): each input group is quantized
once every batch has reached it, later layers run on its quantized weights, and the block's
outputs are handed on as the next block's inputs (GPTQ's true_sequential, the default)."""

from __future__ import annotations

import copy
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / "algorithms"))
from tiny_quant import STORIES, calib_text, eval_windows, float_ppl, quantize_tiny  # noqa: E402,F401  (fixtures)

from qrecipe.engine.calibration.sequential import PassDiverged, run_paused  # noqa: E402


class Chain(nn.Module):
    """Two input groups: (a, b) read x, then c reads a(x) * b(x)."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(4, 4, bias=False) for _ in range(3))
        self.twice = twice

    def forward(self, x):
        y = self.c(self.a(x) * self.b(x))
        return self.c(y) if self.twice else y


class Branch(Chain):
    """A batch whose inputs sum below zero skips c (as a router may skip an expert)."""

    def forward(self, x):
        h = self.a(x) * self.b(x)
        return self.c(h) if x.sum() > 0 else h


def _calls(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(2, 3, 4, generator=g),), {}) for _ in range(n)]


def _round(modules) -> None:
    for m in modules:
        m.weight.data = (m.weight.data * 4).round() / 4  # a stand-in for quantization


def test_each_group_completes_once_every_batch_reached_it_and_later_layers_run_on_its_new_weights():
    torch.manual_seed(0)
    block, calls = Chain(), _calls(3)
    rounded = copy.deepcopy(block)
    _round([rounded.a, rounded.b, rounded.c])
    members = {"ab": [block.a, block.b], "c": [block.c]}
    seen, order = [], []
    threads = threading.active_count()

    def complete(group):
        order.append((group, len(seen)))
        _round(members[group])

    outs = run_paused(block, calls, {m: g for g, ms in members.items() for m in ms},
                      lambda group, x: seen.append((group, x.clone())), complete)
    assert order == [("ab", 3), ("c", 6)]  # each group once, after all three batches arrived
    assert [g for g, _ in seen] == ["ab"] * 3 + ["c"] * 3
    for j, ((x,), _) in enumerate(calls):
        assert torch.equal(seen[j][1], x)  # in batch order
        assert torch.equal(seen[3 + j][1], rounded.a(x) * rounded.b(x))  # c saw the rounded a and b
        assert torch.equal(outs[j], rounded(x))
    assert threading.active_count() == threads


@pytest.mark.parametrize("block, message", [
    (Chain(twice=True), "ran twice in one forward"),
    (Branch(), "stopped at different input groups of the block"),
])
def test_batches_that_do_not_reach_the_groups_alike_fail_with_the_fix_and_leave_no_thread(block, message):
    calls = _calls(4, seed=1)
    if isinstance(block, Branch):
        calls[2] = ((-calls[2][0][0].abs(),), {})  # this batch skips c
    threads = threading.active_count()
    with pytest.raises(PassDiverged, match=f"{message}.*set true_sequential=false"):
        run_paused(block, calls, {block.a: "ab", block.b: "ab", block.c: "c"}, lambda g, x: None,
                   lambda g: None, fix="set true_sequential=false")
    assert threading.active_count() == threads


def test_an_error_while_quantizing_a_group_reaches_the_caller_and_leaves_no_thread():
    block = Chain()
    threads = threading.active_count()

    def complete(group):
        if group == "c":
            raise FloatingPointError("c is not finite")

    with pytest.raises(FloatingPointError, match="c is not finite"):
        run_paused(block, _calls(3), {block.a: "ab", block.b: "ab", block.c: "c"}, lambda g, x: None, complete)
    assert threading.active_count() == threads


GPTQ = ("recipe=w4a16", "recipe.base.algorithm=gptq")
TWO_PASS = "recipe.base.args.true_sequential=false"


def _block_inputs(model, windows, layer: int) -> list[torch.Tensor]:
    """The hidden states layer `layer` receives on each forward, from here on."""
    got = []
    model.model.layers[layer].register_forward_pre_hook(lambda _m, args, kwargs: got.append(
        (args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
    return got


def test_the_one_pass_hands_on_what_the_quantized_block_outputs(tiny_model_dir, shared):
    """Block 1 calibrates on block 0's outputs from the one pass; the quantized model (after the
    swap, through its QuantLinears) feeds block 1 the same hidden states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.data import token_windows
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.quantize import quantize_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    windows = token_windows(tokenizer, [STORIES.read_text(encoding="utf-8")], 128, 16)
    plan, _ = build_plan(load_settings(compose(["model=tinystories-656k", "target=cpu", *GPTQ])), torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    during = _block_inputs(model, windows, 1)
    report = quantize_model(model, plan, windows, progress=False)
    assert any("true_sequential: each block's input groups quantized in order" in n for n in report.notes)
    calibrated_on = torch.cat(during[:2])  # its two batches of 8 windows (calib.batch_size), in its one pass
    during.clear()
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    torch.testing.assert_close(during[0], calibrated_on, rtol=1e-6, atol=1e-6)


def test_true_sequential_calibrates_later_groups_on_the_quantized_earlier_ones(quantize_tiny, float_ppl):
    one, two = quantize_tiny(*GPTQ, samples=16), quantize_tiny(*GPTQ, TWO_PASS, samples=16)
    state_one, state_two = one.model.state_dict(), two.model.state_dict()
    first = "model.layers.0.self_attn"
    # q/k/v read the block's input, the same in both: the same statistics, bit-identical weights
    for name in ("q_proj", "k_proj", "v_proj"):
        for key in (k for k in state_one if k.startswith(f"{first}.{name}.")):
            assert torch.equal(state_one[key], state_two[key]), key
    # o_proj reads the attention output: through the quantized q/k/v in one pass only
    o = [k for k in state_one if k.startswith(f"{first}.o_proj.")]
    assert o and not all(torch.equal(state_one[k], state_two[k]) for k in o)
    assert not any("true_sequential" in n for n in two.notes)
    assert float_ppl < one.ppl < 1.1 * float_ppl and float_ppl < two.ppl < 1.1 * float_ppl


@pytest.mark.parametrize("extra, reason", [
    ("recipe.base.args.float_targets=true", "float_targets needs the float block's outputs"),
    ("recipe.base.args.refine_steps=2", "refine_steps needs the float block's outputs"),
])
def test_an_explicit_true_sequential_that_cannot_apply_is_noted(quantize_tiny, extra, reason):
    run = quantize_tiny(*GPTQ, "recipe.base.args.true_sequential=true", extra, samples=16)
    assert any(f"true_sequential not applied to model.layers.0 ({reason})" in n for n in run.notes), run.notes
