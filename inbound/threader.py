"""Thread step helpers: creating, counting and merging conversations.

The choice itself (`Processor.choose`, on what a batch knows) follows these rules:

In order: a known message among its In-Reply-To/References (the nearest ancestor first);
the conversation of the reply token it was sent to; a conversation of the same community
with the same normalised subject, active within the window; otherwise a new one. A reply
that arrived before its parent is re-linked when the parent comes (`relink_children`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from bridge.models import Conversation, Message, Mute
from inbound.parse import ParsedMail
from inbound.subjects import normalise_subject, strip_prefixes

_message = Message.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ThreadChoice:
    conversation_id: int | None   # None: a new conversation
    parent_id: int | None
    how: str                      # references, reply token, subject, new


def ancestors(parsed: ParsedMail) -> list[str]:
    """Message-IDs this message answers, nearest first."""
    ids = [parsed.in_reply_to] if parsed.in_reply_to else []
    ids += [ref for ref in reversed(parsed.references) if ref not in ids]
    return [i for i in ids if i != parsed.message_id]


def conversation_row(community_id: int, parsed: ParsedMail, author_id: int | None
                     ) -> dict[str, Any]:
    """The row of a new conversation that `parsed` starts (its counters are added with the
    batch's others: `inbound.batch.Batch.flush_counters`)."""
    subject = strip_prefixes(parsed.subject) or parsed.subject
    return {"community_id": community_id, "subject": subject[:500],
            "normalized_subject": normalise_subject(parsed.subject),
            "started_at": parsed.date, "last_activity": parsed.date, "message_count": 0,
            "author_id": author_id, "first_reply_at": None}


def refresh_conversation(connection: Connection, conversation_id: int) -> None:
    """Recompute a conversation's counters and root from its messages (after a merge)."""
    rows = connection.execute(
        select(_message.c.date, _message.c.subject, _message.c.author_id, _message.c.parent_id)
        .where(_message.c.conversation_id == conversation_id)
        .order_by(_message.c.date, _message.c.id)).all()
    if not rows:
        connection.execute(delete(_conversation).where(_conversation.c.id == conversation_id))
        return
    # The root is the earliest message that answers nothing here (a reply may carry an
    # earlier Date than the message it answers, or have arrived first).
    first = next((row for row in rows if row.parent_id is None), rows[0])
    connection.execute(update(_conversation).where(_conversation.c.id == conversation_id).values(
        message_count=len(rows), started_at=first.date,
        last_activity=max(row.date for row in rows),
        first_reply_at=rows[1].date if len(rows) > 1 else None,
        author_id=first.author_id,
        subject=(strip_prefixes(first.subject) or first.subject)[:500],
        normalized_subject=normalise_subject(first.subject)))


def relink_children(connection: Connection, community_id: int, message_pk: int,
                    message_id: str, conversation_id: int) -> set[int]:
    """Replies that arrived before this message become its children and join its
    conversation (their own conversation is merged into it). Returns the merged ones."""
    children = connection.execute(
        select(_message.c.id, _message.c.conversation_id)
        .where(_message.c.community_id == community_id,
               _message.c.in_reply_to == message_id,
               _message.c.id != message_pk)).all()
    if not children:
        return set()
    connection.execute(update(_message).where(
        _message.c.id.in_([c.id for c in children])).values(parent_id=message_pk))
    merged = {int(c.conversation_id) for c in children} - {conversation_id}
    for other in merged:
        connection.execute(update(_message).where(
            _message.c.conversation_id == other).values(
                conversation_id=conversation_id))
        muted = connection.execute(select(_mute.c.person_id).where(
            _mute.c.conversation_id == other)).scalars().all()
        already = set(connection.execute(select(_mute.c.person_id).where(
            _mute.c.conversation_id == conversation_id)).scalars())
        for person_id in set(muted) - already:
            connection.execute(insert(_mute).values(person_id=person_id,
                                                    conversation_id=conversation_id,
                                                    created_at=datetime.now(UTC)))
        connection.execute(delete(_conversation).where(_conversation.c.id == other))
    if merged:
        refresh_conversation(connection, conversation_id)
    return merged
