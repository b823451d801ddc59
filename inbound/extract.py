"""Extract step: what a message says — its new words, the quoted rest, its signature, safe
HTML for the web view, and its attachments in the content store.

Done once per message (outside the database transaction: it is CPU work), whatever the
number of communities it goes to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bridge.blobs import BlobStore
from inbound.corporate import remove_banners, unwrap_links
from inbound.forwarded import Forward, ForwardedMessage, has_forward_marker, split_forward
from inbound.language import guess_language
from inbound.mime_extras import (
    calendar_summary,
    expand_tnef,
    find_calendar,
    security,
    strip_inline_pgp,
    without_signatures,
)
from inbound.parse import Attachment, ParsedMail, parse
from inbound.reply_html import html_to_text, split_html_reply
from inbound.reply_text import ReplyParts, split_reply
from inbound.sanitize import sanitise_html
from inbound.subjects import is_forward


@dataclass(frozen=True)
class StoredAttachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    content_id: str
    kept: bool          # False when over the size limit: recorded, not stored


@dataclass
class Extracted:
    text: str
    quoted: str
    signature: str
    html: str
    language: str
    attachments: list[StoredAttachment] = field(default_factory=list)
    # A forwarded thread's messages, oldest first (then `text` is the forwarder's note).
    forwarded: list[ForwardedMessage] = field(default_factory=list)
    security: str = ""   # "signed" or "encrypted" (S/MIME, PGP), "" otherwise

    @property
    def is_empty(self) -> bool:
        return (not self.text.strip() and not self.forwarded and self.security != "encrypted"
                and not any(not a.inline for a in self.attachments))


def split_body(parsed: ParsedMail) -> ReplyParts:
    """The reply parts of a message.

    When there is an HTML part and its quote container (gmail_quote, blockquote type=cite,
    divRplyFwdMsg, ...) is found, the HTML decides: clients mark the quote there exactly,
    while their text/plain rendering of it is a guess (Outlook's has no `>` at all).
    Otherwise the text/plain body is split on its own.
    """
    if parsed.html.strip():
        parts = split_html_reply(parsed.html)
        if parts.quoted.strip() or not parsed.text.strip():
            return parts
    if parsed.text.strip():
        return split_reply(parsed.text)
    return ReplyParts(text="", quoted="", signature="")


def refused_type(attachment: Attachment, denied: tuple[str, ...]) -> bool:
    """Whether an attachment's type or file extension is on the deny list."""
    name = attachment.filename.lower()
    return any(attachment.content_type == entry or (entry.startswith(".")
                                                    and name.endswith(entry))
               for entry in denied)


def store_attachments(attachments: list[Attachment], blobs: BlobStore | None,
                      max_size: int, denied: tuple[str, ...] = ()) -> list[StoredAttachment]:
    """Write each attachment to the content store (when `blobs` is given, it fits and its
    type is allowed); the others are recorded, not stored."""
    stored = []
    for attachment in attachments:
        kept = len(attachment.payload) <= max_size and not refused_type(attachment, denied)
        digest = hashlib.sha256(attachment.payload).hexdigest()
        if kept and blobs is not None:
            blobs.put(attachment.payload, digest)
        stored.append(StoredAttachment(
            filename=attachment.filename, content_type=attachment.content_type,
            size=len(attachment.payload), sha256=digest, inline=attachment.inline,
            content_id=attachment.content_id, kept=kept))
    return stored


def attached_messages(parsed: ParsedMail) -> list[ForwardedMessage]:
    """Messages forwarded as attachments (message/rfc822), with their real headers."""
    found = []
    for attachment in parsed.attachments:
        if attachment.content_type != "message/rfc822":
            continue
        inner = parse(attachment.payload, received_at=parsed.date, domain="invalid")
        parts = split_body(inner)
        found.append(ForwardedMessage(
            author_name=inner.from_name, author_address=inner.from_address, date=inner.date,
            subject=inner.subject, text=unwrap_links(remove_banners(parts.text)),
            message_id="" if inner.message_id.startswith("causerie-") else inner.message_id))
    return sorted(found, key=lambda m: m.date or parsed.date)


def forwarded_thread(parsed: ParsedMail) -> Forward | None:
    """The thread inside a forward, when the message is one."""
    attached = attached_messages(parsed)
    body = parsed.text if parsed.text.strip() else html_to_text(parsed.html)
    if not (is_forward(parsed.subject) or has_forward_marker(body) or attached):
        return None
    inline = split_forward(body)
    if inline is None and not attached:
        return None
    if inline is None:
        return Forward(note=split_reply(body).text.strip(), messages=attached)
    return Forward(note=inline.note, messages=attached + inline.messages)


def extract(parsed: ParsedMail, blobs: BlobStore | None, max_attachment_size: int,
            denied_types: tuple[str, ...] = ()) -> Extracted:
    """Everything the archive keeps of a message; `blobs=None` stores nothing (explain)."""
    tnef_body, attachments = expand_tnef(parsed.attachments)
    attachments = without_signatures(attachments)
    status = security(parsed.message, parsed.text)
    if "-----BEGIN PGP SIGNED MESSAGE-----" in parsed.text:
        parsed.text = strip_inline_pgp(parsed.text)
    if tnef_body and not parsed.text.strip() and not parsed.html.strip():
        parsed.text = tnef_body
    forward = forwarded_thread(parsed)
    parts = split_body(parsed) if forward is None else ReplyParts(forward.note, "", "")
    text = unwrap_links(remove_banners(parts.text))
    invitation = find_calendar(parsed.message, attachments)
    if invitation:
        summary = calendar_summary(invitation)
        text = f"{text}\n\n{summary}" if text.strip() else summary
    html = sanitise_html(parsed.html) if parsed.html else ""
    if not text.strip() and not parsed.text.strip() and parsed.html.strip():
        text = html_to_text(parsed.html).strip()  # nothing was recognised as quoted
    return Extracted(
        text=text,
        quoted=parts.quoted,
        signature=parts.signature,
        html=html,
        language=guess_language(text or parsed.subject),
        attachments=store_attachments(attachments, blobs, max_attachment_size, denied_types),
        forwarded=forward.messages if forward else [],
        security=status,
    )
