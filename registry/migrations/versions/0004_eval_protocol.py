"""Eval protocol per run: how a run was measured (engine/evaluate/protocol.py), so that gates,
`variants compare` and `report` use only runs measured alike.

variant_runs.eval_protocol is the protocol's hash (indexed: "the latest successful run of this
variant under protocol P"); eval_protocol_spec is the protocol itself, for printing. Runs
recorded before this revision have neither: they count as measured under an unrecorded protocol.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("variant_runs") as batch:
        batch.add_column(sa.Column("eval_protocol", sa.String(32), nullable=True))
        batch.add_column(sa.Column("eval_protocol_spec", JSON, nullable=True))
        batch.create_index("ix_variant_runs_variant_protocol", ["variant_id", "eval_protocol", "status"])


def downgrade() -> None:
    with op.batch_alter_table("variant_runs") as batch:
        batch.drop_index("ix_variant_runs_variant_protocol")
        batch.drop_column("eval_protocol_spec")
        batch.drop_column("eval_protocol")
