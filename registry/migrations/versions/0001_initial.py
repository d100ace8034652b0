"""Initial registry schema: base models, baselines, variants, their runs, promotions.

promotions is an append-only audit trail: triggers refuse UPDATE and DELETE on it, on SQLite
and on PostgreSQL alike, so history cannot be rewritten by a bug or by hand.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)

_PG_APPEND_ONLY = """
CREATE FUNCTION qrecipe_promotions_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'promotions is an append-only audit trail: % is not allowed', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER promotions_append_only BEFORE UPDATE OR DELETE ON promotions
    FOR EACH ROW EXECUTE FUNCTION qrecipe_promotions_append_only();
"""
_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER promotions_no_update BEFORE UPDATE ON promotions "
    "BEGIN SELECT RAISE(ABORT, 'promotions is an append-only audit trail: UPDATE is not allowed'); END",
    "CREATE TRIGGER promotions_no_delete BEFORE DELETE ON promotions "
    "BEGIN SELECT RAISE(ABORT, 'promotions is an append-only audit trail: DELETE is not allowed'); END",
]


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("model_type", sa.String(100), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "baselines",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=False, unique=True),
        sa.Column("device", sa.String(100), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("eval_settings", JSON, nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("cache_path", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "variants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("recipe_name", sa.String(200), nullable=False),
        sa.Column("recipe_hash", sa.String(64), nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("scheme_mix", sa.Text(), nullable=False),
        sa.Column("requires", JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("device", sa.String(100), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("runs_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.UniqueConstraint("base_model_id", "target", "recipe_hash", "plan_hash", name="uq_variants_identity"),
    )
    op.create_index("ix_variants_base_model_id", "variants", ["base_model_id"])
    op.create_table(
        "variant_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("variant_id", sa.String(32), sa.ForeignKey("variants.id"), nullable=False),
        sa.Column("run_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("baseline_id", sa.Integer(), sa.ForeignKey("baselines.id"), nullable=True),
        sa.Column("device", sa.String(100), nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("qrecipe_version", sa.String(50), nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.UniqueConstraint("variant_id", "run_number", name="uq_variant_runs_number"),
    )
    op.create_index("ix_variant_runs_variant_status", "variant_runs", ["variant_id", "status"])
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(50), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("variant_id", sa.String(32), sa.ForeignKey("variants.id"), nullable=True),
        sa.Column("previous_variant_id", sa.String(32), sa.ForeignKey("variants.id"), nullable=True),
        sa.Column("gates", JSON, nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_promotions_model_target", "promotions", ["base_model_id", "target", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
    else:
        for statement in _SQLITE_APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER promotions_append_only ON promotions")
        op.execute("DROP FUNCTION qrecipe_promotions_append_only()")
    op.drop_table("promotions")
    op.drop_table("variant_runs")
    op.drop_table("variants")
    op.drop_table("baselines")
    op.drop_table("base_models")
