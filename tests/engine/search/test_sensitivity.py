"""Sensitivities and the found allocation on a real model and real text (TinyStories-656K on
TinyStories): the exact measurement from cached block inputs equals quantizing the unit in the
whole model; the Fisher proxy ranks like the exact KL; fused groups get one scheme; the budget
holds; at the size of uniform W4A16 g64 the found mix has lower KL than uniform W4A16 g64 on
text the search did not see; a bad budget fails in one sentence before any weights load."""

from __future__ import annotations

import copy

import pytest
from conftest import TINY_RUN

from qrecipe.engine.errors import ConfigError

SEARCH = TINY_RUN + ["data@calib.data=tinystories", "calib.seed=1", "search.samples=8", "search.seq_len=128",
                     "search.front_points=0"]


def _settings(settings, tmp_path, *extra):
    from qrecipe.engine.search.spec import with_search_group

    return settings(*with_search_group([*SEARCH, f"search.output={tmp_path / 'found.yaml'}", *extra]))


@pytest.fixture(scope="module")
def measured(tiny_model):
    """Exact and proxy sensitivities of every unit and default candidate, measured once."""
    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.data import calibration_windows
    from qrecipe.engine.search import prepare
    from qrecipe.engine.search.cache import EXACT_KL, FISHER, HESSIAN
    from qrecipe.engine.search.sensitivity import build_slice, measure
    from qrecipe.engine.search.spec import with_search_group

    s = load_settings(compose(with_search_group([*SEARCH, "search.budget.bits_per_weight=5"])))
    p = prepare(s)
    model, tok = tiny_model
    import dataclasses

    windows = calibration_windows(tok, dataclasses.replace(s.calib, samples=8, seq_len=128))
    options = {u.name: [o.candidate for o in p.options[u.name]] for u in p.units}
    stored = []
    m = measure(model, windows, 4, s.eval.kl_topk, p.info.model_type, p.units, options, {EXACT_KL, FISHER, HESSIAN},
                {}, 0, stored.append, lambda f, msg: None)
    return p, m, windows, build_slice(model, windows, 4, s.eval.kl_topk, cache_inputs=True), stored


def test_exact_from_cached_block_inputs_equals_quantizing_the_whole_model(tiny_model, measured):
    from qrecipe.engine.evaluate.divergence import compare_pass
    from qrecipe.engine.modules import QuantLinear, get_module, set_module
    from qrecipe.engine.quant.rtn import rtn_quantize
    from qrecipe.engine.search.cache import EXACT_KL

    p, m, windows, slc, _ = measured
    model, _ = tiny_model
    for unit in (p.units[0], p.units[-1]):  # q/k/v of block 0 (three layers), down of the last block
        cand = next(o.candidate for o in p.options[unit.name] if o.candidate.label == "W4A16:g32")
        whole = copy.deepcopy(model)
        for li in unit.layers:
            lin = get_module(whole, li.name)
            qw = rtn_quantize(lin.weight.data, cand.scheme_obj, cand.params)
            set_module(whole, li.name, QuantLinear.from_quantized(lin, cand.scheme, cand.params, qw))
        direct = compare_pass(whole, windows, slc.reference, 4, progress=False).kl_mean
        assert m.values[(EXACT_KL, unit.name, cand.label)] == pytest.approx(direct, rel=1e-5, abs=1e-9)
        assert direct > 0


def test_fisher_proxy_ranks_like_the_exact_kl(measured):
    from scipy.stats import spearmanr

    from qrecipe.engine.search.cache import EXACT_KL, FISHER

    p, m, *_ = measured
    pairs = [(u.name, o.candidate.label) for u in p.units for o in p.options[u.name] if not o.candidate.keeps]
    exact = [m.values[(EXACT_KL, *k)] for k in pairs]
    fisher = [m.values[(FISHER, *k)] for k in pairs]
    assert spearmanr(exact, fisher).statistic > 0.85  # measured 0.96 on 32 (unit, candidate) pairs
    # in nats, like the KL it predicts: within a factor of 3 in total
    assert 1 / 3 < sum(fisher) / sum(exact) < 3
    for u in p.units:  # 8-bit costs far less than any 4-bit on every unit
        w8 = m.values[(EXACT_KL, u.name, "W8A16:channel")]
        assert all(w8 < m.values[(EXACT_KL, u.name, o.candidate.label)] / 10 for o in p.options[u.name]
                   if o.candidate.scheme == "W4A16")


