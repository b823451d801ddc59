"""inboxitem.raw: compressed raw mail (bridge.models.RawMail)

Every stored value gets a tag byte ("Z" zlib, "R" as it is); the rows written before this
revision are packed here, in chunks, so that after it no value is untagged.

Revision ID: 0004
Revises: 0003
"""

import zlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHUNK = 500
# The column as plain bytes: the migration sees what is stored, not what RawMail gives.
_inbox = sa.table("inboxitem", sa.column("id", sa.Integer), sa.column("raw", sa.LargeBinary))


def _rewrite(convert: Callable[[bytes], bytes]) -> None:
    bind = op.get_bind()
    last = 0
    while True:
        rows = bind.execute(sa.select(_inbox.c.id, _inbox.c.raw)
                            .where(_inbox.c.id > last, _inbox.c.raw.is_not(None))
                            .order_by(_inbox.c.id).limit(_CHUNK)).all()
        if not rows:
            return
        bind.execute(sa.update(_inbox).where(_inbox.c.id == sa.bindparam("row_id"))
                     .values(raw=sa.bindparam("packed", type_=sa.LargeBinary)),
                     [{"row_id": row.id, "packed": convert(bytes(row.raw))} for row in rows])
        last = rows[-1].id


def _pack(raw: bytes) -> bytes:
    """bridge.models.pack_raw as of this revision (a migration must not change with it)."""
    packed = zlib.compress(raw, 6)
    return b"Z" + packed if len(packed) < len(raw) else b"R" + raw


def _unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored[1:]) if stored[:1] == b"Z" else stored[1:]


def upgrade() -> None:
    _rewrite(_pack)


def downgrade() -> None:
    _rewrite(_unpack)
