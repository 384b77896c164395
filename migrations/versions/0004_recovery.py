"""ingest claims and batch attempts, for recovery after crashes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("ingest_started_at", Timestamp, nullable=True))
    op.create_table(
        "batch_attempts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_batch_attempts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_batch_attempts")),
    )
    op.create_index(op.f("ix_batch_attempts_job_id"), "batch_attempts", ["job_id"])


def downgrade() -> None:
    op.drop_table("batch_attempts")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("ingest_started_at")
