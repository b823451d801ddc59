"""The IMAP poller's side of the database: who polls a mailbox, where it stands, and the
commit that makes fetched messages durable.

- **Lease.** `ImapState.lease_owner/lease_expires` say which instance polls a mailbox. It is
  taken with one conditional UPDATE (free, expired or already ours), renewed while polling,
  and taken over by another instance once its holder stops renewing (crash, network loss).
  Every commit is *fenced*: it first updates the state row on the condition that we still
  own it, so an instance that lost its lease while it was fetching writes nothing.
- **Durability.** One batch of fetched messages becomes inbox rows (built by
  `InboxWriter.row()`, so large mail goes to the content store first, as for SMTP) *and*
  the `ImapSeen` rows naming their (mailbox, UIDVALIDITY, UID), *and* the new last UID, in
  one transaction. The poller flags or moves the messages on the server only after it.
- **No duplicates.** A UID already in `ImapSeen` is not fetched again. A message whose
  content hash or Message-ID is already in the inbox (a folder recreated with a new
  UIDVALIDITY, a message copied back from the processed folder, a copy that also came by
  SMTP) is not stored again: its new UID is recorded as pointing at the existing row. A
  match counts only when the matching rows were already addressed to every recipient found
  now, so that one message delivered to a shared mailbox once per alias (same Message-ID,
  another Delivered-To) still reaches every community it was sent to. This is the
  processor's own notion of a duplicate (one Message-ID per community), applied before a
  second inbox row is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.clock import Clock
from bridge.models import ImapSeen, ImapState, InboxItem
from inbound.store import Envelope, InboxWriter

_state = ImapState.__table__  # type: ignore[attr-defined]
_seen = ImapSeen.__table__  # type: ignore[attr-defined]
_inbox = InboxItem.__table__  # type: ignore[attr-defined]


class LeaseLost(Exception):
    """Another instance holds this mailbox now: stop polling, write nothing."""


@dataclass(frozen=True)
class Fetched:
    """One message as fetched by UID, with the envelope the poller derived for it."""

    uid: int
    raw: bytes
    rcpt_to: tuple[str, ...]
    mail_from: str


@dataclass
class Ingested:
    """What one committed batch did."""

    stored: list[int] = field(default_factory=list)   # new inbox row ids
    known: int = 0      # recognised as already ingested (content hash or Message-ID)


class MailboxStore:
    """The database operations of one mailbox's poller (all blocking: call them in a thread)."""

    def __init__(self, engine: Engine, writer: InboxWriter, clock: Clock, mailbox: str,
                 owner: str, lease: timedelta, peer: str = "") -> None:
        self.engine = engine
        self.writer = writer
        self.clock = clock
        self.mailbox = mailbox
        self.owner = owner
        self.lease = lease
        self.peer = peer

    # --- lease ------------------------------------------------------------------------------

    def acquire(self) -> str:
        """Take or keep the lease; returns '' when we hold it, else the current holder."""
        now = self.clock.now()
        with self.engine.begin() as connection:
            self._ensure_row(connection)
            result = connection.execute(update(_state).where(
                _state.c.mailbox == self.mailbox,
                or_(_state.c.lease_owner == self.owner, _state.c.lease_owner == "",
                    _state.c.lease_expires.is_(None), _state.c.lease_expires < now))
                .values(lease_owner=self.owner, lease_expires=now + self.lease))
            if result.rowcount == 1:
                return ""
            holder = connection.execute(select(_state.c.lease_owner).where(
                _state.c.mailbox == self.mailbox)).scalar()
            return str(holder or "another instance")

    def renew(self) -> bool:
        """Push our lease forward; False when another instance has taken it."""
        with self.engine.begin() as connection:
            result = connection.execute(update(_state).where(
                _state.c.mailbox == self.mailbox, _state.c.lease_owner == self.owner)
                .values(lease_expires=self.clock.now() + self.lease))
            return result.rowcount == 1

    def release(self) -> None:
        """Give the lease up (clean stop), so another instance need not wait for expiry."""
        with self.engine.begin() as connection:
            connection.execute(update(_state).where(
                _state.c.mailbox == self.mailbox, _state.c.lease_owner == self.owner)
                .values(lease_owner="", lease_expires=None))

    def _ensure_row(self, connection: Connection) -> None:
        dialect = connection.dialect.name
        values = {"mailbox": self.mailbox, "uidvalidity": 0, "last_uid": 0,
                  "lease_owner": "", "lease_expires": None}
        statement: Any
        if dialect == "postgresql":
            statement = postgresql.insert(_state).values(values).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite.insert(_state).values(values).on_conflict_do_nothing()
        else:  # pragma: no cover - the project supports the two above
            if connection.execute(select(_state.c.mailbox).where(
                    _state.c.mailbox == self.mailbox)).first() is not None:
                return
            statement = insert(_state).values(values)
        connection.execute(statement)

    def _fence(self, connection: Connection, **values: Any) -> None:
        """Update our state row if, and only if, we still hold the lease."""
        values["lease_expires"] = self.clock.now() + self.lease
        result = connection.execute(update(_state).where(
            _state.c.mailbox == self.mailbox, _state.c.lease_owner == self.owner)
            .values(**values))
        if result.rowcount != 1:
            raise LeaseLost(f"mailbox {self.mailbox!r} is now polled by another instance")

    # --- position ---------------------------------------------------------------------------

    def position(self) -> tuple[int, int]:
        """(UIDVALIDITY, last UID) as stored; (0, 0) for a mailbox never polled."""
        with self.engine.connect() as connection:
            row = connection.execute(select(_state.c.uidvalidity, _state.c.last_uid).where(
                _state.c.mailbox == self.mailbox)).first()
        return (int(row.uidvalidity), int(row.last_uid)) if row else (0, 0)

    def move_to(self, uidvalidity: int, last_uid: int) -> None:
        """Record a new position (a UIDVALIDITY change starts again from UID 0)."""
        with self.engine.begin() as connection:
            self._fence(connection, uidvalidity=uidvalidity, last_uid=last_uid)

    def known_uids(self, uidvalidity: int, uids: Sequence[int]) -> set[int]:
        """The UIDs among `uids` already ingested under this UIDVALIDITY."""
        known: set[int] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start:start + 500])
                known.update(int(uid) for uid in connection.execute(select(_seen.c.uid).where(
                    _seen.c.mailbox == self.mailbox, _seen.c.uidvalidity == uidvalidity,
                    _seen.c.uid.in_(chunk))).scalars())
        return known

    # --- the commit -------------------------------------------------------------------------

    def ingest(self, uidvalidity: int, messages: Sequence[Fetched], last_uid: int) -> Ingested:
        """Store a batch and its UIDs and advance to `last_uid`, in one transaction."""
        received_at = self.clock.now()
        rows = [self.writer.row(m.raw, Envelope(m.mail_from, list(m.rcpt_to), source="imap",
                                                peer=self.peer), received_at)
                for m in messages]  # large mail reaches the content store before the commit
        outcome = Ingested()
        with self.engine.begin() as connection:
            self._fence(connection, uidvalidity=uidvalidity, last_uid=last_uid)
            if not messages:
                return outcome
            already = self._already_seen(connection, uidvalidity, [m.uid for m in messages])
            previous = self._previous(connection, rows)
            new_rows: list[dict[str, object]] = []
            targets: list[tuple[int, int]] = []   # (uid, existing inbox id or -(new index+1))
            for message, row in zip(messages, rows, strict=True):
                if message.uid in already:
                    continue
                sha, mid = str(row["sha256"]), str(row["header_message_id"])
                rcpt = frozenset(message.rcpt_to)
                existing = previous.match(sha, mid, rcpt)
                if existing is not None:
                    outcome.known += 1
                    targets.append((message.uid, existing))
                    continue
                new_rows.append(row)
                targets.append((message.uid, -len(new_rows)))
                # later messages of this batch may be the same one again
                previous.add(-len(new_rows), sha, mid, rcpt)
            ids: list[int] = []
            if new_rows:
                result = connection.execute(
                    insert(_inbox).returning(_inbox.c.id, sort_by_parameter_order=True),
                    new_rows)
                ids = [int(inbox_id) for inbox_id in result.scalars()]
            if targets:
                connection.execute(insert(_seen), [
                    {"mailbox": self.mailbox, "uidvalidity": uidvalidity, "uid": uid,
                     "inbox_id": target if target > 0 else ids[-target - 1]}
                    for uid, target in targets])
            outcome.stored = ids
        return outcome

    def _already_seen(self, connection: Connection, uidvalidity: int,
                      uids: list[int]) -> set[int]:
        return {int(uid) for uid in connection.execute(select(_seen.c.uid).where(
            _seen.c.mailbox == self.mailbox, _seen.c.uidvalidity == uidvalidity,
            _seen.c.uid.in_(uids))).scalars()}

    def _previous(self, connection: Connection, rows: list[dict[str, object]]) -> _Known:
        """Inbox rows with the same content hash or Message-ID (both indexed)."""
        shas = sorted({str(row["sha256"]) for row in rows})
        mids = sorted({str(row["header_message_id"]) for row in rows} - {""})
        condition = _inbox.c.sha256.in_(shas)
        if mids:
            condition = or_(condition, _inbox.c.header_message_id.in_(mids))
        found = connection.execute(
            select(_inbox.c.id, _inbox.c.sha256, _inbox.c.header_message_id, _inbox.c.rcpt_to)
            .where(condition).order_by(_inbox.c.id)).all()
        known = _Known()
        for r in found:
            known.add(int(r.id), r.sha256, r.header_message_id, r.rcpt_to or ())
        return known


