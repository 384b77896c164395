"""The preprocessing a model version was trained with, so scoring feeds it the same input

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every version registered before this column was trained on squash-resized images.
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(
            sa.Column("preprocessing", sa.String(64), nullable=False, server_default="squash")
        )


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("preprocessing")
