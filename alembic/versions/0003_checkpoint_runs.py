"""checkpoints: an optional run name and training step, unique together in a project

Revision ID: 0003_runs
Revises: 0002
Create Date: 2026-12-02 00:50:00

Both columns are null for checkpoints uploaded without a run (and for every row made before this revision);
nulls never collide, so only checkpoints of a run take part in the uniqueness of (project, run, step).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_runs"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("step", sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_checkpoints_project_id_run_name_step"), ["project_id", "run_name", "step"]
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_checkpoints_project_id_run_name_step"), type_="unique")
        batch_op.drop_column("step")
        batch_op.drop_column("run_name")
