"""Parse step: raw bytes into the project's own `ParsedMail`, once per message.

mail-parser does the MIME walk and decoding (RFC 2047 words, broken charsets); this module
turns its result into a typed, normalised record and never raises on bad mail: what is
wrong is recorded in `defects` and a sensible value is used instead (the arrival time for a
missing or future date, a Message-ID derived from the content when there is none, so that
an MTA retrying the same message yields the same id).
"""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime

import mailparser

from bridge.addresses import normalise_address
from bridge.charsets import content_charset, decode_text, decode_words, header_text, header_values

# mail-parser logs "Email content 'mixed' not handled" for every multipart it walks.
logging.getLogger("mailparser").setLevel(logging.ERROR)

_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_MAX_FUTURE = timedelta(minutes=15)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    payload: bytes
    inline: bool
    content_id: str


@dataclass
class ParsedMail:
    message: Message                     # the stdlib message, for header-level rules
    message_id: str                      # without angle brackets
    in_reply_to: str
    references: list[str]
    subject: str
    from_address: str                    # normalised ("" when missing or invalid)
    from_name: str
    to: list[str]
    cc: list[str]
    date: datetime                       # aware UTC
    text: str                            # the text/plain body ("" when none)
    html: str                            # the text/html body as sent ("" when none)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        """A header's decoded value ("" when absent)."""
        return header_text(self.message, name)


def message_ids(value: str) -> list[str]:
    """The ids in an In-Reply-To or References header, in order, without brackets."""
    ids = _MSGID_RE.findall(value)
    if not ids and len(value.split()) == 1:  # no whitespace of any kind (\x0b, U+2028)
        ids = [value.strip().strip("<>")]  # a bare id, as some clients write it
    unique: list[str] = []
    for value_id in ids:
        if value_id not in unique:
            unique.append(value_id)
    return unique


