"""evaluations: heartbeat_at and lease, so that a job whose worker died is found and sent again

Revision ID: 0004_heartbeats
Revises: 0003_runs
Create Date: 2026-12-02 00:50:00

The task running a job beats `heartbeat_at` every few seconds while it holds the job's `lease`; the
recovery task re-sends a running job whose heartbeat is stale, taking the lease over so that the dead
task's redelivered message is not run as well. Columns only: existing rows get lease 0 and no heartbeat.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_heartbeats"
down_revision: str | None = "0003_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("lease", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("lease")
        batch_op.drop_column("heartbeat_at")
