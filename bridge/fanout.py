"""Who receives a copy of a new post: the delivery rows written with the message.

Written in the same transaction as the message (the database is the bus), with SQLAlchemy
Core: one query for the recipients, one multi-row insert. The rules:

- members whose delivery mode is "each" and whose delivery is not disabled (bounces);
- not the author, unless they asked for copies of their own posts;
- not a member who was already in the original's To/Cc (they have it), unless they asked
  for duplicate copies;
- not a member who muted the conversation.

`dedupe_key` = `post:<message>:<person>` makes a retried transaction harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from bridge.models import Address, Delivery, Membership, Mute, Person

_membership = Membership.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]


def post_recipients(connection: Connection, *, community_id: int, conversation_id: int,
                    author_id: int | None, to_cc: Iterable[str]) -> list[tuple[int, str]]:
    """(person id, address) of each member who gets this post by email now."""
    already = {address.lower() for address in to_cc}
    query = (
        select(_membership.c.person_id, _membership.c.duplicate_copies, _person.c.own_copies,
               _address.c.email, _mute.c.person_id.label("muted"))
        .join(_person, _person.c.id == _membership.c.person_id)
        .join(_address, _address.c.person_id == _membership.c.person_id)
        .outerjoin(_mute, and_(_mute.c.person_id == _membership.c.person_id,
                               _mute.c.conversation_id == conversation_id))
        .where(_membership.c.community_id == community_id,
               _membership.c.delivery_mode == "each",
               _membership.c.disabled_reason == "",
               _person.c.forgotten_at.is_(None))
        .order_by(_membership.c.person_id, _address.c.primary.desc(), _address.c.id)
    )
    chosen: dict[int, str] = {}
    addresses: dict[int, set[str]] = {}
    skip: set[int] = set()
    for row in connection.execute(query):
        person_id = row.person_id
        addresses.setdefault(person_id, set()).add(row.email)
        if person_id not in chosen:
            chosen[person_id] = row.email  # the primary address comes first
        if row.muted is not None:
            skip.add(person_id)
        if person_id == author_id and not row.own_copies:
            skip.add(person_id)
        if row.email in already and not row.duplicate_copies:
            skip.add(person_id)
    return [(person_id, address) for person_id, address in chosen.items()
            if person_id not in skip]


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
    """Insert the delivery rows of a new post; returns how many."""
    recipients = post_recipients(connection, community_id=community_id,
                                 conversation_id=conversation_id, author_id=author_id,
                                 to_cc=to_cc)
    rows = delivery_rows(message_pk, community_id, recipients, now)
    if rows:
        connection.execute(_delivery.insert(), rows)
    return len(rows)
