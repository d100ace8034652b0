"""Promotion in the registry, on SQLite and PostgreSQL: gates judged against recorded metrics,
refusals that write nothing, forced promotions with their reason, rollback, the append-only
trail, one holder per (model, target, stage) as a database constraint, and concurrent
promotions from several processes at once."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from qrecipe.registry.db import RegistryError, open_registry, read_session, write_session
from qrecipe.registry.gates import GatePolicy
from qrecipe.registry.models import Promotion, StagePointer, Variant
from qrecipe.registry.promotion import PromotionError, PromotionRefused, promote, rollback
from qrecipe.registry.promotion_history import history
from qrecipe.registry.record import VariantIdentity, begin_run, fail_run

GATES = {"max_ppl_increase_pct": 3.0, "max_kl_mean": 0.05, "min_top1_agreement": 0.9,
         "min_task_agreement": {"prose": 0.5}}
POLICY = GatePolicy(base=GATES)  # validated in test_promotion_gates.py; building it here keeps torch out of the workers
GOOD = {"ppl_delta_pct": 0.4, "kl_mean": 0.01, "top1_agreement": 0.97, "task.prose.greedy_match": 0.83}
BAD = {"ppl_delta_pct": 7.5, "kl_mean": 0.2, "top1_agreement": 0.6, "task.prose.greedy_match": 0.1}


def _ident(name: str) -> VariantIdentity:
    return VariantIdentity(model="tiny", model_source="/models/tiny", model_type="llama", target="cpu",
                           recipe_name=name, recipe_hash=f"r-{name}", plan_hash="p", scheme_mix="W8A16:14",
                           requires=())


def _rows(engine) -> list[Promotion]:
    with read_session(engine) as s:
        return list(s.scalars(select(Promotion).order_by(Promotion.id)))


def _holder(engine, target: str = "cpu") -> str | None:
    with read_session(engine) as s:
        return s.scalar(select(StagePointer.variant_id).where(StagePointer.target == target))


def test_promote_replace_and_roll_back(registry_url, measured_variant):
    engine = open_registry(registry_url)
    a, b, c = (measured_variant(engine, n, GOOD) for n in ("a", "b", "c"))
    other = measured_variant(engine, "a", GOOD, target="h100")

    first = promote(engine, a[:6], actor="alice", gates=POLICY)
    assert (first.changed, first.variant_id, first.previous_variant_id) == (True, a, None)
    assert first.alias == "production-cpu"
    assert [c.passed for c in first.checks] == [True] * 4 and first.mirror == "off"
    assert promote(engine, b, actor="bob", gates=POLICY, reason="smaller").previous_variant_id == a
    again = promote(engine, b, actor="bob", gates=POLICY)  # already serving: nothing written
    assert not again.changed and len(_rows(engine)) == 2
    promote(engine, c, actor="carol", gates=POLICY)
    promote(engine, other, actor="alice", gates=POLICY)  # another target: its own slot
    assert (_holder(engine), _holder(engine, "h100")) == (c, other)

    back = rollback(engine, "tiny", "cpu", actor="dave", reason="latency regression")
    assert (back.action, back.variant_id, back.previous_variant_id) == ("rollback", b, c)
    assert rollback(engine, "tiny", "cpu", actor="dave").variant_id == a  # a stack: further back, not a toggle
    with pytest.raises(PromotionError, match="nothing to roll back to: .* is the first production variant"):
        rollback(engine, "tiny", "cpu", actor="dave")
    with pytest.raises(PromotionError, match="no production variant of tiny for target 'a100'.*targets with one: "
                                             "cpu, h100"):
        rollback(engine, "tiny", "a100", actor="dave")
    with pytest.raises(RegistryError, match="model 'nope': no such base model"):
        rollback(engine, "nope", "cpu", actor="dave")
    assert _holder(engine) == a

    trail = history(engine, "tiny", target="cpu")
    assert [(e.action, e.previous_variant_id, e.variant_id, e.actor) for e in trail] == [
        ("promote", None, a, "alice"), ("promote", a, b, "bob"), ("promote", b, c, "carol"),
        ("rollback", c, b, "dave"), ("rollback", b, a, "dave")]
    assert trail[1].reason == "smaller" and trail[3].reason == "latency regression"
    assert trail[0].gates["passed"] and trail[0].gates["checks"][1] == {
        "gate": "max_kl_mean", "metric": "kl_mean", "op": "<=", "threshold": 0.05, "value": 0.01, "noise": None,
        "passed": True}
    assert trail[3].gates is None and len(history(engine, "tiny")) == 6
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(StagePointer)) == 2


def test_failing_gates_refuse_with_the_numbers_and_write_nothing(registry_url, measured_variant):
    engine = open_registry(registry_url)
    good, bad = measured_variant(engine, "good", GOOD), measured_variant(engine, "bad", BAD)
    promote(engine, good, actor="alice", gates=POLICY)
    with pytest.raises(PromotionRefused) as refused:
        promote(engine, bad, actor="alice", gates=POLICY)
    message = str(refused.value)
    assert f"variant {bad} (bad of tiny for cpu) fails 4 quality gates: " in message
    for part in ("ppl_delta_pct 7.5 > max_ppl_increase_pct 3", "kl_mean 0.2 > max_kl_mean 0.05",
                 "top1_agreement 0.6 < min_top1_agreement 0.9",
                 "task.prose.greedy_match 0.1 < min_task_agreement.prose 0.5", "--force --reason"):
        assert part in message
    assert [c.gate for c in refused.value.checks] == ["max_ppl_increase_pct", "max_kl_mean", "min_top1_agreement",
                                                      "min_task_agreement.prose"]
    assert refused.value.exit_code == 3 and len(_rows(engine)) == 1 and _holder(engine) == good

    for blank in (None, "  "):
        with pytest.raises(PromotionError, match="--reason: a forced promotion needs a reason"):
            promote(engine, bad, force=True, reason=blank, actor="alice", gates=POLICY)
    assert len(_rows(engine)) == 1
    forced = promote(engine, bad, force=True, reason=" the 4-bit memory saving is worth it ", actor="alice",
                     gates=POLICY)
    assert forced.forced and forced.reason == "the 4-bit memory saving is worth it"
    row = _rows(engine)[-1]
    assert (row.forced, row.reason, row.gates["passed"], row.previous_variant_id) == \
        (True, forced.reason, False, good)
    assert [c["value"] for c in row.gates["checks"]] == [7.5, 0.2, 0.6, 0.1]
    # a forced promotion whose gates pass is an ordinary one (its reason is still kept)
    assert not promote(engine, good, force=True, reason="back", actor="alice", gates=POLICY).forced


def test_gates_judge_only_a_run_under_their_eval_protocol(registry_url, measured_variant):
    """A variant measured well on the full protocol and re-run badly on a tiny one: the gates
    judge the run of the protocol they are asked for, and refuse a variant without one."""
    from qrecipe.engine.evaluate.protocol import protocol_hash

    engine = open_registry(registry_url)
    full, tiny, other = ({"windows": w, "seq_len": n, "device": "cpu"} for w, n in ((32, 512), (1, 32), (8, 256)))
    v = measured_variant(engine, "v", GOOD, protocol=full)
    measured_variant(engine, "v", BAD, protocol=tiny)
    with pytest.raises(PromotionRefused, match="fails 4 quality gates"):  # its latest run is the bad tiny one
        promote(engine, v, actor="alice", gates=POLICY)
    with pytest.raises(PromotionRefused) as e:
        promote(engine, v, actor="alice", gates=POLICY, protocol=protocol_hash(other))
    assert f"has no successful run under eval protocol {protocol_hash(other)}, the one the gates judge" in str(e.value)
    assert f"{protocol_hash(tiny)} (" in str(e.value) and "--any-protocol" in str(e.value)
    assert _rows(engine) == []
    result = promote(engine, v, actor="alice", gates=POLICY, protocol=protocol_hash(full))
    assert result.changed and not result.forced and all(c.passed for c in result.checks)
    [row] = _rows(engine)
    assert row.gates["eval_protocol"] == {"required": protocol_hash(full), "judged_run": 1,
                                          "judged": protocol_hash(full)}


def test_unmeasured_unmetered_or_checkpointless_variants_are_refused_even_forced(registry_url, measured_variant):
    engine = open_registry(registry_url)
    failed = begin_run(engine, _ident("broken"), "cpu", "0.1.0", None)
    fail_run(engine, failed, "RuntimeError: boom", None)
    pending = begin_run(engine, _ident("running"), "cpu", "0.1.0", None).variant_id
    no_ckpt = measured_variant(engine, "nockpt", GOOD, checkpoint=False)
    unmeasured_family = measured_variant(engine, "nofamily", {k: v for k, v in GOOD.items() if "task" not in k})
    for variant, why in ((failed.variant_id, "has status failed: only a variant with a succeeded, measured run"),
                         (pending, "has status pending"), (no_ckpt, "has no checkpoint under .*run-nockpt-cpu-1")):
        with pytest.raises(PromotionRefused, match=why):
            promote(engine, variant, force=True, reason="please", actor="alice", gates=POLICY)
    with pytest.raises(PromotionRefused, match=r"task\.prose\.greedy_match not measured"):
        promote(engine, unmeasured_family, actor="alice", gates=POLICY)
    with pytest.raises(PromotionError, match="--stage: unknown stage 'prod'; choose one of production, staging"):
        promote(engine, no_ckpt, stage="prod", actor="alice", gates=POLICY)
    with pytest.raises(PromotionError, match="--actor"):
        promote(engine, unmeasured_family, actor=" ", gates=POLICY)
    assert _rows(engine) == []


def test_one_holder_per_slot_is_a_database_constraint(registry_url, measured_variant):
    engine = open_registry(registry_url)
    a, b = measured_variant(engine, "a", GOOD), measured_variant(engine, "b", GOOD)
    promote(engine, a, actor="alice", gates=POLICY)
    with pytest.raises(IntegrityError):
        with write_session(engine) as s:
            model_id = s.get(Variant, b).base_model_id
            s.add(StagePointer(base_model_id=model_id, target="cpu", stage="production", variant_id=b,
                               promotion_id=_rows(engine)[0].id))
    promote(engine, a, stage="staging", actor="alice", gates=POLICY)  # another stage is another slot
    with read_session(engine) as s:
        assert sorted(s.scalars(select(StagePointer.stage))) == ["production", "staging"]


def _promote_in_child(url: str, variant: str, barrier) -> int:
    from qrecipe.registry.db import open_registry
    from qrecipe.registry.promotion import promote

    engine = open_registry(url)
    barrier.wait(timeout=120)  # every process promotes at the same moment
    return promote(engine, variant, actor=f"worker-{variant[:4]}", gates=POLICY).promotion_id


CONCURRENT = 6


def test_concurrent_promotions_leave_one_holder_and_an_unbroken_trail(registry_url, measured_variant):
    engine = open_registry(registry_url)
    variants = [measured_variant(engine, f"v{i}", GOOD) for i in range(CONCURRENT)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(CONCURRENT) as pool:
        barrier = manager.Barrier(CONCURRENT)
        ids = pool.starmap(_promote_in_child, [(registry_url, v, barrier) for v in variants])
    rows = _rows(engine)
    assert sorted(ids) == [r.id for r in rows] and len(rows) == CONCURRENT  # each attempt: exactly one row
    assert sorted(r.variant_id for r in rows) == sorted(variants)
    # serialised: each promotion replaced the one committed just before it, none was lost
    assert [r.previous_variant_id for r in rows] == [None] + [r.variant_id for r in rows[:-1]]
    with read_session(engine) as s:
        [pointer] = s.scalars(select(StagePointer)).all()
    assert (pointer.variant_id, pointer.promotion_id) == (rows[-1].variant_id, rows[-1].id)


def test_the_registry_names_the_checkpoint_as_the_engine_writes_it():
    from qrecipe.engine.checkpoint import QUANT_FILE
    from qrecipe.registry.artifacts import CHECKPOINT_MARKER

    assert CHECKPOINT_MARKER == QUANT_FILE