class _Known:
    """Earlier inbox rows by content hash and by Message-ID, with their recipients."""

    def __init__(self) -> None:
        self.by_sha: dict[str, tuple[int, set[str]]] = {}
        self.by_mid: dict[str, tuple[int, set[str]]] = {}

    def add(self, key: int, sha: str, mid: str, rcpt: Iterable[str]) -> None:
        for index, value in ((self.by_sha, sha), (self.by_mid, mid)):
            if value:
                index.setdefault(value, (key, set()))[1].update(rcpt)

    def match(self, sha: str, mid: str, rcpt: frozenset[str]) -> int | None:
        """The earlier row this message is, or None.

        The rows with the same content, else those with the same Message-ID, count when
        together they were already addressed to every recipient found now (one copy per
        alias, then a migrated copy addressed to both, is still one message).
        """
        for index, value in ((self.by_sha, sha), (self.by_mid, mid)):
            if value in index and rcpt <= index[value][1]:
                return index[value][0]
        return None


# --- for `causerie imap status` ---------------------------------------------------------------


@dataclass(frozen=True)
class MailboxState:
    mailbox: str
    uidvalidity: int
    last_uid: int
    lease_owner: str
    lease_expires: datetime | None
    seen: int


def mailbox_states(engine: Engine) -> dict[str, MailboxState]:
    """Every mailbox's stored position, lease and number of UIDs ingested."""
    with engine.connect() as connection:
        counts: dict[str, int] = dict(connection.execute(
            select(_seen.c.mailbox, func.count()).group_by(_seen.c.mailbox)).all())
        return {row.mailbox: MailboxState(row.mailbox, int(row.uidvalidity), int(row.last_uid),
                                          row.lease_owner, row.lease_expires,
                                          int(counts.get(row.mailbox, 0)))
                for row in connection.execute(select(_state)).all()}
