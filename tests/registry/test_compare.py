"""Which shipped targets a variant can serve on: capabilities for its schemes, memory for its weights."""

from qrecipe.registry.compare import render_markdown, serves_on, shipped_targets


def test_targets_follow_capabilities_and_memory():
    targets = shipped_targets()
    assert {t.name for t in targets} == {"a100", "cpu", "h100", "l4"}
    assert serves_on([], 1e9, targets) == ["a100", "cpu", "h100", "l4"]  # weight-only: anywhere
    assert serves_on(["fp8"], 1e9, targets) == ["h100", "l4"]  # FP8 needs compute capability 8.9+
    assert serves_on(["int8"], 1e9, targets) == ["a100", "cpu", "h100", "l4"]
    # 200 GiB of weights: more than 8 x 24 GiB L4s hold at 90%, less than 8 x 80 GiB A100s/H100s
    big = serves_on([], 200 * 2**30, targets)
    assert "l4" not in big and {"a100", "h100"} <= set(big)


def test_markdown_matrix_has_one_row_per_variant():
    row = {"variant": "abc", "recipe": "w4|x", "target": "cpu", "weight_reduction": 3.0, "decode_speedup": None,
           "prefill_speedup": 1.5, "ppl_delta_pct": 2.345, "kl_mean": 0.01, "top1_agreement": 0.9,
           "worst_family": "code", "worst_family_match": 0.5, "serves_on": ["cpu"]}
    md = render_markdown([row]).splitlines()
    assert md[2] == "| abc | w4\\|x | cpu | 3.00x | - | 1.50x | +2.35% | 0.0100 | 90.0% | code 0.50 | - | cpu |"
    row.update(flip_rate=0.075, flip_worst_task="arc_easy")
    assert render_markdown([row]).splitlines()[2].endswith("| code 0.50 | 7.5% (arc_easy) | cpu |")
