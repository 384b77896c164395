"""The scoring queue: passes across jobs, priorities, per-image starts

Images of every running job are claimed into forward passes (`scoring_passes`); each image
counts the passes that took it (`starts`), replacing the per-batch `batch_attempts` counts.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNSCORED = sa.text("scored_at IS NULL")
SUSPECT = sa.text("scored_at IS NULL AND starts > 0")


def upgrade() -> None:
    op.create_table(
        "scoring_passes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("suspect", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("precision", sa.String(16), nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_scoring_passes_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_passes")),
    )
    op.create_index(op.f("ix_scoring_passes_task_id"), "scoring_passes", ["task_id"])
    op.create_index(op.f("ix_scoring_passes_outcome"), "scoring_passes", ["outcome"])
    op.create_index(op.f("ix_scoring_passes_finished_at"), "scoring_passes", ["finished_at"])
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(16), server_default="routine", nullable=False)
        )
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(16), server_default="routine", nullable=False)
        )
    with op.batch_alter_table("images") as batch_op:
        batch_op.add_column(sa.Column("pass_id", BigId, nullable=True))
        batch_op.add_column(sa.Column("starts", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_foreign_key(
            op.f("fk_images_pass_id_scoring_passes"),
            "scoring_passes",
            ["pass_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(op.f("ix_images_pass_id"), ["pass_id"])
    op.create_index(
        "ix_images_unscored",
        "images",
        ["job_id", "id"],
        postgresql_where=UNSCORED,
        sqlite_where=UNSCORED,
    )
    op.create_index(
        "ix_images_suspect", "images", ["id"], postgresql_where=SUSPECT, sqlite_where=SUSPECT
    )
    op.drop_table("batch_attempts")


def downgrade() -> None:
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
    op.drop_index("ix_images_suspect", table_name="images")
    op.drop_index("ix_images_unscored", table_name="images")
    with op.batch_alter_table("images") as batch_op:
        batch_op.drop_index(op.f("ix_images_pass_id"))
        batch_op.drop_constraint(op.f("fk_images_pass_id_scoring_passes"), type_="foreignkey")
        batch_op.drop_column("starts")
        batch_op.drop_column("pass_id")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("priority")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("priority")
    op.drop_table("scoring_passes")
