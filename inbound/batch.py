"""What the processor reads once per batch instead of once per message.

Processing is dominated by small SQL statements, not by parsing. A `Batch` reads in a few
queries what every message of the batch needs — communities, senders, memberships, known
Message-IDs and early replies, conversations by subject, members who get copies — and
gathers what every message writes in bulk — its new people, conversation, message and
attachments, conversation counters, delivery rows, the inbox rows' outcomes — to write
them with one statement per table (executemany) instead of one per message.

The rows a message adds get their ids when they are staged (`Batch.add`): on SQLite, whose
write transactions hold the database's only write lock (BEGIN IMMEDIATE), the next of the
table's rowids, as SQLite would give them; on PostgreSQL, the table's sequence. So a message
that answers another of the same batch points at it before either row is written.

What a message changes is staged in a `Staged` and merged into the batch only when the
message succeeded; a message that fails leaves nothing behind. A message that must run
statements of its own (a handler, a hold, a notice, re-linking early replies, ...) asks for
the connection with `Batch.direct`: the batch's pending rows and its own are written first
(so the statement sees them), in a savepoint of its own, rolled back if it fails.

If writing the pending rows fails (a row the checks above did not foresee), the processor
does the batch again in `immediate` mode: every row written when it is staged, inside the
message's savepoint, so that only the message at fault fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import (
    Connection,
    NestedTransaction,
    Table,
    bindparam,
    case,
    func,
    select,
    text,
    update,
)

from bridge.addresses import domain_of
from bridge.fanout import Recipient, community_mutes, community_recipients
from bridge.models import (
    Address,
    Attachment,
    Community,
    Conversation,
    Delivery,
    InboxItem,
    Membership,
    Message,
    OrganisationDomain,
    Person,
)
from bridge.settings import Settings
from inbound.people import MemberInfo, Sender, is_staff_address, organisation_of, person_row
from inbound.subjects import normalise_subject
from inbound.threader import ancestors

_community = Community.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]
_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_attachment = Attachment.__table__  # type: ignore[attr-defined]
_orgdomain = OrganisationDomain.__table__  # type: ignore[attr-defined]

# The tables a message adds rows to, in the order they are written (a row only points at
# rows of the tables before it, or of its own table written before it: a parent message).
_WRITE_ORDER: tuple[Table, ...] = (_person, _address, _conversation, _message, _attachment)
# The tables whose ids are given when a row is staged (others point at them).
_GIVEN_IDS = frozenset(t.name for t in (_person, _conversation, _message))

_LATEST = bindparam("latest", type_=_conversation.c.last_activity.type)
_COUNT = (update(_conversation).where(_conversation.c.id == bindparam("conversation"))
          .values(message_count=_conversation.c.message_count + bindparam("added"),
                  last_activity=case((_conversation.c.last_activity < _LATEST, _LATEST),
                                     else_=_conversation.c.last_activity),
                  first_reply_at=func.coalesce(
                      _conversation.c.first_reply_at,
                      bindparam("first_reply", type_=_conversation.c.first_reply_at.type))))
_FINISH = (update(_inbox).where(_inbox.c.id == bindparam("inbox"))
           .values(status=bindparam("status"), kind=bindparam("kind"),
                   reason=bindparam("reason"), attempts=bindparam("attempts"),
                   processed_at=bindparam("processed_at")))


def _chunks(values: list[Any], size: int = 500) -> list[list[Any]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


@dataclass
class Counter:
    added: int = 0
    latest: datetime | None = None
    first_reply: datetime | None = None


@dataclass
class Staged:
    """One message's changes to the batch's maps, merged only if it succeeds."""

    known: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    subjects: dict[tuple[int, str], int] = field(default_factory=dict)
    counters: list[tuple[int, datetime, bool]] = field(default_factory=list)
    children: dict[tuple[int, str], int] = field(default_factory=dict)
    # Conversations recounted from their messages by this message (a merge, a forward):
    # the batch's pending counters for them are already included.
    refreshed: set[int] = field(default_factory=set)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    senders: dict[str, Sender] = field(default_factory=dict)
    # Rows to insert, by table name, in the order staged (see `Batch.add`).
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The message's savepoint, once it ran a statement of its own (`Batch.direct`).
    savepoint: NestedTransaction | None = None
    # The batch's next ids when the message began (given back if it fails).
    next_ids: dict[str, int] = field(default_factory=dict)


class BulkWriteFailed(Exception):
    """Writing the rows staged by a batch's messages failed; the batch is to be done again
    with every row written at once (`Batch(immediate=True)`), to find the message at fault."""


class Batch:
    def __init__(self, connection: Connection, settings: Settings, now: datetime,
                 parsed: list[Any], forwarded_ids: Sequence[str] = (), *,
                 immediate: bool = False) -> None:
        """`forwarded_ids`: the Message-IDs of the forwarded threads' messages the batch may
        store besides its own, looked up with them (a thread forwarded again is known).
        `immediate`: write each row when it is staged, in the message's savepoint."""
        self.connection = connection
        self.settings = settings
        self.now = now
        self.immediate = immediate
        self.pending: dict[str, list[dict[str, Any]]] = {}  # merged, not yet written
        self._next_ids: dict[str, int] = {}  # SQLite: the next id of a table (when known)
        self._organisations: dict[str, int | None] = {}
        self.communities_by_slug: dict[str, Any] = {}
        self.communities_by_id: dict[int, Any] = {}
        for row in connection.execute(select(_community)):
            self.communities_by_slug[row.slug] = row
            self.communities_by_id[row.id] = row
        self.senders: dict[str, Sender] = {}
        self.members: dict[tuple[int, int], MemberInfo] = {}
        self.known: dict[tuple[int, str], tuple[int, int]] = {}
        self.children: dict[tuple[int, str], int] = {}
        self.subjects: dict[tuple[int, str], int] = {}
        self.counters: dict[int, Counter] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self._recipients: dict[int, list[Recipient]] = {}
        self._mutes: dict[int, set[tuple[int, int]]] = {}
        self._prefetch([p for p in parsed if p is not None], forwarded_ids)

    # --- reading, once ----------------------------------------------------------------------

    def _prefetch(self, parsed: list[Any], forwarded_ids: Sequence[str]) -> None:
        connection = self.connection
        addresses = sorted({p.from_address for p in parsed if p.from_address})
        for chunk in _chunks(addresses):
            for row in connection.execute(
                    select(_address.c.email, _person.c.id, _person.c.kind, _person.c.language)
                    .join(_person, _person.c.id == _address.c.person_id)
                    .where(_address.c.email.in_(chunk))):
                staff = is_staff_address(self.settings, row.email)
                self.senders[row.email] = Sender(
                    int(row.id), row.email, row.kind or ("staff" if staff else "guest"),
                    row.language or "")
        # The organisations of the new senders' domains (for the people `person` adds).
        domains = sorted({domain_of(a) for a in addresses if a not in self.senders})
        for chunk in _chunks(domains):
            self._organisations.update(dict.fromkeys(chunk))
            for row in connection.execute(
                    select(_orgdomain.c.domain, _orgdomain.c.organisation_id)
                    .where(_orgdomain.c.domain.in_(chunk))):
                self._organisations[row.domain] = row.organisation_id
        person_ids = sorted({s.person_id for s in self.senders.values() if s.person_id})
        for chunk in _chunks(person_ids):
            for row in connection.execute(
                    select(_membership.c.community_id, _membership.c.person_id,
                           _membership.c.role, _membership.c.delivery_mode)
                    .where(_membership.c.person_id.in_(chunk))):
                self.members[(row.community_id, row.person_id)] = MemberInfo(
                    row.role, row.delivery_mode)
        ids = sorted({i for p in parsed for i in [p.message_id, *ancestors(p)]}
                     | set(forwarded_ids))
        for chunk in _chunks(ids):
            for row in connection.execute(
                    select(_message.c.id, _message.c.community_id, _message.c.message_id,
                           _message.c.conversation_id).where(_message.c.message_id.in_(chunk))):
                self.known[(row.community_id, row.message_id)] = (row.id, row.conversation_id)
            for row in connection.execute(
                    select(_message.c.community_id, _message.c.in_reply_to)
                    .where(_message.c.in_reply_to.in_(chunk))):
                self.children[(row.community_id, row.in_reply_to)] = 1
        subjects = sorted({normalise_subject(p.subject) for p in parsed} - {""})
        window = self.settings.processor.thread_window_days
        if window > 0:
            since = self.now - timedelta(days=window)
            for chunk in _chunks(subjects):
                for row in connection.execute(
                        select(_conversation.c.id, _conversation.c.community_id,
                               _conversation.c.normalized_subject)
                        .where(_conversation.c.normalized_subject.in_(chunk),
                               _conversation.c.last_activity >= since)
                        .order_by(_conversation.c.last_activity)):
                    self.subjects[(row.community_id, row.normalized_subject)] = row.id

    def sender(self, address: str) -> Sender:
        found = self.senders.get(address)
        if found is not None:
            return found
        staff = is_staff_address(self.settings, address) if address else False
        return Sender(None, address, "staff" if staff else "guest", "")

    def member(self, community_id: int, person_id: int | None) -> MemberInfo | None:
        return self.members.get((community_id, person_id)) if person_id else None

    def recipients(self, community_id: int) -> tuple[list[Recipient], set[tuple[int, int]]]:
        if community_id not in self._recipients:
            self.flush_pending()
            self._recipients[community_id] = community_recipients(self.connection,
                                                                   community_id)
            self._mutes[community_id] = community_mutes(self.connection, community_id)
        return self._recipients[community_id], self._mutes[community_id]

    # --- a message's rows ---------------------------------------------------------------------

    def start(self) -> Staged:
        """The `Staged` of the next message (in `immediate` mode, with its savepoint)."""
        staged = Staged(next_ids=dict(self._next_ids))
        if self.immediate:
            self.direct(staged)
        return staged

    def direct(self, staged: Staged) -> Connection:
        """The connection, for a statement of the message being processed other than adding
        rows: the batch's pending rows are written, then (in the message's savepoint, opened
        here the first time) the rows the message staged so far, so that the statement sees
        them and a failure of the message undoes them."""
        if staged.savepoint is None:
            self.flush_pending()  # the messages before: outside this message's savepoint
            staged.savepoint = self.connection.begin_nested()
        self._write(staged.rows)
        # The statement may add or delete rows: ids are read again when next needed, and
        # what handlers may have changed is read again too.
        self._next_ids.clear()
        self._organisations.clear()
        return self.connection

    def add(self, staged: Staged, table: Table, row: dict[str, Any]) -> int | None:
        """Stage `row` for insertion into `table`; returns its id when the table's ids are
        given here (people, conversations, messages)."""
        row_id = None
        if table.name in _GIVEN_IDS:
            row_id = self._new_id(table)
            row = {"id": row_id} | row
        if self.immediate:
            self.connection.execute(table.insert(), row)
        else:
            staged.rows.setdefault(table.name, []).append(row)
        return row_id

    def person(self, staged: Staged, sender: Sender, name: str) -> int:
        """The sender's person id, staging the person (and address) on first contact."""
        if sender.person_id is not None:
            return sender.person_id
        domain = domain_of(sender.address)
        if domain not in self._organisations:
            self._organisations[domain] = organisation_of(self.connection, domain)
        person_id = self.add(staged, _person, person_row(name, self._organisations[domain],
                                                         self.now))
        assert person_id is not None
        self.add(staged, _address, {"email": sender.address, "person_id": person_id,
                                    "primary": True})
        return person_id

    def discard(self, staged: Staged) -> None:
        """The message failed: its savepoint is rolled back, its rows are dropped and the ids
        it took are given back (as SQLite gives them again after a rollback)."""
        if staged.savepoint is not None:
            staged.savepoint.rollback()
            self._next_ids.clear()
        else:
            self._next_ids = staged.next_ids
        staged.rows.clear()

    def _new_id(self, table: Table) -> int:
        if self.connection.dialect.name != "sqlite":
            return int(self.connection.execute(
                text("SELECT nextval(pg_get_serial_sequence(:table, 'id'))"),
                {"table": table.name}).scalar_one())
        next_id = self._next_ids.get(table.name)
        if next_id is None:
            # Every row given an id since the ids were last read is written (see `direct`).
            next_id = int(self.connection.execute(
                select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
        self._next_ids[table.name] = next_id + 1
        return next_id

    def _write(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Insert staged rows, one statement per table (and per set of columns)."""
        try:
            for table in _WRITE_ORDER:
                for _, run in groupby(rows.pop(table.name, []), key=dict.keys):
                    self.connection.execute(table.insert(), list(run))
        except Exception as exc:
            if self.immediate:
                raise
            raise BulkWriteFailed(f"{type(exc).__name__}: {exc}"[:500]) from exc

    def flush_pending(self) -> None:
        """Write the rows of the messages merged so far."""
        if self.pending:
            self._write(self.pending)

    # --- writing, at the end ----------------------------------------------------------------

    def merge(self, staged: Staged) -> None:
        for name, rows in staged.rows.items():
            self.pending.setdefault(name, []).extend(rows)
        self.known.update(staged.known)
        self.subjects.update(staged.subjects)
        self.senders.update(staged.senders)
        self.children.update(staged.children)
        for conversation_id in staged.refreshed:
            self.counters.pop(conversation_id, None)
        for conversation_id, date, is_reply in staged.counters:
            if conversation_id in staged.refreshed:
                continue
            counter = self.counters.setdefault(conversation_id, Counter())
            counter.added += 1
            counter.latest = date if counter.latest is None else max(counter.latest, date)
            if is_reply:
                counter.first_reply = (date if counter.first_reply is None
                                       else min(counter.first_reply, date))
        self.deliveries.extend(staged.deliveries)

    def merged(self, gone: set[int], into: int) -> None:
        """Conversations `gone` were merged into `into`: repoint what the maps hold."""
        for key, (pk, conversation_id) in list(self.known.items()):
            if conversation_id in gone:
                self.known[key] = (pk, into)
        for key, conversation_id in list(self.subjects.items()):
            if conversation_id in gone:
                self.subjects[key] = into

    def flush_counters(self) -> None:
        if self.counters:
            self.connection.execute(_COUNT, [
                {"conversation": conversation_id, "added": c.added, "latest": c.latest,
                 "first_reply": c.first_reply}
                for conversation_id, c in self.counters.items()])
            self.counters.clear()

    def flush(self) -> None:
        self.flush_pending()
        self.flush_counters()
        if self.deliveries:
            self.connection.execute(_delivery.insert(), self.deliveries)
            self.deliveries.clear()
        if self.outcomes:
            self.connection.execute(_FINISH, self.outcomes)
            self.outcomes.clear()