def test_entries_are_stored_as_they_are_measured(measured):
    p, m, _, _, stored = measured
    entries = {k for batch in stored for k in batch}
    assert entries <= set(m.values)
    non_keep = sum(1 for u in p.units for o in p.options[u.name] if not o.candidate.keeps)
    assert len(entries) == 4 * non_keep  # exact KL and NLL change, Fisher and Hessian per (unit, candidate)
    assert m.computed == 2 * non_keep  # one exact pass and one proxy evaluation each
    assert len([b for b in stored if b]) > 1  # block by block, not once at the end


def test_found_mix_beats_uniform_w4a16_g64_at_its_size(settings, tmp_path, tiny_model):
    """Exact sensitivities at uniform W4A16 g64's size; both measured on held-out TinyStories text."""
    from qrecipe.engine.planning import build_plan
    from qrecipe.engine.search import MemoryCache, find, measure_points
    from qrecipe.engine.search.accounting import bits_per_weight

    s = _settings(settings, tmp_path, "search.budget.bits_per_weight=4.25", "search.sensitivity=exact",
                  "search.run=false")
    r = find(s, MemoryCache())
    p = r.prepared
    assert r.exact and r.chosen.bits_per_weight <= 4.25
    plan = build_plan(_settings(settings, tmp_path, f"recipe={p.output}", "search.budget.bits_per_weight=4.25"))[0]
    searched = [plan.layer(li.name) for u in p.units for li in u.layers]
    assert bits_per_weight(sum(lp.bytes_after for lp in searched), p.numel) <= 4.25  # the plan agrees
    for u in p.units:  # a fused group is one unit: one scheme for all its members
        assert len({(plan.layer(li.name).scheme, plan.layer(li.name).group_size) for li in u.layers}) == 1
    assert len(p.units) == 8 and sum(len(u.layers) for u in p.units) == 14
    uniform = copy.deepcopy(r.chosen)
    uniform.node = {"name": "uniform", "base": {"scheme": "W4A16", "group_size": 64}, "rules": {
        "all": {"match": "class:Linear"}}}
    uniform.chosen = False
    measure_points(s, p, [r.chosen, uniform])
    assert r.chosen.measured["kl_mean"] < uniform.measured["kl_mean"]


@pytest.mark.parametrize("extra, message", [
    ([], r"^search.budget: set exactly one of bits_per_weight, weight_bytes, max_kl, max_ppl_increase_pct "
         r"\(e.g. search.budget.bits_per_weight=4.5\); got none$"),
    (["search.budget.bits_per_weight=4.5", "search.budget.max_kl=0.1"],
     r"^search.budget: set exactly one of .*; got search.budget.bits_per_weight and search.budget.max_kl$"),
    (["search.budget.bits_per_weight=3"], r"^search.budget.bits_per_weight=3 is below the smallest mix the "
                                          r"candidates allow \(4.125 bits per weight\); raise it"),
    (["search.budget.bits_per_weight=-1"], r"^search.budget.bits_per_weight: must be positive"),
    (["search.budget.max_kl=0.1", "search.proxy=hessian"], r"^search.budget.max_kl: the hessian proxy is an output "
                                                           r"error, not a KL"),
    (["search.budget.weight_bytes=1e6"], r"^search.budget.weight_bytes: expected an integer"),
    (["search.budget.bits_per_weight=5", "search.sensitivity=fast"], r"^search.sensitivity: expected exact or proxy"),
])
def test_bad_budgets_fail_in_one_sentence_before_weights_load(settings, tmp_path, extra, message, monkeypatch):
    import qrecipe.engine.models.loading as loading
    from qrecipe.engine.search import prepare

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=message) as e:
        prepare(_settings(settings, tmp_path, *extra))
    assert "\n" not in str(e.value)


