"""The DICOM node: reports sent back to the PACS, and the SOP class of each DICOM image

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("images") as batch_op:
        batch_op.add_column(sa.Column("sop_class_uid", sa.String(64), nullable=True))
    op.create_table(
        "dicom_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.Column("report_uid", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_dicom_deliveries_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_deliveries")),
    )
    op.create_index(op.f("ix_dicom_deliveries_job_id"), "dicom_deliveries", ["job_id"])
    op.create_index(op.f("ix_dicom_deliveries_state"), "dicom_deliveries", ["state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dicom_deliveries_state"), table_name="dicom_deliveries")
    op.drop_index(op.f("ix_dicom_deliveries_job_id"), table_name="dicom_deliveries")
    op.drop_table("dicom_deliveries")
    with op.batch_alter_table("images") as batch_op:
        batch_op.drop_column("sop_class_uid")
