"""Stage pointers: the variant that holds a stage (production) per base model and target.

One row per (base model, target, stage), enforced by a unique constraint; promotions and
rollbacks move it in the same transaction that appends their promotions row, so the trail
and the pointer never disagree and two concurrent promotions cannot both win.
mirrored_promotion_id records how far the MLflow Model Registry mirror has caught up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stage_pointers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(50), nullable=False),
        sa.Column("variant_id", sa.String(32), sa.ForeignKey("variants.id"), nullable=False),
        sa.Column("promotion_id", sa.Integer(), sa.ForeignKey("promotions.id"), nullable=False),
        sa.Column("mirrored_promotion_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("base_model_id", "target", "stage", name="uq_stage_pointers_slot"),
    )


def downgrade() -> None:
    op.drop_table("stage_pointers")
