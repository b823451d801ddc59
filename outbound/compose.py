"""Each recipient's copy of a post, composed from the stored message and its raw mail.

The work is split so that a fan-out to 10,000 people parses the original once:

- `build_skeleton(raw)` (once per message) parses the original with the stdlib, finds the
  parts that carry the body (text/plain and text/html, inside alternative/related/mixed),
  re-encodes them as UTF-8 quoted-printable with a marker line where the footer goes, and
  serialises the whole tree once. The result is a list of byte chunks with footer slots
  between them. Attachments and other parts are left exactly as they were (same
  boundaries, same encodings). A message with no body part to extend (only attachments,
  or PGP/S-MIME `multipart/signed`/`encrypted`, whose signature a footer would break) is
  wrapped in `multipart/mixed` with the footer as a part of its own.
- `PostContext` (once per message) holds the skeleton and every header that is the same
  for all recipients: the author's headers as they sent them (Message-ID, In-Reply-To,
  References, Date, To, Cc...), From (rewritten for strict DMARC domains), Subject
  (`[tag]`, `[EXTERNAL]`), the list headers.
- `Composer.compose_post(context, recipient)` (per recipient) adds Reply-To and
  List-Unsubscribe (they carry the recipient's tokens), renders the two footers in the
  recipient's language, quoted-printable-encodes only the footers (QP is line-based, so
  encoded chunks concatenate), joins the chunks and signs with DKIM. Nothing per
  recipient is kept once the bytes are sent.

Headers removed from the original: the author's DKIM/ARC signatures and
Authentication-Results (our footer and subject tag modify the message, so they could only
fail; we sign with our own key instead), Return-Path/Delivered-To (the next hop writes
them), Reply-To/Sender/Errors-To, read-receipt requests (they would send every member's
receipt to the author), Bcc, List-*/Precedence/Archived-At and our loop header (we write
our own).
"""

from __future__ import annotations

import binascii
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message as MimeMessage
from email.parser import BytesParser
from email.utils import formatdate, getaddresses, make_msgid
from html import escape as html_escape

from bridge.charsets import (
    content_charset,
    decode_text,
    mime_payload,
    readable_header,
    text_codec,
)
from bridge.i18n import Catalogues, normalise_language
from bridge.tokens import make_token, reply_token
from outbound.listheaders import (
    LOOP_HEADER,
    ListAddresses,
    clean_text,
    format_address,
    header_line,
    raw_line,
)

_MARK = "CAUSERIEFOOTERSLOT{}X"
_COMPAT = email_policy.compat32.clone(linesep="\r\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")

REMOVED_HEADERS = frozenset({
    "return-path", "delivered-to", "x-original-to", "envelope-to",
    "dkim-signature", "domainkey-signature", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "authentication-results",
    "reply-to", "sender", "errors-to", "bcc", "resent-bcc",
    "disposition-notification-to", "return-receipt-to", "x-confirm-reading-to",
    "precedence", "archived-at", "x-auto-response-suppress", LOOP_HEADER.lower(),
    "content-length", "mime-version", "content-type", "content-transfer-encoding",
    "x-original-from",
})
_MIME_HEADERS = ("content-type", "content-transfer-encoding")


# --- the original's structure ------------------------------------------------------------------

@dataclass(frozen=True)
class Skeleton:
    """The serialised body with footer slots, and the top-level MIME headers that go with it."""

    mime_head: bytes
    chunks: tuple[bytes, ...]
    slots: tuple[str, ...]  # "text" or "html", one per gap between chunks

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def _is_attachment(part: MimeMessage) -> bool:
    return (part.get("Content-Disposition") or "").strip().lower().startswith("attachment")


def _body_leaves(part: MimeMessage) -> list[MimeMessage]:
    """The parts that show the message's text, to which a footer is added."""
    kind = part.get_content_type()
    if kind in ("text/plain", "text/html"):
        return [] if _is_attachment(part) else [part]
    if not part.is_multipart():
        return []
    children: list[MimeMessage] = [child for child in part.get_payload()
                                   if isinstance(child, MimeMessage)]
    if kind == "multipart/alternative":
        leaves: list[MimeMessage] = []
        for child in children:
            if child.get_content_type() in ("text/plain", "text/html", "multipart/related"):
                leaves.extend(_body_leaves(child))
        return leaves
    if kind in ("multipart/signed", "multipart/encrypted"):
        return []
    if children and not _is_attachment(children[0]):
        return _body_leaves(children[0])
    return []


