"""Sync jobs: synced_records, sync_state and sync_pages.

Revision ID: 0008
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "synced_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("connection_id", sa.String(32), sa.ForeignKey("connections.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("provider_id", sa.String(300), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("changed_at", TS),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("last_changed_at", TS, nullable=False),
        sa.UniqueConstraint("connection_id", "model", "provider_id", name="uq_synced_records_connection_id"),
    )
    op.create_table(
        "sync_state",
        sa.Column("connection_id", sa.String(32), sa.ForeignKey("connections.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("cursor", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("last_success_at", TS),
        sa.Column("records_seen", sa.Integer, nullable=False),
        sa.Column("records_changed", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(200)),
        sa.Column("run_started_at", TS),
        sa.Column("run_finished_at", TS),
        sa.Column("run_pages", sa.Integer, nullable=False),
        sa.Column("run_records", sa.Integer, nullable=False),
        sa.Column("run_changed", sa.Integer, nullable=False),
        sa.Column("run_events", sa.Integer, nullable=False),
        sa.Column("run_rate", sa.Float, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )


    op.create_table(
        "sync_pages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("connection_id", sa.String(32), sa.ForeignKey("connections.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("cursor", sa.Text),
        sa.Column("page", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_sync_pages_connection_id", "sync_pages", ["connection_id", "model", "run_id"])


def downgrade() -> None:
    op.drop_table("sync_pages")
    op.drop_table("sync_state")
    op.drop_table("synced_records")