def test_an_existing_output_file_is_refused(settings, tmp_path):
    from qrecipe.engine.search import prepare

    (tmp_path / "found.yaml").write_text("name: mine\n")
    with pytest.raises(ConfigError, match=r"^search.output: .*found.yaml already exists; choose a new file"):
        prepare(_settings(settings, tmp_path, "search.budget.bits_per_weight=5"))
    assert (tmp_path / "found.yaml").read_text() == "name: mine\n"


@pytest.mark.parametrize("name, message", [
    ("my search.yaml", r"^search.output: 'my search.yaml' is not a recipe file name \(1 to 64 letters"),
    ("x" * 65 + ".yaml", r"^search.output: 'x{65}.yaml' is not a recipe file name"),
    ("found.txt", r"^search.output: .*found.txt should end in .yaml"),
])
def test_the_output_file_name_must_be_a_recipe_name(settings, tmp_path, name, message):
    """The file's stem is the recipe's name, which names its run folders (engine/recipe/schema.py)."""
    from qrecipe.engine.config import compose, load_settings
    from qrecipe.engine.search import prepare
    from qrecipe.engine.search.spec import with_search_group

    cfg = compose(with_search_group([*SEARCH, "search.budget.bits_per_weight=5", f"search.output={tmp_path / name}"]))
    with pytest.raises(ConfigError, match=message):
        prepare(load_settings(cfg))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_calibration_file_is_refused_before_weights_load(settings, tmp_path, monkeypatch):
    """A search always reads its calibration slice, so calib.data is checked as a calibrated run's is."""
    import qrecipe.engine.models.loading as loading
    from qrecipe.engine.search import prepare

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=r"^calib.data"):
        prepare(_settings(settings, tmp_path, "search.budget.bits_per_weight=5",
                          f"calib.data.path={tmp_path / 'missing.txt'}"))


def test_the_fisher_pass_leaves_the_model_as_it_was(measured, tiny_model):
    model, _ = tiny_model
    params = list(model.parameters())
    assert all(p.requires_grad for p in params) and all(p.grad is None for p in params)
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_grid_shortcut_prices_rtn_as_the_stored_format_does(measured, tiny_model):
    """RTN weight-only candidates are priced from the weight grid's round trip; quantizing the
    unit into QuantLinears (what the checkpoint stores) gives the same output error."""
    from qrecipe.engine.calibration.capture import run_block, with_hidden
    from qrecipe.engine.calibration.stats import attach_stats
    from qrecipe.engine.modules import get_module
    from qrecipe.engine.search.sensitivity import unit_proxy

    p, m, windows, slc, _ = measured
    prefix = f"{slc.blocks_name}.1"
    block = slc.blocks[1]
    units = [u for u in p.units if u.block == 1]
    modules = {li.name: get_module(block, li.name[len(prefix) + 1:]) for u in units for li in u.layers}
    stats, handles = attach_stats(modules, {n: {"hessian"} for n in modules}, [])
    calls = [with_hidden(slc.calls[j], slc.inputs[1][j]) for j in range(len(slc.calls))]
    for call in calls:
        run_block(block, call)
    for h in handles:
        h.remove()
    for u in units:
        for o in p.options[u.name]:
            if o.candidate.keeps:
                continue
            args = (block, prefix, p.info.model_type, u, o.candidate, stats, lambda root: None, None)
            assert unit_proxy(*args)["hessian"] == pytest.approx(unit_proxy(*args, through_modules=True)["hessian"],
                                                                 rel=1e-4)
