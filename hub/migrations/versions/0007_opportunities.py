"""Opportunities: workflow projection, stage visits, rule runs.

Revision ID: 0007
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "opportunities",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("workflow_id", sa.String(300), nullable=False),
        sa.Column("pipeline_name", sa.String(200), nullable=False, index=True),
        sa.Column("pipeline_version", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "opportunity_stage_visits",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("opportunity_id", sa.String(200), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("pipeline_name", sa.String(200), nullable=False, index=True),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("entered_at", TS, nullable=False),
        sa.Column("exited_at", TS),
    )
    op.create_table(
        "rule_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False, index=True),
        sa.Column("trigger", sa.String(100), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("fired", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("actions", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.UniqueConstraint("key", name="uq_rule_runs_key"),
    )


def downgrade() -> None:
    for table in ("rule_runs", "opportunity_stage_visits", "opportunities"):
        op.drop_table(table)
