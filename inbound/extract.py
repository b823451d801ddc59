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
from inbound.language import guess_language
from inbound.parse import Attachment, ParsedMail
from inbound.reply_html import html_to_text, split_html_reply
from inbound.reply_text import ReplyParts, split_reply
from inbound.sanitize import sanitise_html


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

    @property
    def is_empty(self) -> bool:
        return not self.text.strip() and not any(not a.inline for a in self.attachments)


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


def store_attachments(attachments: list[Attachment], blobs: BlobStore | None,
                      max_size: int) -> list[StoredAttachment]:
    """Write each attachment to the content store (when `blobs` is given and it fits)."""
    stored = []
    for attachment in attachments:
        kept = len(attachment.payload) <= max_size
        digest = hashlib.sha256(attachment.payload).hexdigest()
        if kept and blobs is not None:
            blobs.put(attachment.payload, digest)
        stored.append(StoredAttachment(
            filename=attachment.filename, content_type=attachment.content_type,
            size=len(attachment.payload), sha256=digest, inline=attachment.inline,
            content_id=attachment.content_id, kept=kept))
    return stored


def extract(parsed: ParsedMail, blobs: BlobStore | None, max_attachment_size: int
            ) -> Extracted:
    """Everything the archive keeps of a message; `blobs=None` stores nothing (explain)."""
    parts = split_body(parsed)
    text = unwrap_links(remove_banners(parts.text))
    html = sanitise_html(parsed.html) if parsed.html else ""
    if not text.strip() and not parsed.text.strip() and parsed.html.strip():
        text = html_to_text(parsed.html).strip()  # nothing was recognised as quoted
    return Extracted(
        text=text,
        quoted=parts.quoted,
        signature=parts.signature,
        html=html,
        language=guess_language(text or parsed.subject),
        attachments=store_attachments(parsed.attachments, blobs, max_attachment_size),
    )
