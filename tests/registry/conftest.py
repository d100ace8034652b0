"""Registry fixtures: a fresh registry database per test, on SQLite and on PostgreSQL.

PostgreSQL runs in one throwaway cluster on loopback for the whole test session
(tests/throwaway_postgres.py), stopped when the session's process exits; where one cannot be
started, every PostgreSQL test is skipped with the reason (shown in pytest's summary, -ra).
"""

from __future__ import annotations

import atexit
import uuid

import pytest
from sqlalchemy.engine import make_url
from throwaway_postgres import Cluster, start_cluster


_cluster: Cluster | str | None = None


def _session_cluster() -> Cluster | str:
    """Started on first use, once per process (each importing module has its own fixture)."""
    global _cluster
    if _cluster is None:
        _cluster = start_cluster()
        if isinstance(_cluster, Cluster):
            atexit.register(_cluster.stop)
    return _cluster


@pytest.fixture(scope="session")
def postgres_server() -> Cluster:
    cluster = _session_cluster()
    if isinstance(cluster, str):
        print(f"\nPostgreSQL registry tests skipped: {cluster}")
        pytest.skip(f"PostgreSQL registry tests skipped: {cluster}")
    return cluster


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's server, dropped after the test."""
    import psycopg

    from qrecipe.registry.db import close_registry

    base = make_url(postgres_server.url)
    name = f"qrecipe_{uuid.uuid4().hex[:12]}"
    admin = dict(host=base.host, port=base.port, user=base.username, password=base.password, dbname=base.database)
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = base.set(database=name).render_as_string(hide_password=False)
    yield url
    close_registry(url)
    _drop_database(admin, name)


def _drop_database(admin: dict, name: str) -> None:
    """A plain DROP (which stops an autovacuum worker itself) while our own closed sessions wind down;
    FORCE only as the last try, since a role without pg_signal_backend may not terminate every process."""
    import time

    import psycopg

    with psycopg.connect(**admin, autocommit=True) as conn:
        for _ in range(40):
            try:
                conn.execute(f"DROP DATABASE IF EXISTS {name}")
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.25)
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        yield url
        from qrecipe.registry.db import close_registry

        close_registry(url)
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def measured_variant(tmp_path):
    """measured_variant(engine, name, metrics, target="cpu", checkpoint=True, protocol=None) -> variant
    id: a variant of model `tiny` recorded through the registry's own API as measured (under the
    eval protocol `protocol`, a dict, when given), its run folder holding a checkpoint marker (or
    none), for promotion and compare tests that need no real model. Called again with the same
    name, it records another run of that variant."""
    from qrecipe.registry.record import VariantIdentity, begin_run, finish_run

    def make(engine, name: str, metrics: dict, target: str = "cpu", checkpoint: bool = True,
             protocol: dict | None = None) -> str:
        ident = VariantIdentity(model="tiny", model_source="/models/tiny", model_type="llama", target=target,
                                recipe_name=name, recipe_hash=f"r-{name}", plan_hash="p", scheme_mix="W8A16:14",
                                requires=())
        run = begin_run(engine, ident, "cpu", "0.1.0", None, protocol)
        out = tmp_path / f"run-{name}-{target}-{run.run_number}"
        if checkpoint:
            (out / "model").mkdir(parents=True)
            (out / "model" / "qrecipe_quant.json").write_text("{}")
        finish_run(engine, run, metrics, str(out), None, None)
        return run.variant_id

    return make
