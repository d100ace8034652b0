"""Candidates, units and bits per weight on SmolLM2-135M's shapes (meta device, no weights):
scales and zeros are counted, group 128 is left out where it does not divide in_features,
fused q/k/v and gate/up are one unit each, and a bad candidate fails in one sentence."""

from __future__ import annotations

import pytest
from model_shapes import SMOLLM2_SHAPE, write_llama_config

from qrecipe.engine.errors import ConfigError
from qrecipe.engine.search.accounting import bits_per_weight, fixed_bytes, unit_options
from qrecipe.engine.search.candidates import candidate_set, parse_candidate
from qrecipe.engine.search.units import build_units


@pytest.fixture
def smollm2(settings, tmp_path):
    from qrecipe.engine.planning import model_info

    folder = write_llama_config(tmp_path / "smollm2-shape", **SMOLLM2_SHAPE)
    s = settings("model=hf", f"model.path={folder}", "target=h100")
    return s, model_info(s)


@pytest.mark.parametrize("text, shape, bpw", [
    ("W4A16:g64", (576, 576), 4.25),                       # 4 bits + an fp16 scale per 64
    ("W4A16:g64:asym", (576, 576), 4.375),                 # + a uint8 zero per 64
    ("W4A16:g32", (576, 576), 4.5),
    ("W4A16:g128", (576, 1536), 4.125),
    ("W8A16", (576, 576), 8 + 16 / 576),                   # per-channel: one fp16 scale per row
    ("W4A16:channel", (192, 576), 4 + 16 / 576),
    ("FP8", (576, 576), 8 + 32 / 576),                     # fp32 scale per row
    ("keep", (576, 576), 16),                              # the target's bf16
])
def test_bits_per_weight_count_scales_and_zeros(text, shape, bpw):
    c = parse_candidate(text, "search.candidates[0]")
    n, k = shape
    assert bits_per_weight(c.nbytes(n, k, 2), n * k) == pytest.approx(bpw, abs=1e-12)


def test_units_fuse_shards_and_group_128_is_left_out_per_unit(smollm2):
    s, info = smollm2
    units = build_units(s.recipe, info)
    assert len(units) == 30 * 4  # q/k/v, o, gate/up, down per layer; the tied lm_head is kept
    kinds = {u.kind_label for u in units}
    assert kinds == {"self_attn.q/k/v_proj", "self_attn.o_proj", "mlp.gate/up_proj", "mlp.down_proj"}
    candidates, notes = candidate_set(None, s.target, "rtn", {})
    assert [c.label for c in candidates] == ["keep", "W8A16:channel", "W4A16:g128", "W4A16:g64", "W4A16:g32", "FP8"]
    options, more = unit_options(units, candidates, s.target)
    g128 = {u.kind_label for u in units if any(o.candidate.label == "W4A16:g128" for o in options[u.name])}
    assert g128 == {"mlp.down_proj"}  # in_features 1536; the others read 576
    assert more == ["W4A16:g128: not for 90 unit(s) (group size 128 does not divide in_features 576)"]
    total = fixed_bytes(info, units, s.target) + sum(max(o.nbytes for o in options[u.name] if o.candidate.keeps)
                                                     for u in units)
    from qrecipe.engine.planning import build_plan

    assert total == build_plan(s)[0].totals()["weight_bytes_before"]  # same accounting as the plan


def test_fp8_is_in_the_default_set_only_where_the_target_has_it(settings):
    candidates, notes = candidate_set(None, settings("target=cpu").target, "rtn", {})
    assert "FP8" not in [c.label for c in candidates] and notes == ["FP8 left out: target cpu lacks fp8"]
    with pytest.raises(ConfigError, match=r"search.candidates\[1\]: FP8 needs fp8, which target cpu lacks"):
        candidate_set(("W8A16", "FP8"), settings("target=cpu").target, "rtn", {})


@pytest.mark.parametrize("text, message", [
    ("W5A16", r"unknown scheme 'W5A16'"),
    ("W4A16:g48", r"W4A16 takes group sizes g32, g64, g128 or channel"),
    ("FP8:asym", r"FP8 is symmetric only"),
    ("W4A16:g64:awkward", r"unknown option 'awkward'"),
    ("keep:g64", r"keep takes no options"),
    ("W8A8:awq", r"awq does not apply to W8A8"),
])
def test_bad_candidates_name_the_field(text, message):
    with pytest.raises(ConfigError, match=r"^search.candidates\[0\]: .*" + message):
        parse_candidate(text, "search.candidates[0]")


def test_a_candidate_may_name_its_algorithm():
    c = parse_candidate("W4A16:g64:gptq", "x", algorithm="rtn")
    assert (c.algorithm, c.label, c.slug) == ("gptq", "W4A16:g64:gptq", "w4a16_g64_gptq")
    assert parse_candidate("W4A16:g64", "x", algorithm="awq", args={"grid": 5}).label == "W4A16:g64:awq(grid=5)"
