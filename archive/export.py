"""mbox export: the raw messages of a community or a conversation, byte for byte.

Each message is written as stored in the raw store (`App.raw_mail`), in mboxrd form:

- a `From_` line: `From <sender> <asctime of its date, UTC>`, the sender being the
  message's From address (`MAILER-DAEMON` when it has none);
- the bytes, with every line that starts with zero or more `>` and then `From ` given one
  more `>` (mboxrd quoting, reversible, unlike mboxo's);
- a blank line, the separator (a message that does not end with a newline gets one first:
  the only change the format forces).

Python's `mailbox.mbox` reads the result back message by message; undoing the quoting
(`>From ` -> `From `, as an mboxrd reader and our importer do) gives the stored bytes.
Redacted messages (tombstones, whose raw mail is gone) are left out and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO

from sqlalchemy import Connection, select

from bridge.app import App
from bridge.models import Community, InboxItem, Message

_message = Message.__table__  # type: ignore[attr-defined]
_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]

_FROM = re.compile(rb"^(>*From )", re.MULTILINE)


class ExportError(Exception):
    """The export cannot be done as asked; the message says why."""


@dataclass
class ExportReport:
    community: str
    conversation: int | None
    messages: int = 0
    bytes: int = 0
    redacted: int = 0       # tombstones left out
    missing: int = 0        # raw mail not found (no inbox row, or its blob is gone)

    def as_json(self) -> dict[str, object]:
        return {"community": self.community, "conversation": self.conversation,
                "messages": self.messages, "bytes": self.bytes, "redacted": self.redacted,
                "missing": self.missing}


def quote(raw: bytes) -> bytes:
    """mboxrd quoting: one more `>` before `From ` at the start of any line."""
    return _FROM.sub(rb">\1", raw)


def unquote(raw: bytes) -> bytes:
    """The inverse of `quote`."""
    return re.sub(rb"^>(>*From )", rb"\1", raw, flags=re.MULTILINE)


def from_line(address: str, date: object) -> bytes:
    sender = address.strip().replace(" ", "") or "MAILER-DAEMON"
    when = date.strftime("%a %b %d %H:%M:%S %Y") if hasattr(date, "strftime") else \
        "Thu Jan 01 00:00:00 1970"
    return f"From {sender} {when}\n".encode("ascii", "replace")


def mbox_entry(raw: bytes, address: str, date: object) -> bytes:
    """One message as an mboxrd entry (From_ line, quoted bytes, blank line)."""
    body = quote(raw)
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line(address, date) + body + b"\n"


def _rows(connection: Connection, community_id: int, conversation: int | None) -> list:  # type: ignore[type-arg]
    query = (select(_message.c.id, _message.c.status, _message.c.from_address,
                    _message.c.date, _inbox.c.raw, _inbox.c.sha256, _inbox.c.id.label("inbox"))
             .join(_inbox, _inbox.c.id == _message.c.inbox_id, isouter=True)
             .where(_message.c.community_id == community_id)
             .order_by(_message.c.date, _message.c.id))
    if conversation is not None:
        query = query.where(_message.c.conversation_id == conversation)
    return list(connection.execute(query))


def export_mbox(app: App, out: IO[bytes], community: str,
                conversation: int | None = None) -> ExportReport:
    """Write the community's (or one conversation's) raw messages to `out`, oldest first."""
    report = ExportReport(community, conversation)
    with app.reader.connect() as connection:
        community_id = connection.execute(select(_community.c.id).where(
            _community.c.slug == community)).scalar()
        if community_id is None:
            raise ExportError(f"no community named {community!r}")
        rows = _rows(connection, int(community_id), conversation)
    if conversation is not None and not rows:
        raise ExportError(f"no conversation #{conversation} in {community!r}")
    for row in rows:
        if row.status == "redacted":
            report.redacted += 1
            continue
        if row.inbox is None:
            report.missing += 1
            continue
        if row.raw is not None:
            raw = bytes(row.raw)
        else:
            try:
                raw = app.blobs.get(row.sha256)
            except (OSError, ValueError):
                report.missing += 1
                continue
        entry = mbox_entry(raw, row.from_address, row.date)
        out.write(entry)
        report.messages += 1
        report.bytes += len(entry)
    out.flush()
    return report
