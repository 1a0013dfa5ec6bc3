"""Rule runs: a status (``ok``, ``failed``, ``skipped``) to list and filter them by; opportunities: branch,
owner and archived, to list and filter them by.

Revision ID: 0013
Revises: 0014
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("opportunities") as batch:
        batch.add_column(sa.Column("branch", sa.String(64)))
        batch.add_column(sa.Column("owner", sa.String(200)))
        batch.add_column(sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.create_index("ix_opportunities_org_stage", ["org_id", "stage"])
    with op.batch_alter_table("rule_runs") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ok"))
        batch.create_index("ix_rule_runs_org_status", ["org_id", "status"])
    conn = op.get_bind()
    runs = sa.table("rule_runs", sa.column("id", sa.Integer), sa.column("fired", sa.Boolean),
                    sa.column("actions", sa.JSON), sa.column("status", sa.String))
    for run_id, fired, actions in conn.execute(sa.select(runs.c.id, runs.c.fired, runs.c.actions)).all():
        actions = json.loads(actions) if isinstance(actions, str) else actions or []
        status = "skipped" if not fired else "failed" if any(not a.get("ok") for a in actions) else "ok"
        if status != "ok":
            conn.execute(runs.update().where(runs.c.id == run_id).values(status=status))


def downgrade() -> None:
    with op.batch_alter_table("rule_runs") as batch:
        batch.drop_index("ix_rule_runs_org_status")
        batch.drop_column("status")
    with op.batch_alter_table("opportunities") as batch:
        batch.drop_index("ix_opportunities_org_stage")
        for column in ("archived", "owner", "branch"):
            batch.drop_column(column)
