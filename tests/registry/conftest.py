"""Registry fixtures: a fresh registry database per test, on SQLite and on PostgreSQL.

PostgreSQL runs in a throwaway cluster on loopback for the session (pg_cluster.py); where one
cannot be started, every PostgreSQL test is skipped with the reason (shown in pytest's
summary, -ra).
"""

from __future__ import annotations

import uuid

import pytest
from pg_cluster import start_cluster
from sqlalchemy.engine import make_url

# A small in-domain run of TinyStories-656K (tests/conftest.py's TINY_RUN; pytest imports this
# file as `conftest` too, so the tests here cannot import that one) with small measurement
# sizes: the tests in this folder run the whole pipeline several times on two cores.
SMALL_RUN = ["model=tinystories-656k", "data@eval.data=tinystories", "eval.windows=8", "eval.seq_len=256",
             "target=cpu", "eval.tasks.prompts=1", "eval.tasks.new_tokens=8", "eval.tasks.reference_tokens=16",
             "eval.speed.prompt_len=32", "eval.speed.new_tokens=2", "eval.speed.warmup=0", "eval.speed.repeats=1"]


@pytest.fixture(scope="session")
def postgres_server():
    cluster = start_cluster()
    if isinstance(cluster, str):
        print(f"\nPostgreSQL registry tests skipped: {cluster}")
        pytest.skip(f"PostgreSQL registry tests skipped: {cluster}")
    yield cluster
    cluster.stop()


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
    with psycopg.connect(**admin, autocommit=True) as conn:
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
