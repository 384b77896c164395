"""DICOM identifiers and acquisition facts on images

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("study_uid", 64),
    ("series_uid", 64),
    ("sop_uid", 64),
    ("modality", 16),
    ("body_part", 64),
    ("view_position", 16),
)


def upgrade() -> None:
    with op.batch_alter_table("images") as batch_op:
        for name, length in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length), nullable=True))
        batch_op.create_index(op.f("ix_images_study_uid"), ["study_uid"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch_op:
        batch_op.drop_index(op.f("ix_images_study_uid"))
        for name, _ in COLUMNS:
            batch_op.drop_column(name)
