"""message.security: whether a message was signed or encrypted (S/MIME, PGP)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message", sa.Column("security", sa.String(), nullable=False,
                                       server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_column("security")
