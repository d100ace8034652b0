"""The decision matrix: which shipped targets a variant can serve on, its cells (speedups with
their interval and noise, predictions), and like with like: only runs measured under one eval
protocol in a table, on a real SQLite registry."""

from __future__ import annotations

import pytest

from qrecipe.registry.compare import render, render_markdown, serves_on, shipped_targets
from qrecipe.registry.db import RegistryError, open_registry
from qrecipe.registry.protocols import choose_runs, select_runs
from qrecipe.registry.queries import find_variant


def test_targets_follow_capabilities_and_memory():
    targets = shipped_targets()
    assert {t.name for t in targets} == {"a100", "cpu", "h100", "h200", "l4"}
    assert serves_on([], 1e9, targets) == ["a100", "cpu", "h100", "h200", "l4"]  # weight-only: anywhere
    assert serves_on(["fp8"], 1e9, targets) == ["h100", "h200", "l4"]  # FP8 needs compute capability 8.9+
    assert serves_on(["int8"], 1e9, targets) == ["a100", "cpu", "h100", "h200", "l4"]
    # 200 GiB of weights: more than 8 x 24 GiB L4s hold at 90%, less than 8 x 80 GiB A100s/H100s
    big = serves_on([], 200 * 2**30, targets)
    assert "l4" not in big and {"a100", "h100"} <= set(big)


def test_markdown_matrix_has_one_row_per_variant():
    row = {"variant": "abc", "recipe": "w4|x", "target": "h100", "weight_reduction": 3.0, "decode_speedup": 0.49,
           "decode_speedup_low": 0.47, "decode_speedup_high": 0.52, "decode_noisy": False, "prefill_speedup": 1.02,
           "prefill_speedup_low": 0.95, "prefill_speedup_high": 1.10, "prefill_noisy": True,
           "speed_device_name": "cpu", "layers_on_fallback": 14, "predicted_for": "h100",
           "predicted_decode_speedup": 3.87, "predicted_prefill_speedup": 1.0, "ppl_delta_pct": 2.345,
           "kl_mean": 0.01, "top1_agreement": 0.9, "worst_family": "code", "worst_family_match": 0.5,
           "serves_on": ["cpu"]}
    md = render_markdown([row]).splitlines()
    assert md[2] == ("| abc | w4\\|x | h100 | 3.00x | 0.49x (0.47-0.52) | 1.02x (0.95-1.10) noisy | cpu (fallback) | "
                     "3.87x / 1.00x on h100 | - | +2.35% | 0.0100 | 90.0% | code 0.50 | - | cpu |")
    row.update({"lm_eval.flip_rate": 0.075, "lm_eval.worst_task": "arc_easy"})
    assert render_markdown([row]).splitlines()[2].endswith("| code 0.50 | 7.5% (arc_easy) | cpu |")


def _protocol(windows: int, seq_len: int) -> dict:
    return {"texts": [{"name": "wikitext2", "split": "test", "format": "auto", "field": "text",
                       "file": {"bytes": 1290000, "sha256": "5c01d2f4a1b3e8d7"}}], "seq_len": seq_len,
            "windows": windows, "kl_topk": 64, "tasks": None, "speed": None, "device": "cpu", "dtype": "float32"}


FULL, TINY = _protocol(32, 512), _protocol(1, 32)  # 16,352 tokens scored, and 31


@pytest.fixture
def registry(tmp_path, measured_variant):
    """a: measured on the full protocol, then re-run on a 31-token one; b: only on the tiny one;
    c: only on the full one."""
    from qrecipe.engine.evaluate.protocol import protocol_hash

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    engine = open_registry(url)
    a = measured_variant(engine, "a", {"ppl_delta_pct": 1.0, "weight_reduction": 2.0}, protocol=FULL)
    assert measured_variant(engine, "a", {"ppl_delta_pct": 9.0, "weight_reduction": 2.0}, protocol=TINY) == a
    b = measured_variant(engine, "b", {"ppl_delta_pct": 3.0, "weight_reduction": 3.5}, protocol=TINY)
    c = measured_variant(engine, "c", {"ppl_delta_pct": 0.5, "weight_reduction": 1.9}, protocol=FULL)
    return url, engine, {k: find_variant(engine, v) for k, v in {"a": a, "b": b, "c": c}.items()}, \
        protocol_hash(FULL), protocol_hash(TINY)


def test_a_rerun_under_another_protocol_does_not_replace_the_measurement(registry):
    _, engine, v, full, tiny = registry
    chosen = select_runs(engine, [v["a"], v["b"], v["c"]], full)
    assert [(m.variant.id, m.run.run_number, m.metrics["ppl_delta_pct"]) for m in chosen.rows] == [
        (v["a"].id, 1, 1.0), (v["c"].id, 1, 0.5)]  # a's 31-token re-run is not its figure here
    assert v["a"].metrics["ppl_delta_pct"] == 9.0  # though it is the variant's latest run
    assert list(chosen.missing) == [v["b"].id]
    text = render(chosen, shipped_targets())
    assert text.startswith(f"eval protocol {full}: wikitext2 (sha256 5c01d2f4) 32x512 tokens; no tasks; no speed; "
                           f"cpu float32\n")
    assert f"{v['b'].id}: no successful run under eval protocol {full}; measured under {tiny} (wikitext2 " in text


def test_compare_refuses_a_table_mixing_protocols_and_splits_on_request(registry, settings):
    url, engine, v, full, tiny = registry
    with pytest.raises(RegistryError) as refused:
        choose_runs(engine, settings(), [v["a"], v["b"]], protocol=full[:6], named=True)
    assert str(refused.value).startswith(f"variants compare: 1 of the named variants have no successful run under "
                                         f"eval protocol {full} (wikitext2 (sha256 5c01d2f4) 32x512 tokens;")
    assert "Pass --protocol HASH to compare them under one they share, or --any-protocol" in str(refused.value)
    split = choose_runs(engine, settings(), [v["a"], v["b"], v["c"]], any_protocol=True)
    assert {h: [m.variant.id for m in rows] for h, rows in split.by_protocol().items()} == {
        tiny: [v["a"].id, v["b"].id], full: [v["c"].id]}
    text = render(split, shipped_targets())
    assert text.startswith("These variants were measured under 2 different eval protocols, so they are in 2 tables: "
                           "compare figures only within one table.")
    assert f"eval protocol {tiny}: wikitext2 (sha256 5c01d2f4) 1x32 tokens" in text


def test_the_compare_command_refuses_and_the_default_protocol_is_the_configs_own(registry, capsys):
    from qrecipe.registry.cli import main

    url, engine, v, full, tiny = registry
    common = [f"registry.url={url}", "tracking=off"]
    assert main(["variants", "compare", v["a"].id, v["b"].id, "--protocol", full, *common]) == 2
    assert "have no successful run under eval protocol" in capsys.readouterr().err
    # no run was measured under this machine's default config: nothing is put in a table
    assert main(["variants", "compare", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no variant has a successful run under the requested eval protocol:")
    assert main(["variants", "compare", "--protocol", tiny, "--json", *common]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["protocol"] == tiny and [r["variant"] for r in shown["rows"]] == [v["a"].id, v["b"].id]
    assert [r["run_number"] for r in shown["rows"]] == [2, 1]
