"""Who receives a copy of a new post: the delivery rows written with the message.

Written in the same transaction as the message (the database is the bus), with SQLAlchemy
Core. The rules:

- members whose delivery mode is "each" and whose delivery is not disabled (bounces);
- not the author, unless they asked for copies of their own posts;
- not a member who was already in the original's To/Cc (they have it), unless they asked
  for duplicate copies;
- not a member who muted the conversation.

The query (`community_recipients`) and the choice (`choose`) are apart so that the
processor can read a community's members once for a whole batch of messages.
`dedupe_key` = `post:<message>:<person>` makes a retried transaction harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from bridge.models import Address, Delivery, Membership, Mute, Person

_membership = Membership.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Recipient:
    person_id: int
    address: str                   # the primary address: where copies go
    addresses: frozenset[str]      # all the person's addresses (for the To/Cc rule)
    own_copies: bool
    duplicate_copies: bool


def community_recipients(connection: Connection, community_id: int) -> list[Recipient]:
    """Members of a community who take every post by email now."""
    query = (
        select(_membership.c.person_id, _membership.c.duplicate_copies, _person.c.own_copies,
               _address.c.email)
        .join(_person, _person.c.id == _membership.c.person_id)
        .join(_address, _address.c.person_id == _membership.c.person_id)
        .where(_membership.c.community_id == community_id,
               _membership.c.delivery_mode == "each",
               _membership.c.disabled_reason == "",
               _person.c.forgotten_at.is_(None))
        .order_by(_membership.c.person_id, _address.c.primary.desc(), _address.c.id)
    )
    rows: dict[int, list[Any]] = {}
    for row in connection.execute(query):
        rows.setdefault(row.person_id, []).append(row)
    return [Recipient(person_id, group[0].email, frozenset(r.email for r in group),
                      bool(group[0].own_copies), bool(group[0].duplicate_copies))
            for person_id, group in rows.items()]


def community_mutes(connection: Connection, community_id: int) -> set[tuple[int, int]]:
    """(person, conversation) pairs muted in a community."""
    from bridge.models import Conversation

    conversation = Conversation.__table__  # type: ignore[attr-defined]
    return {(row.person_id, row.conversation_id) for row in connection.execute(
        select(_mute.c.person_id, _mute.c.conversation_id)
        .join(conversation, conversation.c.id == _mute.c.conversation_id)
        .where(conversation.c.community_id == community_id))}


def choose(recipients: Iterable[Recipient], mutes: set[tuple[int, int]], *,
           conversation_id: int, author_id: int | None, to_cc: Iterable[str]
           ) -> list[tuple[int, str]]:
    """(person id, address) of each recipient who gets this post."""
    already = {address.lower() for address in to_cc}
    chosen = []
    for recipient in recipients:
        if (recipient.person_id, conversation_id) in mutes:
            continue
        if recipient.person_id == author_id and not recipient.own_copies:
            continue
        if already & recipient.addresses and not recipient.duplicate_copies:
            continue
        chosen.append((recipient.person_id, recipient.address))
    return chosen


def delivery_rows(message_pk: int, community_id: int, recipients: list[tuple[int, str]],
                  now: datetime) -> list[dict[str, Any]]:
    return [{"dedupe_key": f"post:{message_pk}:{person_id}", "kind": "post",
             "message_id": message_pk, "community_id": community_id, "person_id": person_id,
             "address": address, "status": "pending", "attempts": 0, "next_attempt_at": now,
             "last_error": "", "created_at": now}
            for person_id, address in recipients]


def fan_out(connection: Connection, *, message_pk: int, community_id: int,
            conversation_id: int, author_id: int | None, to_cc: Iterable[str],
            now: datetime) -> int:
    """Insert the delivery rows of one new post; returns how many."""
    chosen = choose(community_recipients(connection, community_id),
                    community_mutes(connection, community_id),
                    conversation_id=conversation_id, author_id=author_id, to_cc=to_cc)
    rows = delivery_rows(message_pk, community_id, chosen, now)
    if rows:
        connection.execute(_delivery.insert(), rows)
    return len(rows)
