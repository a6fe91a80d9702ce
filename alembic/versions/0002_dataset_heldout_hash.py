"""datasets: heldout_hash, unique with the content hash in a project (identical uploads are one dataset)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:40:00

Rows made before this revision keep a null heldout_hash (the mask is in the artifact store, which a
migration does not read); nulls never collide, so they stay as they are and are never matched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heldout_hash", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_datasets_project_id_content_hash_heldout_hash"),
            ["project_id", "content_hash", "heldout_hash"],
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_datasets_project_id_content_hash_heldout_hash"), type_="unique")
        batch_op.drop_column("heldout_hash")
