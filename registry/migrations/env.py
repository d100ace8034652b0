"""Alembic environment: runs on the connection registry.db.migrate passes in (already inside
the transaction that holds the migration lock), or on sqlalchemy.url when run by hand."""

from alembic import context
from sqlalchemy import create_engine

from qrecipe.registry.models import Base

config = context.config
version_table = config.attributes.get("version_table", "qrecipe_alembic_version")


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=version_table,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        _run(conn)
