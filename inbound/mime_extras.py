"""Corporate mail reality: Outlook's winmail.dat, calendar invitations, signed and encrypted
mail. Each function turns one of them into something the archive can show."""

from __future__ import annotations

import re
from email.message import Message

from bridge.charsets import content_charset, decode_text
from inbound.parse import Attachment

TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")
SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature",
                   "application/pgp-signature")


def expand_tnef(attachments: list[Attachment]) -> tuple[str, list[Attachment]]:
    """Replace winmail.dat (TNEF) by the body and files it wraps.

    Returns the text body found in it ("" when none) and the new attachment list. A TNEF
    part that cannot be decoded is kept as it is.
    """
    from tnefparse.tnef import TNEF  # imported here: rarely needed, and slow to import

    body = ""
    result: list[Attachment] = []
    for attachment in attachments:
        is_tnef = attachment.content_type in TNEF_TYPES or \
            attachment.filename.lower() == "winmail.dat"
        if not is_tnef:
            result.append(attachment)
            continue
        try:
            tnef = TNEF(attachment.payload, do_checksum=False)
        except Exception:  # tnefparse raises many kinds on damaged data
            result.append(attachment)
            continue
        raw_body = tnef.body or b""
        text = raw_body.decode("utf-8", "replace") if isinstance(raw_body, bytes) \
            else str(raw_body)
        body = body or text.replace("\x00", "").strip()
        for inner in tnef.attachments:
            name = inner.long_filename() or inner.name or "attachment"
            result.append(Attachment(filename=str(name)[:255],
                                     content_type="application/octet-stream",
                                     payload=bytes(inner.data), inline=False, content_id=""))
    return body, result


_UNFOLD = re.compile(r"\r?\n[ \t]")


def _ics_fields(text: str) -> list[tuple[str, str]]:
    fields = []
    for line in _UNFOLD.sub("", text).splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.append((name.split(";", 1)[0].upper(), value.strip()))
    return fields


def _ics_unescape(value: str) -> str:
    return (value.replace("\\n", "\n").replace("\\N", "\n").replace("\\,", ",")
            .replace("\\;", ";").replace("\\\\", "\\"))


def _ics_date(value: str) -> str:
    match = re.match(r"(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2}))?", value)
    if not match:
        return value
    year, month, day, hour, minute = match.groups()
    if hour is None:
        return f"{year}-{month}-{day}"
    return f"{year}-{month}-{day} {hour}:{minute}" + (" UTC" if value.endswith("Z") else "")


def calendar_summary(ics: str) -> str:
    """A readable summary of the first event of an iCalendar invitation."""
    fields = _ics_fields(ics)
    event: dict[str, str] = {}
    inside = False
    method = ""
    for name, value in fields:
        if name == "METHOD":
            method = value.upper()
        if name == "BEGIN" and value.upper() == "VEVENT":
            inside = True
        elif name == "END" and value.upper() == "VEVENT":
            break
        elif inside and name not in event:
            event[name] = _ics_unescape(value)
    if not event:
        return ""
    title = {"CANCEL": "Cancelled", "REPLY": "Reply to invitation"}.get(method, "Invitation")
    lines = [f"[{title}] {event.get('SUMMARY', '(no title)')}"]
    if "DTSTART" in event:
        when = _ics_date(event["DTSTART"])
        if "DTEND" in event:
            when += " – " + _ics_date(event["DTEND"])
        lines.append(f"When: {when}")
    if event.get("LOCATION"):
        lines.append(f"Where: {event['LOCATION']}")
    if event.get("ORGANIZER"):
        lines.append(f"Organizer: {re.sub(r'(?i)^mailto:', '', event['ORGANIZER'])}")
    if event.get("DESCRIPTION"):
        lines.append("")
        lines.append(event["DESCRIPTION"].strip())
    return "\n".join(lines)


def find_calendar(message: Message, attachments: list[Attachment]) -> str:
    """The iCalendar text of a message, from a text/calendar part or an .ics file."""
    for part in message.walk():
        if part.get_content_type() == "text/calendar":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return decode_text(payload, content_charset(part))
    for attachment in attachments:
        if attachment.content_type == "text/calendar" or \
                attachment.filename.lower().endswith(".ics"):
            return attachment.payload.decode("utf-8", "replace")
    return ""


def security(message: Message, text: str) -> str:
    """"signed", "encrypted" or "" — S/MIME and PGP, MIME or inline."""
    content_type = message.get_content_type()
    smime_type = str(message.get_param("smime-type", "") or "").lower()
    if content_type == "multipart/encrypted" or (
            content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime")
            and smime_type != "signed-data") or "-----BEGIN PGP MESSAGE-----" in text:
        return "encrypted"
    if content_type == "multipart/signed" or smime_type == "signed-data" \
            or "-----BEGIN PGP SIGNED MESSAGE-----" in text:
        return "signed"
    return ""


_PGP_HEADER = re.compile(r"-----BEGIN PGP SIGNED MESSAGE-----\r?\n(?:Hash:[^\n]*\n)*\r?\n")
_PGP_SIGNATURE = re.compile(r"\r?\n?-----BEGIN PGP SIGNATURE-----.*?-----END PGP SIGNATURE-----"
                            r"\s*", re.DOTALL)


def strip_inline_pgp(text: str) -> str:
    """The signed text of an inline PGP-signed message, without its armour."""
    text = _PGP_HEADER.sub("", text, count=1)
    text = _PGP_SIGNATURE.sub("", text)
    return re.sub(r"^- -", "-", text, flags=re.MULTILINE)  # dash-escaping (RFC 4880 7.1)


def without_signatures(attachments: list[Attachment]) -> list[Attachment]:
    """Detached signature parts (smime.p7s, signature.asc) are not attachments to show."""
    return [a for a in attachments if a.content_type not in SIGNATURE_TYPES]
