"""AI: leads, ai_insights, ai_models.

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "leads",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("data", JSON, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("low", sa.Float),
        sa.Column("high", sa.Float),
        sa.Column("factors", JSON, nullable=False),
        sa.Column("model_version", sa.String(100)),
        sa.Column("source", sa.String(16)),
        sa.Column("scored_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "ai_insights",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("output", JSON, nullable=False),
        sa.Column("provenance", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_ai_insights_subject", "ai_insights", ["org_id", "subject_type", "subject_id"])
    op.create_table(
        "ai_models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("mapping", JSON, nullable=False),
        sa.Column("artifact", sa.LargeBinary, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("org_id", "kind", "version", name="uq_ai_models_org_id"),
    )


def downgrade() -> None:
    op.drop_table("ai_models")
    op.drop_index("ix_ai_insights_subject", table_name="ai_insights")
    op.drop_table("ai_insights")
    op.drop_table("leads")
