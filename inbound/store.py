"""Durable acceptance: the exact bytes and the envelope are committed before "250".

Every way mail comes in (SMTP, LMTP, IMAP, import) hands raw bytes and an envelope to an
`InboxWriter`. The SMTP handler awaits `accept()`; a single writer task gathers whatever
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
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, insert

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


@dataclass
class _Pending:
    row: dict[str, object]
    future: asyncio.Future[int] = field(repr=False)


class InboxWriter:
    def __init__(self, engine: Engine, blobs: BlobStore, inline_limit: int, clock: Clock,
                 max_batch: int = 500) -> None:
        self.engine = engine
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.clock = clock
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread and one connection for the group commits: no pool checkout per batch.
        self._executor: ThreadPoolExecutor | None = None
        self._connection: Connection | None = None
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
            "next_attempt_at": now,
        }

    def write_rows(self, rows: list[dict[str, object]]) -> list[int]:
        """Insert rows in one transaction; returns their ids, in order."""
        with self.engine.begin() as connection:
            result = connection.execute(
                insert(_inbox).returning(_inbox.c.id, sort_by_parameter_order=True), rows)
            return [int(inbox_id) for inbox_id in result.scalars()]

    def accept_sync(self, raw: bytes, envelope: Envelope) -> int:
        """Durably store one message from a thread (IMAP poller, importer, CLI)."""
        return self.write_rows([self.row(raw, envelope)])[0]

    # --- the group-commit writer for the event loop ----------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox-writer")
        self._task = asyncio.create_task(self._run(), name="inbox-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _write_group(self, rows: list[dict[str, object]]) -> list[int]:
        """One group commit, on the writer thread's own connection (reopened after an
        error: the database may have gone away and come back)."""
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            with self._connection.begin():
                result = self._connection.execute(
                    insert(_inbox).returning(_inbox.c.id, sort_by_parameter_order=True), rows)
                return [int(inbox_id) for inbox_id in result.scalars()]
        except Exception:
            self._close()
            raise

    async def accept(self, raw: bytes, envelope: Envelope) -> int:
        """Return once `raw` is committed; raises when it could not be stored."""
        if self._queue is None:
            raise RuntimeError("InboxWriter.start() was not called")
        loop = asyncio.get_running_loop()
        row = await asyncio.to_thread(self.row, raw, envelope) if len(raw) > self.inline_limit \
            else self.row(raw, envelope)
        pending = _Pending(row, loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                ids = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._write_group, [p.row for p in batch])
            except Exception as exc:  # every waiting session gets the error
                log.error("could not store %d message(s): %s", len(batch), exc)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            for pending, inbox_id in zip(batch, ids, strict=True):
                if not pending.future.done():
                    pending.future.set_result(inbox_id)
            self.arrived.set()
