"""Durable acceptance: the exact bytes and the envelope are committed before "250".

Every way mail comes in (SMTP, LMTP, IMAP, import) hands raw bytes and an envelope to an
`InboxWriter`. The SMTP handler awaits `accept()`; a single writer thread gathers whatever
messages are waiting — from all sessions — and commits them in one transaction (group
commit), then answers each waiting session. While one batch commits the next one gathers,
so under load each fsync serves many messages, and no session is answered before its
message is on disk.

Mail larger than `inline_limit` goes to the content store first (fsynced file), then its
row; smaller mail is kept in the row itself (zlib-compressed by the column type,
`bridge.models.RawMail`: readers get the exact bytes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import operator
import queue
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Dialect, Engine, bindparam, insert

from bridge.blobs import BlobStore
from bridge.clock import Clock
from bridge.models import InboxItem

log = logging.getLogger("causerie.inbound")

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_MSGID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: Sequence[str]
    source: str = "smtp"
    peer: str = ""
    helo: str = ""


def _clean(value: str) -> str:
    """Envelope and header text a database can store (PostgreSQL refuses NUL)."""
    return value.replace("\x00", "") if "\x00" in value else value


def _printable(envelope: Envelope) -> Envelope:
    return Envelope(mail_from=_clean(envelope.mail_from),
                    rcpt_to=[_clean(r) for r in envelope.rcpt_to], source=envelope.source,
                    peer=_clean(envelope.peer), helo=_clean(envelope.helo))


def header_message_id(raw: bytes) -> str:
    """The Message-ID from the header block, cheaply (for listing and de-duplication)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _MSGID.search(head)
    if not match:
        return ""
    value = _clean(match.group(1).decode("ascii", "replace")).strip()
    start, end = value.find("<"), value.find(">")
    if 0 <= start < end:
        value = value[start + 1:end]
    return value[:900]


