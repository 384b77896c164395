"""Deliveries: DICOM reports sent back to the PACS, job callbacks and their attempts

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


def _job_id() -> sa.Column:
    return sa.Column("job_id", sa.String(32), nullable=False)


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["job_id"], ["jobs.id"], name=op.f(f"fk_{table}_job_id_jobs"), ondelete="CASCADE"
    )


def upgrade() -> None:
    with op.batch_alter_table("images") as batch_op:
        batch_op.add_column(sa.Column("sop_class_uid", sa.String(64), nullable=True))
    op.create_table(
        "dicom_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        _job_id(),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.Column("report_uid", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        _job_fk("dicom_deliveries"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_deliveries")),
    )
    op.create_index(op.f("ix_dicom_deliveries_job_id"), "dicom_deliveries", ["job_id"])
    op.create_index(op.f("ix_dicom_deliveries_state"), "dicom_deliveries", ["state"])
    op.create_table(
        "callbacks",
        _job_id(),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
        _job_fk("callbacks"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_callbacks")),
    )
    op.create_index(op.f("ix_callbacks_state"), "callbacks", ["state"])
    op.create_table(
        "callback_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        _job_id(),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["callbacks.job_id"],
            name=op.f("fk_callback_attempts_job_id_callbacks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_attempts")),
    )
    op.create_index(op.f("ix_callback_attempts_job_id"), "callback_attempts", ["job_id"])
    op.create_table(
        "callback_secrets",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("default_url", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_callback_secrets")),
    )


def downgrade() -> None:
    op.drop_table("callback_secrets")
    op.drop_index(op.f("ix_callback_attempts_job_id"), table_name="callback_attempts")
    op.drop_table("callback_attempts")
    op.drop_index(op.f("ix_callbacks_state"), table_name="callbacks")
    op.drop_table("callbacks")
    op.drop_index(op.f("ix_dicom_deliveries_state"), table_name="dicom_deliveries")
    op.drop_index(op.f("ix_dicom_deliveries_job_id"), table_name="dicom_deliveries")
    op.drop_table("dicom_deliveries")
    with op.batch_alter_table("images") as batch_op:
        batch_op.drop_column("sop_class_uid")