def _decode_text(part: MimeMessage) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(payload or "").encode("utf-8", "surrogateescape")
    charset = text_codec(content_charset(part) or "us-ascii")
    for candidate in (charset, "utf-8"):
        try:
            text = payload.decode(candidate)
            break
        except ValueError:  # UnicodeDecodeError, or a codec's own UnicodeError
            continue
    else:
        text = decode_text(payload, "windows-1252" if charset in ("us-ascii", "utf-8")
                           else charset)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (binascii: fast, and line-based)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _set_text(part: MimeMessage, text: str) -> None:
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "quoted-printable"
    if part.get("Content-Type") is None:
        part["Content-Type"] = "text/plain"
    part.set_param("charset", "utf-8")
    part.set_payload(binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii"))


def _mark(part: MimeMessage, index: int) -> str:
    text = _decode_text(part)
    marker = _MARK.format(index)
    if part.get_content_type() == "text/html":
        ends = [found.start() for found in re.finditer(r"</body\s*>", text, re.IGNORECASE)]
        cut = ends[-1] if ends else len(text)
        _set_text(part, f"{text[:cut]}\n{marker}\n{text[cut:]}")
        return "html"
    _set_text(part, f"{text.rstrip(chr(10))}\n\n{marker}\n")
    return "text"


def _footer_part(index: int) -> MimeMessage:
    part = MimeMessage()
    part["Content-Type"] = "text/plain"
    part["Content-Disposition"] = "inline"
    _set_text(part, _MARK.format(index) + "\n")
    return part


def _wrap(message: MimeMessage) -> None:
    """Make `message` a multipart/mixed of [its former content, a footer part]."""
    inner = MimeMessage()
    for name, value in message.items():
        if name.lower().startswith("content-"):
            inner[name] = value
    inner.set_payload(mime_payload(message))
    if not inner.get("Content-Type"):
        inner["Content-Type"] = "text/plain"
    for name in {n.lower() for n in message if n.lower().startswith("content-")}:
        del message[name]
    message["Content-Type"] = "multipart/mixed"
    message.set_payload([inner, _footer_part(0)])
    message.set_boundary(make_msgid("causerie").strip("<>").replace("@", "."))


def build_skeleton(raw: bytes) -> Skeleton:
    message = BytesParser(policy=email_policy.compat32).parsebytes(raw)
    leaves = _body_leaves(message)
    slots: list[str] = []
    if leaves:
        slots = [_mark(part, index) for index, part in enumerate(leaves)]
    elif message.is_multipart() and message.get_content_type() == "multipart/mixed":
        message.attach(_footer_part(0))
        slots = ["text"]
    else:
        _wrap(message)
        slots = ["text"]
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_COMPAT).flatten(message)
    data = out.getvalue()
    end = _HEADER_END.search(data)
    head, body = (data[:end.start()], data[end.end():]) if end else (data, b"")
    mime_head = b"MIME-Version: 1.0\r\n" + b"".join(
        line + b"\r\n" for name, line in _header_fields(head) if name in _MIME_HEADERS)
    chunks: list[bytes] = []
    rest = body
    for index in range(len(slots)):
        marker = _MARK.format(index).encode("ascii") + b"\r\n"
        before, found, rest = rest.partition(marker)
        if not found:
            raise ValueError("footer marker lost while serialising the message")
        chunks.append(before)
    chunks.append(rest)
    return Skeleton(mime_head=mime_head, chunks=tuple(chunks), slots=tuple(slots))


def _header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, the field's raw bytes with folding, no final CRLF) in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n", head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        fields.append((name, line))
    return fields


def split_raw(raw: bytes) -> tuple[bytes, bytes]:
    end = _HEADER_END.search(raw)
    return (raw[:end.start()], raw[end.end():]) if end else (raw, b"")


def decoded_header(value: bytes) -> str:
    """A header's value, RFC 2047 decoded, unfolded, on one line."""
    return clean_text(readable_header(value.decode("utf-8", "surrogateescape")
                                      .split(":", 1)[-1]))


# --- subjects ----------------------------------------------------------------------------------

EXTERNAL_MARK = "[EXTERNAL]"


def list_subject(subject: str, tag: str, external: bool) -> str:
    """The subject with `[tag]` and the external marker, never doubled on replies."""
    subject = clean_text(subject)
    lowered = subject.lower()
    prefixes = []
    tag = clean_text(tag).strip("[]")
    if tag and f"[{tag.lower()}]" not in lowered:
        prefixes.append(f"[{tag}]")
    if external and EXTERNAL_MARK.lower() not in lowered:
        prefixes.append(EXTERNAL_MARK)
    if not prefixes:
        return subject
    match = re.match(r"^((?:\s*(?:re|fwd?|tr|aw|wg|sv|rv|réf)\s*:\s*)+)", subject, re.I)
    if match:  # keep "Re: " first so clients thread and show the reply as a reply
        return f"{match.group(1).strip()} {' '.join(prefixes)} {subject[match.end():]}".strip()
    return f"{' '.join(prefixes)} {subject}".strip()


