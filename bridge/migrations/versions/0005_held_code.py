"""held.code: why a message is held, as a stable code (the reason is the human sentence)

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("held", sa.Column("code", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("held") as batch:
        batch.drop_column("code")
