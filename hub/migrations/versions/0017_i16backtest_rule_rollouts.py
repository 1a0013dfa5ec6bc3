"""Staged rollouts of rule versions (``hub.store.rollouts``).

Revision ID: 0017
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0013"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "rule_rollouts",
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("rule", sa.String(63), primary_key=True),
        sa.Column("stable_version", sa.Integer, nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=False),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("branches", JSON, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rule_rollouts")