# --- per message -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostInfo:
    """What composing needs to know about a stored post (loaded by the sender)."""

    message_pk: int
    message_id: str
    conversation_id: int
    community_id: int
    community_slug: str
    community_name: str
    subject_tag: str
    reply_policy: str             # "personal" or "community"
    author_id: int | None
    author_name: str
    author_address: str
    author_external: bool
    author_organisation: str
    subject: str                  # stored subject, used when the raw mail has none
    raw: bytes


@dataclass(frozen=True)
class PostContext:
    info: PostInfo
    lists: ListAddresses
    head: bytes                   # every header line shared by all recipients
    skeleton: Skeleton
    from_rewritten: bool
    footer: dict[str, object] = field(default_factory=dict)
    reply_to: bytes = b""          # Reply-To line with a placeholder for the reply address
    # Footers rendered once per language and slot (filled while composing, see _footer).
    footers: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    person_id: int
    address: str
    language: str


class Composer:
    """Builds copies; holds what every copy needs (settings-derived, read-only)."""

    def __init__(self, *, secret: bytes, domain: str, base_url: str, instance_name: str,
                 catalogues: Catalogues, default_language: str = "en",
                 rewrite_from: Callable[[str], bool] = lambda address: False,
                 sign: Callable[[bytes], bytes] | None = None) -> None:
        self.secret = secret
        self.domain = domain
        self.base_url = base_url
        self.instance_name = instance_name
        self.catalogues = catalogues
        self.default_language = default_language
        self.rewrite_from = rewrite_from
        self.sign = sign

    # -- addresses and tokens
    def envelope_sender(self, delivery_id: int) -> str:
        """VERP: a bounce to this address names the delivery, hence its recipient."""
        return f"bounces+{make_token(self.secret, 'bounces', delivery_id)}@{self.domain}"

    def reply_address(self, person_id: int, conversation_id: int) -> str:
        return f"reply+{reply_token(self.secret, person_id, conversation_id)}@{self.domain}"

    def private_address(self, person_id: int, message_pk: int) -> str:
        return f"private+{make_token(self.secret, 'private', person_id, message_pk)}@{self.domain}"

    def lists(self, slug: str, name: str) -> ListAddresses:
        return ListAddresses(slug=slug, name=name, domain=self.domain, base_url=self.base_url)

    # -- per message
    def post_context(self, info: PostInfo) -> PostContext:
        lists = self.lists(info.community_slug, info.community_name)
        head_raw, _ = split_raw(info.raw)
        fields = _header_fields(head_raw)
        rewrite = bool(info.author_address) and self.rewrite_from(info.author_address)
        lines: list[bytes] = []
        seen_message_id = False
        subject_done = False
        for name, line in fields:
            if name in REMOVED_HEADERS or name.startswith("list-"):
                continue
            if name == "message-id":
                if seen_message_id:
                    continue
                seen_message_id = True
            if name == "from" and rewrite:
                continue
            if name == "cc" and rewrite:
                continue
            if name == "subject":
                if subject_done:
                    continue
                subject_done = True
                lines.append(header_line("Subject", list_subject(
                    decoded_header(line), info.subject_tag, info.author_external)))
                continue
            lines.append(line + b"\r\n")
        if not subject_done:
            lines.append(header_line("Subject", list_subject(
                info.subject, info.subject_tag, info.author_external)))
        if not seen_message_id:
            lines.append(raw_line("Message-ID", f"<{info.message_id}>"))
        if not any(name == "date" for name, _ in fields):
            lines.append(raw_line("Date", formatdate(localtime=False, usegmt=True)))
        if rewrite:
            author = format_address(info.author_name, info.author_address)
            via = f"{info.author_name or info.author_address.split('@')[0]} via " \
                  f"{info.community_name}"
            lines.append(header_line("From", format_address(via, lists.posting)))
            originals = [line for name, line in fields if name == "cc"]
            cc = [format_address(clean_text(n), a) for n, a in getaddresses(
                [decoded_header(value) for value in originals]) if a]
            if info.author_address.lower() not in {a.lower() for _, a in getaddresses(cc)}:
                cc.append(author)
            lines.append(header_line("Cc", ", ".join(cc)))
            lines.append(header_line("X-Original-From", author))
        skeleton = build_skeleton(info.raw)
        lines.append(skeleton.mime_head)
        lines.append(lists.static_headers())
        lines.append(raw_line("Archived-At", f"<{lists.message_url(info.message_id)}>"))
        lines.append(header_line(LOOP_HEADER, clean_text(self.instance_name) or "causerie"))
        if info.reply_policy == "community":
            lines.append(header_line("Reply-To", format_address(info.community_name,
                                                                lists.posting)))
        footer: dict[str, object] = {
            "community": clean_text(info.community_name),
            "conversation_url": lists.conversation_url(info.conversation_id),
            "author": clean_text(info.author_name) or info.author_address,
            "external": info.author_external,
            "organisation": clean_text(info.author_organisation),
            "posting_address": lists.posting,
            "help_address": lists.command("help"),
            "archive_url": lists.archive_url,
        }
        return PostContext(info=info, lists=lists, head=b"".join(lines), skeleton=skeleton,
                           from_rewritten=rewrite, footer=footer,
                           reply_to=reply_to_template(info.community_name, self.domain))

    # -- per recipient
    def footer_values(self, context: PostContext, recipient: Recipient) -> dict[str, str]:
        """The per-recipient values of the footers (the rest is in `context.footer`)."""
        info = context.info
        person = recipient.person_id
        reply = self.reply_address(person, info.conversation_id)
        return {
            "reply_address": reply,
            "private_address": self.private_address(person, info.message_pk),
            "mute_url": context.lists.mute_url(
                make_token(self.secret, "mute", person, info.conversation_id)),
            "mute_mailto": f"mailto:{reply}?subject=mute",
            "unsubscribe_token": make_token(self.secret, "unsubscribe", person,
                                            info.community_id),
        }

    def _footer(self, context: PostContext, language: str, slot: str) -> list[str]:
        """The footer of `slot` in `language`, rendered once per message: literal text
        alternating with the names of per-recipient values (rendering a Jinja template with
        a dozen translated strings per copy would cost more than everything else)."""
        key = f"{slot}:{language}"
        parts = context.footers.get(key)
        if parts is None:
            values: dict[str, object] = dict(context.footer)
            values["delivery_mailto"] = (f"mailto:{context.lists.command('help')}"
                                         "?subject=delivery%20daily")
            for name in _PER_RECIPIENT:
                values[name] = f"\x00{name}\x00"
            text = self.catalogues.render(f"email/footer.{'html' if slot == 'html' else 'txt'}",
                                          language, **values)
            parts = re.split(r"\x00(\w+)\x00", text if text.endswith("\n") else text + "\n")
            context.footers[key] = parts
        return parts

    def compose_post(self, context: PostContext, recipient: Recipient) -> bytes:
        info = context.info
        language = normalise_language(recipient.language, self.default_language)
        values = self.footer_values(context, recipient)
        values["unsubscribe_url"] = context.lists.unsubscribe_url(values["unsubscribe_token"])
        head = [context.head]
        if info.reply_policy != "community":
            placeholder = f"{_REPLY_PLACEHOLDER}@{self.domain}".encode("ascii")
            head.append(context.reply_to.replace(placeholder,
                                                 values["reply_address"].encode("ascii")))
        head.append(context.lists.unsubscribe_header(values["unsubscribe_token"]))
        rendered: dict[str, bytes] = {}
        body: list[bytes] = [context.skeleton.chunks[0]]
        for slot, chunk in zip(context.skeleton.slots, context.skeleton.chunks[1:],
                               strict=True):
            if slot not in rendered:
                parts = self._footer(context, language, slot)
                escape = html_escape if slot == "html" else str
                text = "".join(part if index % 2 == 0 else escape(values[part])
                               for index, part in enumerate(parts))
                rendered[slot] = qp(text)
            body.append(rendered[slot])
            body.append(chunk)
        message = b"".join(head) + b"\r\n" + b"".join(body)
        if self.sign is not None:
            message = self.sign(message) + message
        return message


_PER_RECIPIENT = ("reply_address", "private_address", "mute_url", "mute_mailto",
                  "unsubscribe_url")
# Same length as a real reply address's local part, so that folding the Reply-To line of one
# message once and replacing the placeholder gives the exact line for every recipient.
_REPLY_PLACEHOLDER = "reply+" + "x" * 32


def reply_to_template(name: str, domain: str) -> bytes:
    address = f"{_REPLY_PLACEHOLDER}@{domain}"
    if _needs_encoding(name):
        return header_line("Reply-To", format_address(name, address))
    return raw_line("Reply-To", _plain_address(name, address))


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9 !#$%&'*+/=?^_`{|}~.-]*$")


def _needs_encoding(name: str) -> bool:
    return not _PLAIN_NAME.match(name)


def _plain_address(name: str, address: str) -> str:
    name = name.strip()
    return f'"{name}" <{address}>' if name else address
