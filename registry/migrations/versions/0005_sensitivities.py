"""Search: per-unit sensitivities (the cache `qrecipe search` reuses) and the searches themselves.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sensitivity_scopes",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("fingerprint", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_sensitivity_scopes_model", "sensitivity_scopes", ["model"])
    op.create_table(
        "sensitivities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scope_key", sa.String(32), sa.ForeignKey("sensitivity_scopes.key"), nullable=False),
        sa.Column("measure", sa.String(32), nullable=False),
        sa.Column("unit", sa.String(300), nullable=False),
        sa.Column("candidate", sa.String(200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("scope_key", "measure", "unit", "candidate", name="uq_sensitivities_entry"),
    )
    op.create_table(
        "searches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("recipe_name", sa.String(200), nullable=False),
        sa.Column("recipe_path", sa.Text(), nullable=False),
        sa.Column("budget", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("predicted", JSON, nullable=False),
        sa.Column("points", JSON, nullable=False),
        sa.Column("spearman", JSON, nullable=False),
        sa.Column("seconds", JSON, nullable=False),
        sa.Column("variant_id", sa.String(32), sa.ForeignKey("variants.id"), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_searches_model", "searches", ["base_model_id", "id"])


def downgrade() -> None:
    op.drop_table("searches")
    op.drop_table("sensitivities")
    op.drop_table("sensitivity_scopes")