class _InboxInsert:
    """Inserts inbox rows in one statement run per batch, returning their ids in order.

    On SQLite the rows go through the bare driver (`executemany` of the INSERT SQLAlchemy
    compiles once, with the columns' own bind processors, so what is stored is exactly what
    the ORM would store): the SQLAlchemy statement machinery cost more CPU than the insert,
    and in the gateway that CPU is taken from the event loop answering SMTP. The ids are
    consecutive because the transaction holds SQLite's write lock (BEGIN IMMEDIATE) and the
    id is the rowid. Other databases take the portable INSERT … RETURNING.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.bare = dialect.name == "sqlite"
        compiled = insert(_inbox).values(
            {column.name: bindparam(column.name) for column in _inbox.columns
             if column.name != "id"}).compile(dialect=dialect)
        self.sql = str(compiled)
        self.order = list(compiled.positiontup or [])
        self.get = operator.itemgetter(*self.order) if self.bare else None
        # (position, bind processor) of the columns that have one (dates, JSON, raw mail).
        self.processors = [
            (position, process) for position, name in enumerate(self.order)
            if (process := _inbox.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            is not None]

    def __call__(self, connection: Connection, rows: list[dict[str, object]]) -> list[int]:
        if not self.bare:
            result = connection.execute(
                insert(_inbox).returning(_inbox.c.id, sort_by_parameter_order=True), rows)
            return [int(inbox_id) for inbox_id in result.scalars()]
        parameters = []
        for row in rows:
            values = list(self.get(row))  # type: ignore[misc]
            for position, process in self.processors:
                values[position] = process(values[position])
            parameters.append(values)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.sql, parameters)
            last = int(cursor.execute("SELECT last_insert_rowid()").fetchone()[0])
        finally:
            cursor.close()
        return list(range(last - len(rows) + 1, last + 1))


@dataclass
class _Pending:
    """A message waiting for the writer thread: its row when already made (large mail, whose
    bytes went to the content store off the event loop), else the bytes to make it from."""

    raw: bytes
    envelope: Envelope
    row: dict[str, object] | None
    future: asyncio.Future[int] = field(repr=False)


_STOP = object()


class InboxWriter:
    def __init__(self, engine: Engine, blobs: BlobStore, inline_limit: int, clock: Clock,
                 max_batch: int = 500) -> None:
        self.engine = engine
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.clock = clock
        self.max_batch = max_batch
        self._insert = _InboxInsert(engine.dialect)
        self._queue: queue.SimpleQueue[_Pending | object] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.arrived = asyncio.Event()  # set after each committed batch (wakes the processor)

    def row(self, raw: bytes, envelope: Envelope, received_at: datetime | None = None,
            digest: str | None = None) -> dict[str, object]:
        """The inbox row for `raw`; large mail is written to the content store first.

        `digest`: the sha256 of `raw` when the caller has already computed it."""
        digest = digest or hashlib.sha256(raw).hexdigest()
        inline = len(raw) <= self.inline_limit
        if not inline:
            self.blobs.put(raw, digest)
        now = received_at or self.clock.now()
        envelope = _printable(envelope)
        return {
            "received_at": now, "source": envelope.source, "peer": envelope.peer[:200],
            "helo": envelope.helo[:200], "mail_from": envelope.mail_from[:500],
            "rcpt_to": list(envelope.rcpt_to), "size": len(raw), "sha256": digest,
            "raw": raw if inline else None, "header_message_id": header_message_id(raw),
            "status": "pending", "kind": "", "reason": "", "attempts": 0,
            "next_attempt_at": now, "processed_at": None,
        }

    def write_rows(self, rows: list[dict[str, object]]) -> list[int]:
        """Insert rows in one transaction; returns their ids, in order."""
        with self.engine.begin() as connection:
            return self._insert(connection, rows)

    def accept_sync(self, raw: bytes, envelope: Envelope) -> int:
        """Durably store one message from a thread (IMAP poller, importer, CLI)."""
        return self.write_rows([self.row(raw, envelope)])[0]

    # --- the group-commit writer for the event loop ----------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, answer its sessions, then stop the writer thread."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        self._thread = None
        self._queue = None

    async def accept(self, raw: bytes, envelope: Envelope) -> int:
        """Return once `raw` is committed; raises when it could not be stored."""
        if self._queue is None or self._loop is None:
            raise RuntimeError("InboxWriter.start() was not called")
        row = await asyncio.to_thread(self.row, raw, envelope) \
            if len(raw) > self.inline_limit else None
        pending = _Pending(raw, envelope, row, self._loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def _run(self) -> None:
        """The writer thread: take what is waiting (from every session), make the rows,
        commit them together, answer. Each fsync serves all the messages that arrived while
        the previous batch was being committed."""
        assert self._queue is not None
        connection: Connection | None = None
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            try:
                rows = [p.row if p.row is not None else self.row(p.raw, p.envelope)
                        for p in batch]
                if connection is None:
                    connection = self.engine.connect()
                with connection.begin():
                    outcome: list[int] | Exception = self._insert(connection, rows)
            except Exception as exc:  # every waiting session gets the error
                log.error("could not store %d message(s): %s", len(batch), exc)
                outcome = exc
                if connection is not None:  # the database may have gone away: reconnect
                    with contextlib.suppress(Exception):
                        connection.close()
                    connection = None
            self._answer(batch, outcome)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _answer(self, batch: list[_Pending], outcome: list[int] | Exception) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._resolve, batch, outcome)

    def _resolve(self, batch: list[_Pending], outcome: list[int] | Exception) -> None:
        """On the event loop: answer every session of a batch, wake the processor."""
        if isinstance(outcome, Exception):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(outcome)
            return
        for pending, inbox_id in zip(batch, outcome, strict=True):
            if not pending.future.done():
                pending.future.set_result(inbox_id)
        self.arrived.set()
