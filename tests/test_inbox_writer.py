"""The durable inbox: what the writers store is what readers get back, on both databases,
and plain envelope addresses are normalised as the full address parser would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from bridge.addresses import normalise_address
from bridge.app import App
from bridge.models import InboxItem
from inbound.store import Envelope, InboxWriter

RAW = (b"From: Alice <alice@example.com>\r\nTo: rd@lists.example.org\r\n"
       b"Message-ID: <one@example.com>\r\nSubject: hello\r\n\r\n" + b"words " * 400)


def stored(app: App, ids: list[int]) -> list[InboxItem]:
    with app.session() as session:
        items = session.exec(select(InboxItem).where(InboxItem.id.in_(ids))  # type: ignore[union-attr]
                             .order_by(InboxItem.id)).scalars().all()
        session.expunge_all()
        return list(items)


def test_write_rows_gives_ids_in_order_and_exact_bytes_back(app: App) -> None:
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    when = datetime(2026, 12, 5, 22, 30, 1, 123456, tzinfo=UTC)
    raws = [RAW.replace(b"<one@", f"<n{n}@".encode()) + bytes([n]) for n in range(7)]
    rows = [writer.row(raw, Envelope(f"s{n}@example.com", ["rd@lists.example.org",
                                                          "rd+help@lists.example.org"],
                                     peer="127.0.0.1", helo="mx\x00.example.com"),
                       received_at=when)
            for n, raw in enumerate(raws)]
    first = writer.write_rows(rows[:3])
    then = writer.write_rows(rows[3:])
    ids = first + then
    assert ids == list(range(ids[0], ids[0] + 7))
    items = stored(app, ids)
    assert [item.id for item in items] == ids
    for n, item in enumerate(items):
        assert item.raw == raws[n]
        assert item.header_message_id == f"n{n}@example.com"
        assert item.mail_from == f"s{n}@example.com"
        assert item.rcpt_to == ["rd@lists.example.org", "rd+help@lists.example.org"]
        assert item.helo == "mx.example.com"   # NUL removed: PostgreSQL refuses it
        assert item.status == "pending" and item.attempts == 0
        assert item.received_at.replace(tzinfo=UTC) == when
        assert item.processed_at is None


def test_group_commit_answers_every_session_with_its_own_row(app: App) -> None:
    writer = InboxWriter(app.engine, app.blobs, 300, app.clock)   # larger mail: content store

    async def burst() -> list[int]:
        await writer.start()
        try:
            return await asyncio.gather(*(
                writer.accept(RAW + f"#{n}".encode() * (n % 2 * 100), Envelope(
                    "alice@example.com", ["rd@lists.example.org"])) for n in range(40)))
        finally:
            await writer.stop()

    ids = asyncio.run(burst())
    assert len(set(ids)) == 40
    items = {item.id: item for item in stored(app, ids)}
    for n, inbox_id in enumerate(ids):
        assert app.raw_mail(items[inbox_id]) == RAW + f"#{n}".encode() * (n % 2 * 100)


def test_a_writer_that_cannot_store_raises_to_every_waiting_session(app: App) -> None:
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    with app.engine.begin() as connection:  # the table is gone: every insert fails
        connection.exec_driver_sql("ALTER TABLE inboxitem RENAME TO inboxitem_away")

    async def burst() -> list[object]:
        await writer.start()
        try:
            return await asyncio.gather(*(writer.accept(RAW, Envelope("a@example.com", []))
                                          for _ in range(5)), return_exceptions=True)
        finally:
            await writer.stop()

    outcomes = asyncio.run(burst())
    assert all(isinstance(outcome, Exception) for outcome in outcomes)
    with app.engine.begin() as connection:  # and once it is back, the writer stores again
        connection.exec_driver_sql("ALTER TABLE inboxitem_away RENAME TO inboxitem")
    assert writer.accept_sync(RAW, Envelope("a@example.com", [])) > 0


@pytest.mark.parametrize("address", [
    "rd@lists.example.org", "Alice.Smith+Tag@Example.COM", "reply+abcdefghijklmnop@x.org",
    "o'brien@example.ie", "a/b=c{d}|e~@x.org", "a..b@x.org", ".a@x.org", "a.@x.org",
    "a@x..org", "a@" + "x" * 63 + ".org", "a@" + "x" * 64 + ".org", "a@x.org.",
    "Alice <alice@example.com>", '"a b"@x.org', "josé@exämple.com", "a@xn--caf-dma.com",
    "a@b@c.org", "no-at-sign", "", "a@-x.org",
])
def test_normalise_address_fast_path_agrees_with_the_parser(address: str) -> None:
    from email.utils import parseaddr

    _, addr = parseaddr(address)
    local, at, domain = addr.strip().strip("<>").rpartition("@")
    try:
        expected = (f"{local.lower()}@{domain.encode('idna').decode('ascii').lower()}"
                    if at and local and domain else "")
    except UnicodeError:
        expected = ""
    assert normalise_address(address) == expected