def _storable(value: str) -> str:
    """Text a database can store: no NUL (PostgreSQL refuses it), no lone surrogates (what
    a broken charset or surrogateescape leaves; no UTF-8 encoder takes them)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def derived_message_id(raw: bytes, domain: str) -> str:
    return f"causerie-{hashlib.sha256(raw).hexdigest()[:32]}@{domain}"


def _addresses(values: list[str]) -> list[str]:
    """Normalised addresses of decoded header values (`header_values`), without repeats."""
    result = []
    for _, addr in getaddresses([_storable(v) for v in values]):
        normal = normalise_address(addr)
        if normal and normal not in result:
            result.append(normal)
    return result


def _date(message: Message, received_at: datetime, defects: list[str]) -> datetime:
    value = message.get("Date")
    if value is None:
        defects.append("no Date header: the arrival time is used")
        return received_at
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        defects.append(f"unreadable Date {str(value)[:60]!r}: the arrival time is used")
        return received_at
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if parsed > received_at + _MAX_FUTURE:
        defects.append("Date in the future: clamped to the arrival time")
        return received_at
    if parsed.year < 1980:
        defects.append("Date before 1980: the arrival time is used")
        return received_at
    return parsed


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return decode_text(payload, content_charset(part))


def _own_parts(message: Message) -> tuple[list[str], list[str]]:
    """Text and HTML bodies of the message itself, not of messages attached to it."""
    texts: list[str] = []
    htmls: list[str] = []
    if message.get_content_type() == "message/rfc822":
        return texts, htmls
    if message.is_multipart():
        for part in message.get_payload():  # type: ignore[union-attr]
            if isinstance(part, Message):
                inner_texts, inner_htmls = _own_parts(part)
                texts += inner_texts
                htmls += inner_htmls
        return texts, htmls
    if "attachment" in str(message.get("Content-Disposition", "")).lower():
        return texts, htmls
    if message.get_content_type() == "text/plain":
        texts.append(_decoded(message))
    elif message.get_content_type() == "text/html":
        htmls.append(_decoded(message))
    return texts, htmls


def _bodies(parsed: mailparser.MailParser) -> tuple[str, str]:
    if any(part.get_content_type() == "message/rfc822" for part in parsed.message.walk()):
        # mail-parser runs the attached message's text into the body; keep them apart.
        texts, htmls = _own_parts(parsed.message)
    else:
        texts, htmls = parsed.text_plain, parsed.text_html
    if not texts and not htmls and parsed.message.get_content_maintype() == "multipart" \
            and not parsed.message.is_multipart():
        # A multipart whose boundary is missing or never found: the parser leaves its body as
        # one text (with a defect); mail-parser returns no part of it. Keep it as the text.
        texts = [_decoded(parsed.message)]
    return ("\n".join(part for part in texts if part),
            "\n".join(part for part in htmls if part))


def _attachments(parsed: mailparser.MailParser, defects: list[str]) -> list[Attachment]:
    result = []
    for item in parsed.attachments:
        payload = item.get("payload") or ""
        try:
            data = (base64.b64decode(payload) if item.get("binary")
                    else payload.encode("utf-8", "surrogateescape"))
        except (ValueError, TypeError):
            defects.append(f"attachment {item.get('filename')!r} could not be decoded")
            continue
        disposition = (item.get("content-disposition") or "").lower()
        content_id = (item.get("content-id") or "").strip().strip("<>")
        result.append(Attachment(
            filename=_storable(decode_words(item.get("filename") or ""))[:255] or "attachment",
            content_type=_storable(item.get("mail_content_type")
                                   or "application/octet-stream").lower()[:200],
            payload=data,
            inline=disposition.startswith("inline") or (bool(content_id)
                                                        and not disposition),
            content_id=_storable(content_id)[:500],
        ))
    return result


def parse(raw: bytes, *, received_at: datetime, domain: str) -> ParsedMail:
    """Parse raw mail; never raises for malformed input (see `defects`)."""
    defects: list[str] = []
    try:
        parsed = mailparser.parse_from_bytes(raw)
        message = parsed.message
        text, html = _bodies(parsed)
        attachments = _attachments(parsed, defects)
        defects.extend(str(d) for d in (parsed.defects_categories or []))
    except Exception as exc:  # mail-parser fails in many ways on bad mail
        defects.append(f"MIME structure unreadable ({type(exc).__name__}): kept as text")
        try:
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
        except RecursionError:  # nesting deeper than the stdlib parser's recursion allows
            message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
                raw, headersonly=True)
        payload = message.get_payload(decode=True) if not message.is_multipart() else b""
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        html, attachments = "", []

    raw_id = message_ids(str(message.get("Message-ID", "")))
    if raw_id:
        message_id = raw_id[0][:900]
    else:
        message_id = derived_message_id(raw, domain)
        defects.append("no Message-ID: one was derived from the content")
    from_name, from_addr = parseaddr(_storable(header_text(message, "From")))
    from_address = normalise_address(from_addr) if from_addr else ""
    if not from_address:
        defects.append("no valid From address")
    # PostgreSQL text cannot hold NUL (SQLite can): drop it from every stored text value.
    text, html = _storable(text), _storable(html)
    subject = _storable(header_text(message, "Subject"))
    message_id, from_name = _storable(message_id), _storable(from_name)
    return ParsedMail(
        message=message,
        message_id=message_id,
        in_reply_to=(message_ids(_storable(str(message.get("In-Reply-To", "")))) or [""])[0],
        references=message_ids(_storable(str(message.get("References", ""))))[-50:],
        subject=subject[:998],
        from_address=from_address,
        from_name=from_name.strip().strip('"')[:200],
        to=_addresses(header_values(message, "To")),
        cc=_addresses(header_values(message, "Cc")),
        date=_date(message, received_at, defects),
        text=text,
        html=html,
        attachments=attachments,
        defects=defects,
    )
