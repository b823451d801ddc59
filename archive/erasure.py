"""Erasure: a message's content, or a person's identity, removed from the whole archive.

`redact` empties a message (subject, text, quoted part, signature, HTML), deletes its
attachments (their blobs too, when no other attachment or raw mail uses the same content),
its raw mail (the inbox row's bytes set to NULL and its blob deleted, for every inbox row
holding the same bytes) and the copies still waiting to be sent, and leaves a tombstone:
status "redacted", with when and why. The search index follows by itself: the triggers of
migration 0002 drop a message from the index when its status leaves "published" (SQLite:
the FTS5 row is deleted with the old values; PostgreSQL: the vector is set to NULL).

`forget_person` replaces a person's identity everywhere the archive holds it: their name
and addresses in their messages and in the text of every message that quotes their address
(or their full name, when it has at least two words — a lone first name would erase other
people's words), their `Person.display_name` and `Address` rows (placeholders
`forgotten-<id>@invalid`), the envelope and recipient lists of mail, held messages and
deliveries. The raw mail of their messages is erased (it holds the original headers);
their memberships and sign-in links are removed; `Person.forgotten_at` is set. What they
wrote stays, under the placeholder name.

Both write an `AuditLog` row, which names the message or the person's id, never the erased
address, and run in one transaction; blobs are deleted after it commits (a crash in between
leaves an unreferenced blob, never a row pointing to nothing that was meant to stay).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Text, cast, delete, func, insert, or_, select, update

from bridge.app import App
from bridge.models import (
    Address,
    Attachment,
    AuditLog,
    Community,
    Conversation,
    Delivery,
    Held,
    InboxItem,
    LoginToken,
    Membership,
    Message,
    Person,
)

_message = Message.__table__  # type: ignore[attr-defined]
_attachment = Attachment.__table__  # type: ignore[attr-defined]
_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]
_held = Held.__table__  # type: ignore[attr-defined]
_audit = AuditLog.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]
_token = LoginToken.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]


class ErasureError(Exception):
    """Nothing to erase as asked; the message says why."""


@dataclass
class Erased:
    """What an erasure removed (counts, and the ids of the messages touched)."""

    messages: list[int] = field(default_factory=list)
    raw_mails: int = 0
    blobs: int = 0
    attachments: int = 0
    deliveries: int = 0
    rewritten: int = 0          # other messages whose text named the person
    addresses: int = 0
    memberships: int = 0
    placeholder: str = ""

    def as_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": self.messages, "raw_mails": self.raw_mails,
                                  "blobs": self.blobs, "attachments": self.attachments,
                                  "deliveries": self.deliveries}
        if self.placeholder:
            record.update(placeholder=self.placeholder, rewritten=self.rewritten,
                          addresses=self.addresses, memberships=self.memberships)
        return record


def _audit_row(connection: Connection, now: datetime, actor: str, action: str, target: str,
               details: dict[str, Any]) -> None:
    connection.execute(insert(_audit).values(at=now, actor=actor, action=action,
                                             target=target, details=details))


def _erase_raw(connection: Connection, inbox_ids: set[int], erased: Erased,
               doomed: set[str]) -> None:
    """Drop the raw bytes of these inbox rows and of every row holding the same bytes."""
    if not inbox_ids:
        return
    digests = set(connection.execute(select(_inbox.c.sha256).where(
        _inbox.c.id.in_(sorted(inbox_ids)))).scalars())
    if not digests:
        return
    erased.raw_mails += connection.execute(update(_inbox).where(
        _inbox.c.sha256.in_(sorted(digests))).values(raw=None)).rowcount
    doomed.update(d for d in digests if d)


def _erase_attachments(connection: Connection, message_ids: list[int], erased: Erased,
                       doomed: set[str]) -> None:
    rows = connection.execute(select(_attachment.c.id, _attachment.c.sha256).where(
        _attachment.c.message_id.in_(message_ids))).all()
    if not rows:
        return
    connection.execute(delete(_attachment).where(
        _attachment.c.id.in_([row.id for row in rows])))
    erased.attachments += len(rows)
    for digest in {row.sha256 for row in rows if row.sha256}:
        still = connection.execute(select(func.count()).select_from(_attachment).where(
            _attachment.c.sha256 == digest)).scalar_one()
        if not still:
            doomed.add(digest)


def _delete_blobs(app: App, doomed: set[str], erased: Erased) -> None:
    """Delete the blobs that nothing in the database needs any more (after the commit)."""
    if not doomed:
        return
    with app.engine.connect() as connection:
        used = set(connection.execute(select(_attachment.c.sha256).where(
            _attachment.c.sha256.in_(sorted(doomed)))).scalars())
        used.update(connection.execute(select(_inbox.c.sha256).where(
            _inbox.c.sha256.in_(sorted(doomed)), _inbox.c.raw.is_not(None))).scalars())
    for digest in sorted(doomed - used):
        try:
            path = app.blobs.path(digest)
        except ValueError:
            continue
        if path.exists():
            app.blobs.delete(digest)
            erased.blobs += 1


def redact(app: App, message_id: str, reason: str, *, community: str | None = None,
           actor: str = "cli") -> Erased:
    """Erase a message's content (every copy of that Message-ID, or the one in
    `community`), leaving a tombstone with when and why."""
    message_id = message_id.strip().strip("<>")
    if not reason.strip():
        raise ErasureError("a reason is required (it is kept in the tombstone)")
    now = app.clock.now()
    erased = Erased()
    doomed: set[str] = set()
    with app.engine.begin() as connection:
        query = select(_message.c.id, _message.c.inbox_id).where(
            _message.c.message_id == message_id)
        if community:
            query = query.join(_community, _community.c.id == _message.c.community_id).where(
                _community.c.slug == community)
        rows = connection.execute(query).all()
        if not rows:
            raise ErasureError(f"no archived message <{message_id}>"
                               + (f" in {community!r}" if community else ""))
        ids = [int(row.id) for row in rows]
        connection.execute(update(_message).where(_message.c.id.in_(ids)).values(
            subject="", text="", quoted="", signature="", html="", has_attachments=False,
            status="redacted", redacted_reason=reason[:2000], redacted_at=now))
        _erase_attachments(connection, ids, erased, doomed)
        erased.deliveries = connection.execute(delete(_delivery).where(
            _delivery.c.message_id.in_(ids), _delivery.c.status == "pending")).rowcount
        inbox_ids = {int(row.inbox_id) for row in rows if row.inbox_id is not None}
        _erase_raw(connection, inbox_ids, erased, doomed)
        if inbox_ids:
            connection.execute(update(_held).where(_held.c.inbox_id.in_(sorted(inbox_ids)))
                               .values(subject=""))
        erased.messages = ids
        _audit_row(connection, now, actor, "message.redact", f"<{message_id}>",
                   {"reason": reason, "messages": ids, "community": community or "",
                    "raw_mails": erased.raw_mails, "attachments": erased.attachments})
    _delete_blobs(app, doomed, erased)
    return erased


def _replace_all(text: str, needles: list[str], placeholder: str) -> str:
    for needle in needles:
        if needle and needle.lower() in text.lower():
            text = re.sub(re.escape(needle), placeholder, text, flags=re.IGNORECASE)
    return text


def forget_person(app: App, email: str, *, actor: str = "cli") -> Erased:
    """Replace a person's name and addresses across the archive (see the module's notes)."""
    address = email.strip().strip("<>").lower()
    now = app.clock.now()
    erased = Erased()
    doomed: set[str] = set()
    with app.engine.begin() as connection:
        person_id = connection.execute(select(_address.c.person_id).where(
            _address.c.email == address)).scalar()
        if person_id is None:
            raise ErasureError(f"no person with the address {address!r}")
        person = connection.execute(select(_person).where(_person.c.id == person_id)).one()
        addresses = list(connection.execute(select(_address.c.id, _address.c.email).where(
            _address.c.person_id == person_id).order_by(_address.c.id)))
        emails = [row.email for row in addresses]
        placeholder = f"forgotten-{person_id}@invalid"
        name_placeholder = f"forgotten-{person_id}"
        erased.placeholder = placeholder
        names = {person.display_name.strip()} if person.display_name else set()
        own = connection.execute(select(_message.c.id, _message.c.inbox_id,
                                        _message.c.from_name).where(or_(
            _message.c.author_id == person_id,
            _message.c.from_address.in_(emails)))).all()
        names.update(row.from_name.strip() for row in own if row.from_name)
        full_names = sorted((n for n in names if len(n.split()) >= 2), key=len, reverse=True)
        needles = sorted(emails, key=len, reverse=True)
        own_ids = [int(row.id) for row in own]
        if own_ids:
            connection.execute(update(_message).where(_message.c.id.in_(own_ids)).values(
                from_name=name_placeholder, from_address=placeholder, signature=""))
        erased.messages = own_ids
        # Other messages (and their own) whose text names them: quoted headers, mentions.
        like = [column.ilike(f"%{needle}%") for needle in needles + full_names
                for column in (_message.c.text, _message.c.quoted, _message.c.signature,
                               _message.c.html, _message.c.subject)]
        for row in connection.execute(select(
                _message.c.id, _message.c.text, _message.c.quoted, _message.c.signature,
                _message.c.html, _message.c.subject, _message.c.to_cc).where(or_(*like))):
            values = {column: _replace_all(_replace_all(getattr(row, column), needles,
                                                        placeholder),
                                           full_names, name_placeholder)
                      for column in ("text", "quoted", "signature", "html", "subject")}
            connection.execute(update(_message).where(_message.c.id == row.id)
                               .values(**values))
            erased.rewritten += row.id not in own_ids
        mentions = or_(*(cast(_message.c.to_cc, Text).ilike(f"%{e}%") for e in emails))
        for row in connection.execute(select(_message.c.id, _message.c.to_cc).where(mentions)):
            if any(a in emails for a in (row.to_cc or [])):
                connection.execute(update(_message).where(_message.c.id == row.id).values(
                    to_cc=[placeholder if a in emails else a for a in row.to_cc]))
        # Raw mail of their messages, and every inbox row they sent or were sent to.
        inbox_ids = {int(row.inbox_id) for row in own if row.inbox_id is not None}
        inbox_ids.update(int(i) for i in connection.execute(select(_inbox.c.id).where(
            _inbox.c.mail_from.in_(emails))).scalars())
        _erase_raw(connection, inbox_ids, erased, doomed)
        connection.execute(update(_inbox).where(_inbox.c.mail_from.in_(emails))
                           .values(mail_from=placeholder))
        connection.execute(update(_held).where(_held.c.sender.in_(emails))
                           .values(sender=placeholder))
        erased.deliveries = connection.execute(delete(_delivery).where(
            _delivery.c.person_id == person_id, _delivery.c.status == "pending")).rowcount
        connection.execute(update(_delivery).where(_delivery.c.address.in_(emails))
                           .values(address=placeholder, raw=None))
        for position, row in enumerate(addresses):
            connection.execute(update(_address).where(_address.c.id == row.id).values(
                email=placeholder if position == 0
                else f"forgotten-{person_id}-{position}@invalid"))
        erased.addresses = len(addresses)
        erased.memberships = connection.execute(delete(_membership).where(
            _membership.c.person_id == person_id)).rowcount
        connection.execute(delete(_token).where(_token.c.person_id == person_id))
        connection.execute(update(_person).where(_person.c.id == person_id).values(
            display_name=name_placeholder, forgotten_at=now, organisation_id=None))
        _audit_row(connection, now, actor, "person.forget", f"person:{person_id}",
                   {"messages": len(own_ids), "rewritten": erased.rewritten,
                    "addresses": erased.addresses, "raw_mails": erased.raw_mails,
                    "memberships": erased.memberships})
    _delete_blobs(app, doomed, erased)
    return erased
