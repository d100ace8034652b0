"""Connecting to the registry database and bringing its schema up to date.

SQLite (the default, paths.root/registry.db) runs in WAL mode with a busy timeout, so
readers never block the writer and concurrent writers wait instead of failing. pysqlite's
own transaction handling is turned off and BEGIN is emitted explicitly (SQLAlchemy's
documented recipe), so a transaction that will write can take the write lock up front with
BEGIN IMMEDIATE (`write_session`) instead of failing on a lock upgrade half way through.
PostgreSQL (postgresql://...) uses psycopg 3.

The schema is migrated with Alembic on first use, inside one transaction that first takes a
database-wide lock (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so several
processes starting at once migrate it exactly once. The version table is
qrecipe_alembic_version, so the registry never mistakes MLflow's alembic_version for its own.
"""

from __future__ import annotations

import importlib.util
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from qrecipe.engine.errors import QRecipeError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "qrecipe_alembic_version"
_ADVISORY_LOCK_KEY = 0x71726563  # "qrec": serialises registry migrations on PostgreSQL
_SQLITE_BUSY_MS = 60_000
_WRITE = "qrecipe_write"

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


class RegistryError(QRecipeError):
    """The registry database cannot be reached or used."""


def default_url(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'registry.db'}"


def registry_url(settings) -> str:
    """The registry a config names: registry.url, else SQLite under paths.root."""
    return settings.registry.url or default_url(settings.paths.root)


def normalize_url(url: str) -> str:
    """postgresql://... means psycopg 3 unless a driver is named (psycopg2 is not a dependency)."""
    u = make_url(url)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _sqlite_engine(url: str) -> Engine:
    db = make_url(url).database
    if db and db != ":memory:":
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def get_engine(url: str) -> Engine:
    """One engine per URL per process (each holds a connection pool)."""
    url = normalize_url(url)
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite"):
                _engines[url] = _sqlite_engine(url)
            else:
                _engines[url] = create_engine(url, pool_pre_ping=True)
        return _engines[url]


def alembic_config(engine: Engine, connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def _head(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def _current(conn) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head under a database-wide lock (idempotent)."""
    from alembic import command

    with engine.connect() as probe:
        if _current(probe) == _head(engine):
            return
    with engine.connect().execution_options(**{_WRITE: True}) as conn:
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            command.upgrade(alembic_config(engine, conn), "head")


class NoRegistry(RegistryError):
    """A command that only reads found no registry where it looked (and created none)."""


def _check_exists(url: str) -> None:
    """Raise NoRegistry unless url holds a registry (an SQLite file, or a database with its tables)."""
    u = make_url(normalize_url(url))
    where = u.render_as_string(hide_password=True)
    if u.drivername.startswith("sqlite"):
        if not u.database or u.database == ":memory:" or not Path(u.database).is_file():
            raise NoRegistry(f"no registry at {u.database or where}: nothing has been recorded there yet (`qrecipe "
                             f"run` creates it); to read another, set QRECIPE_HOME, paths.root=DIR or registry.url")
        return
    from sqlalchemy import inspect

    try:
        has = inspect(get_engine(url)).has_table(VERSION_TABLE)
    except Exception as e:  # noqa: BLE001 - one line naming the setting
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RegistryError(f"registry.url: cannot reach the registry at {where} ({first})") from e
    if not has:
        raise NoRegistry(f"no registry in the database {where}: it holds no qrecipe tables (`qrecipe run` with this "
                         f"registry.url creates them)")


def open_registry(url: str, create: bool = True) -> Engine:
    """The engine for url, its schema migrated (once per process). With create=False (commands
    that only read), a registry that does not exist yet is not created: NoRegistry says where
    it was looked for."""
    if not create and normalize_url(url) not in _migrated:
        _check_exists(url)
    engine = get_engine(url)
    key = normalize_url(url)
    if key not in _migrated:
        try:
            migrate(engine)
        except QRecipeError:
            raise
        except Exception as e:  # noqa: BLE001 - turn driver errors into one line naming the setting
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RegistryError(f"registry.url: cannot open the registry at "
                                f"{engine.url.render_as_string(hide_password=True)} ({first}); check the URL and "
                                f"that the database is reachable, or set registry=off") from e
        _migrated.add(key)
    return engine


def close_registry(url: str) -> None:
    """Close url's connections (its engine is created again on next use)."""
    key = normalize_url(url)
    with _lock:
        engine = _engines.pop(key, None)
        _migrated.discard(key)
    if engine is not None:
        engine.dispose()


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes SQLite's write lock at BEGIN; commits on success."""
    with Session(engine.execution_options(**{_WRITE: True}), expire_on_commit=False) as session:
        with session.begin():
            yield session
