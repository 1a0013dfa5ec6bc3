"""Webhook inbox.

Revision ID: 0004
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("connection_id", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("domain_types", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("errors", JSON, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("outcome", JSON, nullable=False),
        sa.Column("workflow_id", sa.String(400)),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("available_at", TS, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", TS),
        sa.Column("relayed_at", TS),
        sa.Column("completed_at", TS),
        sa.UniqueConstraint("provider", "connection_id", "event_id", name="uq_webhook_events_provider_event"),
    )
    op.create_index("ix_webhook_events_status_available", "webhook_events", ["status", "available_at"])
    op.create_index("ix_webhook_events_org_received", "webhook_events", ["org_id", "received_at"])


def downgrade() -> None:
    op.drop_table("webhook_events")
