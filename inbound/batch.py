"""What the processor reads once per batch instead of once per message.

Processing is dominated by small SQL statements, not by parsing. A `Batch` reads in a few
queries what every message of the batch needs — communities, senders, memberships, known
Message-IDs and early replies, conversations by subject, members who get copies — and
gathers what every message writes in bulk — conversation counters, delivery rows, the
inbox rows' outcomes — to flush them at the end of the transaction.

A message that fails is rolled back to its savepoint; what it would have changed in the
batch's maps is staged in a `Staged` and merged only when the message succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select, update

from bridge.fanout import Recipient, community_mutes, community_recipients
from bridge.models import (
    Address,
    Community,
    Conversation,
    Delivery,
    InboxItem,
    Membership,
    Message,
    Person,
)
from bridge.settings import Settings
from inbound.people import MemberInfo, Sender, is_staff_address
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


class Batch:
    def __init__(self, connection: Connection, settings: Settings, now: datetime,
                 parsed: list[Any]) -> None:
        self.connection = connection
        self.settings = settings
        self.now = now
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
        self._prefetch([p for p in parsed if p is not None])

    # --- reading, once ----------------------------------------------------------------------

    def _prefetch(self, parsed: list[Any]) -> None:
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
        person_ids = sorted({s.person_id for s in self.senders.values() if s.person_id})
        for chunk in _chunks(person_ids):
            for row in connection.execute(
                    select(_membership.c.community_id, _membership.c.person_id,
                           _membership.c.role, _membership.c.delivery_mode)
                    .where(_membership.c.person_id.in_(chunk))):
                self.members[(row.community_id, row.person_id)] = MemberInfo(
                    row.role, row.delivery_mode)
        ids = sorted({i for p in parsed for i in [p.message_id, *ancestors(p)]})
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
            self._recipients[community_id] = community_recipients(self.connection,
                                                                   community_id)
            self._mutes[community_id] = community_mutes(self.connection, community_id)
        return self._recipients[community_id], self._mutes[community_id]

    # --- writing, at the end ----------------------------------------------------------------

    def merge(self, staged: Staged) -> None:
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
        self.flush_counters()
        if self.deliveries:
            self.connection.execute(_delivery.insert(), self.deliveries)
            self.deliveries.clear()
        if self.outcomes:
            self.connection.execute(_FINISH, self.outcomes)
            self.outcomes.clear()
