"""training runs, confirmed labels, model versions linked to their run

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("in_progress", sa.Boolean(), nullable=True),
        sa.Column("trigger_key", sa.String(64), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("labels_used", sa.Integer(), nullable=False),
        sa.Column("labels_until", Timestamp, nullable=True),
        sa.Column("activated", sa.Boolean(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("heartbeat_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
        sa.UniqueConstraint("in_progress", name=op.f("uq_training_runs_in_progress")),
        sa.UniqueConstraint("trigger_key", name=op.f("uq_training_runs_trigger_key")),
    )
    op.create_index(op.f("ix_training_runs_status"), "training_runs", ["status"])

    op.create_table(
        "labels",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("image_id", BigId, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("labelled_by", sa.String(200), nullable=False),
        sa.Column("labelled_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_labels_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("image_id", name=op.f("uq_labels_image_id")),
    )
    op.create_index(op.f("ix_labels_labelled_at"), "labels", ["labelled_at"])

    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("training_run_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("artifact_deleted_at", Timestamp, nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_model_versions_training_run_id_training_runs"),
            "training_runs",
            ["training_run_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_constraint(
            op.f("fk_model_versions_training_run_id_training_runs"), type_="foreignkey"
        )
        batch_op.drop_column("artifact_deleted_at")
        batch_op.drop_column("training_run_id")
    op.drop_table("labels")
    op.drop_table("training_runs")
