"""The registry database on SQLite and PostgreSQL: migrations on first use (also when several
processes start at once), variant identity and re-runs, run outcomes, the append-only trail."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError

from qrecipe.registry.db import RegistryError, VERSION_TABLE, open_registry, read_session, write_session
from qrecipe.registry.models import Base, Promotion, Variant, VariantRun
from qrecipe.registry.record import VariantIdentity, begin_run, fail_run, finish_run, record_baseline

TABLES = {"base_models", "baselines", "variants", "variant_runs", "promotions"}


def _ident(recipe_hash: str = "r1", plan_hash: str = "p1", target: str = "cpu") -> VariantIdentity:
    return VariantIdentity(model="tiny", model_source="/models/tiny", model_type="llama", target=target,
                           recipe_name="w8a16", recipe_hash=recipe_hash, plan_hash=plan_hash,
                           scheme_mix="W8A16:14", requires=())


def test_schema_is_created_on_first_use_and_matches_the_models(registry_url):
    engine = open_registry(registry_url)
    assert TABLES | {VERSION_TABLE} <= set(inspect(engine).get_table_names())
    open_registry(registry_url)  # idempotent
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)] == []


def _open_in_child(url: str) -> str:
    from qrecipe.registry.db import open_registry

    with open_registry(url).connect() as conn:
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()


def test_processes_starting_together_migrate_once(registry_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_open_in_child, [registry_url] * 4)
    assert len(set(versions)) == 1
    with open_registry(registry_url).connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1


def test_a_rerun_is_a_new_run_of_the_same_variant(registry_url):
    engine = open_registry(registry_url)
    first = begin_run(engine, _ident(), "cpu", "0.1.0", "abc")
    second = begin_run(engine, _ident(), "cpu", "0.1.0", "abc")
    other = begin_run(engine, _ident(plan_hash="p2"), "cpu", "0.1.0", None)
    assert first.variant_id == second.variant_id != other.variant_id
    assert (first.run_number, second.run_number, second.is_rerun) == (1, 2, True)
    with read_session(engine) as s:
        assert s.scalar(select(Variant).where(Variant.id == first.variant_id)).runs_count == 2
        assert len(s.scalars(select(Variant)).all()) == 2


def _begin_in_child(url: str) -> int:
    from qrecipe.registry.db import open_registry

    return begin_run(open_registry(url), _ident(), "cpu", "0.1.0", None).run_number


def test_concurrent_runs_of_one_variant_get_distinct_numbers(registry_url):
    open_registry(registry_url)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        numbers = pool.map(_begin_in_child, [registry_url] * 6)
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


def test_success_and_failure_are_recorded(registry_url):
    engine = open_registry(registry_url)
    run = begin_run(engine, _ident(), "cpu", "0.1.0", None)
    fail_run(engine, run, "RuntimeError: boom", "mlflow-1")
    with read_session(engine) as s:
        assert s.get(Variant, run.variant_id).status == "failed"
        assert s.get(VariantRun, run.run_id).status == "failed"
    baseline = record_baseline(engine, "tiny", "key1", "cpu", "float32", {"windows": 8}, {"ppl": {"t": 3.0}}, "/c")
    assert record_baseline(engine, "tiny", "key1", "cpu", "float32", {}, {}, "/c") == baseline
    again = begin_run(engine, _ident(), "cpu", "0.1.0", None)
    finish_run(engine, again, {"ppl": 3.1, "kl_mean": 0.01}, "/runs/x", "mlflow-2", baseline)
    later = begin_run(engine, _ident(), "cpu", "0.1.0", None)
    fail_run(engine, later, "KeyboardInterrupt: ", None)
    with read_session(engine) as s:
        v = s.get(Variant, run.variant_id)
        assert (v.status, v.metrics["ppl"], v.output_dir, v.mlflow_run_id) == ("measured", 3.1, "/runs/x", "mlflow-2")
        assert [r.status for r in s.scalars(select(VariantRun).order_by(VariantRun.run_number))] == \
            ["failed", "succeeded", "failed"]
        assert s.get(VariantRun, again.run_id).baseline_id == baseline


def test_promotions_are_append_only(registry_url):
    engine = open_registry(registry_url)
    run = begin_run(engine, _ident(), "cpu", "0.1.0", None)
    with write_session(engine) as s:
        model_id = s.get(Variant, run.variant_id).base_model_id
        s.add(Promotion(base_model_id=model_id, target="cpu", action="promote", variant_id=run.variant_id,
                        actor="test", reason="first"))
    for statement in ("UPDATE promotions SET reason = 'rewritten'", "DELETE FROM promotions"):
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with read_session(engine) as s:
        assert [p.reason for p in s.scalars(select(Promotion))] == ["first"]


def test_an_unreachable_database_is_one_clear_error():
    with pytest.raises(RegistryError, match=r"^registry\.url: cannot open the registry at postgresql\+psycopg://"):
        open_registry("postgresql://nobody:secret@127.0.0.1:9/none?connect_timeout=2")
