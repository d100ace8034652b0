"""Alembic migrations of the registry schema (applied by registry.db.migrate on first use)."""
