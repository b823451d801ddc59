"""Issue 8's import path at archive scale: what it must keep while going faster and smaller.

- raw mail is stored compressed (`bridge.models.RawMail`) and read back byte for byte, also
  after migration 0004 packs rows written before it;
- the block-wise mbox splitter cuts exactly where the line-by-line rules say, whatever the
  block size;
- the mangled pipermail From forms become addresses, and a message without a readable From
  is not taken for automatic mail (the null sender);
- preparing batches in worker processes archives exactly what one process would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import LargeBinary, column, select, table, text

from bridge import wiring
from bridge.app import App
from bridge.db import alembic_config, upgrade
from bridge.directory import create_community
from bridge.models import Community, InboxItem, Message, pack_raw, unpack_raw
from inbound.importer import UNKNOWN_SENDER, deobfuscate_from, import_path, split_mbox
from inbound.store import Envelope, InboxWriter
from tests.test_import_export import MBOX

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_stored = table("inboxitem", column("id"), column("raw", LargeBinary))  # what is on disk


@pytest.fixture
def community(app: App) -> str:
    upgrade(app.engine)
    with app.session() as session:
        create_community(session, "rd", "R&D", policy="open", admits_guests=True)
    return "rd"


@pytest.mark.parametrize("raw", [b"", b"x", MBOX, bytes(range(256)) * 3,
                                 b"From: a@b.c\r\n\r\n" + b"text\r\n" * 500])
def test_pack_raw_round_trips(raw: bytes) -> None:
    packed = pack_raw(raw)
    assert unpack_raw(packed) == raw
    assert len(packed) <= len(raw) + 1


def test_raw_mail_is_compressed_on_disk_and_read_back_exactly(app: App, community: str
                                                               ) -> None:
    raw = MBOX.split(b"\n\nFrom bob")[0] * 20
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    inbox_id = writer.accept_sync(raw, Envelope("alice@example.com", ["rd@lists.example.org"]))
    with app.engine.connect() as connection:
        on_disk = connection.execute(select(_stored.c.raw).where(
            _stored.c.id == inbox_id)).scalar_one()
        read = connection.execute(select(_inbox.c.raw).where(
            _inbox.c.id == inbox_id)).scalar_one()
    assert on_disk[:1] == b"Z" and len(on_disk) < len(raw) / 4
    assert read == raw
    with app.session() as session:
        item = session.get(InboxItem, inbox_id)
        assert item is not None and app.raw_mail(item) == raw


def test_migration_0004_packs_rows_written_before_it(app: App) -> None:
    upgrade(app.engine)
    command.downgrade(alembic_config(app.engine), "0003")
    raw = b"From: a@b.c\nSubject: old\n\n" + b"an old row, stored plain\n" * 10
    with app.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO inboxitem (received_at, source, peer, helo, mail_from, rcpt_to, size,"
            " sha256, raw, header_message_id, status, kind, reason, attempts, next_attempt_at)"
            " VALUES ('2026-01-01 00:00:00', 'smtp', '', '', '', '[]', :size, :sha, :raw, '',"
            " 'done', '', '', 0, '2026-01-01 00:00:00')"),
            {"size": len(raw), "sha": "0" * 64, "raw": raw})
    upgrade(app.engine)
    with app.engine.connect() as connection:
        assert connection.execute(select(_stored.c.raw)).scalar_one()[:1] == b"Z"
        assert connection.execute(select(_inbox.c.raw)).scalar_one() == raw
    command.downgrade(alembic_config(app.engine), "0003")  # and back
    with app.engine.connect() as connection:
        assert connection.execute(select(_stored.c.raw)).scalar_one() == raw


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 1 << 20])
def test_split_mbox_in_blocks_cuts_like_line_by_line(size: int) -> None:
    lines = list(split_mbox(iter(MBOX.splitlines(keepends=True))))
    blocks = list(split_mbox(MBOX[i:i + size] for i in range(0, len(MBOX), size)))
    assert blocks == lines and len(lines) == 5


def test_split_mbox_edge_cases() -> None:
    # A From line right after a rejected candidate is never a separator; a last line
    # without a newline and a candidate on the last line are body text.
    mbox = (b"preamble\n\nFrom x\nFrom y Mon Jan  5 10:00:00 2015\n"
            b"Subject: a\n\nbody\n\nFrom z Mon Jan  5 10:00:00 2015\nSubject: b\n\n"
            b"last\n\nFrom end")
    expected = [b"preamble\n\nFrom x\nFrom y Mon Jan  5 10:00:00 2015\n"
                b"Subject: a\n\nbody\n", b"Subject: b\n\nlast\n\nFrom end"]
    for size in (1, 3, len(mbox)):
        assert list(split_mbox(mbox[i:i + size] for i in range(0, len(mbox), size))) \
            == expected


@pytest.mark.parametrize(("line", "address"), [
    (b"tr@ver@c @end|ng |rom gm@||@com (Travers Ching)", b"tr.ver.c@gm.ii.com"),
    (b"luke-tier@ey m@ili@g off uiow@@edu (Luke)", b"luke-tier.ey@uiow.edu"),
    (b"@@drew m@iii@g oii robbi@s@@me (Andrew)", b"drew@robbi.s.me"),
    (b"us@er @ending from ex@mple@org (Name)", b"us.er@ex.mple.org"),
    (b"alice at example.com (Alice)", b"alice@example.com"),
])
def test_mangled_pipermail_from_becomes_an_address(line: bytes, address: bytes) -> None:
    raw = b"From: " + line + b"\nSubject: s\n\nbody\n"
    assert deobfuscate_from(raw).startswith(b"From: " + address + b" (")


def test_imported_mail_without_from_is_archived_not_discarded(
        app: App, community: str, tmp_path: Path) -> None:
    path = tmp_path / "no-from.mbox"
    path.write_bytes(b"From x Mon Jan  5 10:00:00 2015\nSubject: who wrote this?\n"
                     b"Message-ID: <nofrom@x>\n\nSomeone did.\n\n"
                     b"From y Mon Jan  5 10:00:00 2015\nFrom: nobody\nSubject: again\n"
                     b"Message-ID: <nofrom2@x>\n\nSomeone else.\n")
    report = import_path(app, path, community, wiring.processor(app, fan_out=False,
                                                                 notify=False), quiet=True)
    assert report.archived == 2 and report.problems == []
    with app.engine.connect() as connection:
        assert set(connection.execute(select(_inbox.c.mail_from)).scalars()) \
            == {UNKNOWN_SENDER}
        assert set(connection.execute(select(_message.c.author_id)).scalars()) == {None}


def _archive(app: App, community: str, path: Path, workers: int) -> list[tuple[object, ...]]:
    processor = wiring.processor(app, fan_out=False, notify=False)
    report = import_path(app, path, community, processor, batch_size=2, workers=workers,
                         quiet=True)
    assert report.read == 5
    with app.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(_message.c.message_id, _message.c.subject, _message.c.text,
                   _message.c.from_address, _message.c.parent_id.is_(None))
            .join(_community, _community.c.id == _message.c.community_id)
            .where(_community.c.slug == community).order_by(_message.c.id))]


def test_workers_archive_what_one_process_would(app: App, community: str,
                                                tmp_path: Path) -> None:
    path = tmp_path / "list.mbox"
    path.write_bytes(MBOX)
    alone = _archive(app, community, path, workers=0)
    with app.session() as session:
        create_community(session, "copy", "Copy", policy="open", admits_guests=True)
    with_workers = _archive(app, "copy", path, workers=2)
    assert len(alone) == 4
    assert with_workers == alone
    if app.engine.dialect.name == "sqlite":  # the index terms computed by the workers
        with app.engine.connect() as connection:
            for term in ("pandoc", "vignett", "reunion", "crlf"):
                found = connection.execute(text(
                    "SELECT c.slug, m.message_id FROM message_search s JOIN message m"
                    " ON m.id = s.rowid JOIN community c ON c.id = m.community_id"
                    " WHERE message_search MATCH :term"), {"term": term}).all()
                by_community = {slug: {mid for s, mid in found if s == slug}
                                for slug in ("rd", "copy")}
                assert by_community["rd"] and by_community["rd"] == by_community["copy"], term
