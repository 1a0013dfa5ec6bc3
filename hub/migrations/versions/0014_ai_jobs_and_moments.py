"""AI: training jobs (uploads trained off the API process), the moment of a lead's score, pinned models.

Revision ID: 0014
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ai_training_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("mapping", JSON),
        sa.Column("upload", sa.LargeBinary),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("columns", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(32)),
        sa.Column("error", sa.String(2000)),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.add_column("leads", sa.Column("moment", sa.String(24)))
    op.add_column("ai_models", sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("ai_models", sa.Column("origin", sa.String(16), nullable=False, server_default="upload"))


def downgrade() -> None:
    with op.batch_alter_table("ai_models") as batch:
        batch.drop_column("origin")
        batch.drop_column("pinned")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("moment")
    op.drop_table("ai_training_jobs")
