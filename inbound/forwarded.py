"""Bringing an existing thread in: the messages inside a forward.

Someone forwards a thread to the community ("Fwd:", "TR:", "WG:", "RV:"), and the thread
should become a conversation whose messages keep their original authors and dates, with the
forwarder's own words as a note on top. Mail clients write the forwarded messages as blocks
of header lines, in their own language, newest first:

    ---------- Forwarded message ---------        Gmail (and "Message transféré")
    Begin forwarded message:                       Apple Mail ("Début du message réexpédié")
    -------- Forwarded Message --------            Thunderbird ("Message transféré")
    -------- Original Message --------             older clients
    From: … Sent: … To: … Subject: …               Outlook, also De/Envoyé/À/Objet and
                                                   Von/Gesendet/An/Betreff, often in *bold*

`split_forward` finds those blocks, reads each one's author, date and subject, and returns
the messages oldest first. A message forwarded as an attachment (message/rfc822) is read by
the caller with its real headers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr, parsedate_to_datetime

from bridge.addresses import normalise_address
from inbound.reply_text import split_reply

_SEPARATOR = re.compile(
    r"^\s*(?:(?:-{2,}|_{2,}|={2,})\s*)?(?:"
    r"forwarded message|original message|message transf[ée]r[ée]|message d'origine|"
    r"weitergeleitete nachricht|urspr[üu]ngliche nachricht|mensaje reenviado|"
    r"mensaje original|messaggio inoltrato|messaggio originale|doorgestuurd bericht|"
    r"oorspronkelijk bericht"
    r")\s*(?:-{2,}|_{2,}|={2,})?\s*$"
    r"|^\s*(?:begin forwarded message|d[ée]but du message r[ée]exp[ée]di[ée]|"
    r"anfang der weitergeleiteten nachricht|inicio del mensaje reenviado)\s*:?\s*$"
    r"|^\s*_{10,}\s*$",
    re.IGNORECASE,
)
# "**From:** x" as well as "From: x". Each "\s*\*?\s*" is written "\s*(?:\*\s*)?" (the same
# text): the first form splits a run of blanks between its two "\s*" in every way, which is
# quadratic on a long blank line that is not a field (the fuzzer's run stalled on one).
_FIELD = re.compile(r"^\s*(?:\*\s*)?(?P<key>[^\W\d][\w \-]{0,20}?)\s*(?:\*\s*)?:"
                    r"\s*(?:\*\s*)?(?P<value>.*)$")
FROM_KEYS = {"from", "de", "von", "da", "van", "fra", "från", "od"}
DATE_KEYS = {"date", "sent", "envoyé", "envoye", "gesendet", "datum", "enviado", "inviato",
             "fecha", "data", "verzonden", "sendt"}
SUBJECT_KEYS = {"subject", "objet", "sujet", "betreff", "asunto", "oggetto", "onderwerp",
                "assunto", "emne", "ämne"}
OTHER_KEYS = {"to", "à", "a", "an", "pour", "para", "cc", "bcc", "cci", "aan", "reply-to",
              "répondre à", "importance", "til", "till"}
KNOWN_KEYS = FROM_KEYS | DATE_KEYS | SUBJECT_KEYS | OTHER_KEYS

_MONTHS = {
    **{m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                   "sep", "oct", "nov", "dec"], 1)},
    **{m: i for i, m in enumerate(["janv", "févr", "mars", "avr", "mai", "juin", "juil",
                                   "août", "sept", "oct", "nov", "déc"], 1)},
    "fevr": 2, "aout": 8, "dec": 12, "janvier": 1, "février": 2, "fevrier": 2, "avril": 4,
    "juillet": 7, "septembre": 9, "octobre": 10, "novembre": 11, "décembre": 12,
    "decembre": 12, "januar": 1, "februar": 2, "märz": 3, "maerz": 3, "juni": 6, "juli": 7,
    "okt": 10, "dez": 12, "dezember": 12, "oktober": 10, "mrz": 3, "ene": 1, "abr": 4,
    "ago": 8, "dic": 12, "gen": 1, "mag": 5, "giu": 6, "lug": 7, "set": 9, "ott": 10,
    "mei": 5, "okt.": 10,
}
_DATE_PARTS = re.compile(
    r"(?P<a>\d{1,2})?\.?\s*(?P<month>[^\W\d_]{3,9})\.?\s+(?P<b>\d{1,2})?,?\s*(?P<year>\d{4})"
    r"(?:[^\d]{1,6}(?P<hour>\d{1,2})[:h.](?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"\s*(?P<ampm>[ap]\.?m\.?)?)?",
    re.IGNORECASE,
)
_NUMERIC_DATE = re.compile(
    r"(?P<d>\d{1,2})[./](?P<m>\d{1,2})[./](?P<y>\d{4})(?:\D{1,4}(?P<hour>\d{1,2})[:h]"
    r"(?P<minute>\d{2}))?")
_MAILTO = re.compile(r"\[mailto:([^\]\s]+)\]|<([^<>\s]+@[^<>\s]+)>|(\S+@\S+\.\w+)")


@dataclass(frozen=True)
class ForwardedMessage:
    author_name: str
    author_address: str      # "" when the forward shows only a name
    date: datetime | None
    subject: str
    text: str                # the message's own words (its quotes and signature stripped)
    message_id: str = ""     # real when forwarded as an attachment, else derived


@dataclass(frozen=True)
class Forward:
    note: str                               # the forwarder's own words
    messages: list[ForwardedMessage]        # oldest first


def _month(name: str) -> int | None:
    """A month from its name or abbreviation in English, French, German, Spanish, …"""
    name = name.lower().rstrip(".")
    return _MONTHS.get(name) or _MONTHS.get(name[:4]) or _MONTHS.get(name[:3])


def parse_loose_date(value: str) -> datetime | None:
    """A date as mail clients print it in forwarded headers, in English, French, German…"""
    value = value.strip().strip("*").strip()
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        pass
    for match in _DATE_PARTS.finditer(value):
        month = _month(match.group("month"))
        day_text = match.group("a") or match.group("b")
        if month is None or day_text is None:
            continue
        hour = int(match.group("hour") or 0)
        ampm = (match.group("ampm") or "").replace(".", "").lower()
        if ampm == "pm" and hour < 12:
            hour += 12
        if ampm == "am" and hour == 12:
            hour = 0
        try:
            return datetime(int(match.group("year")), month, int(day_text), hour,
                            int(match.group("minute") or 0), int(match.group("second") or 0),
                            tzinfo=UTC)
        except ValueError:
            continue
    numeric = _NUMERIC_DATE.search(value)
    if numeric:
        try:
            return datetime(int(numeric.group("y")), int(numeric.group("m")),
                            int(numeric.group("d")), int(numeric.group("hour") or 0),
                            int(numeric.group("minute") or 0), tzinfo=UTC)
        except ValueError:
            return None
    return None


def _author(value: str) -> tuple[str, str]:
    value = value.strip().strip("*").strip()
    found = _MAILTO.search(value)
    address = ""
    if found:
        address = normalise_address(next(g for g in found.groups() if g))
        name = _MAILTO.sub("", value).strip().strip('"').strip()
    else:
        name, raw = parseaddr(value)
        address = normalise_address(raw) if "@" in raw else ""
        name = name or (value if not address else "")
    return name.strip().strip('"').strip(), address


def _field(line: str) -> tuple[str, str] | None:
    match = _FIELD.match(line.replace("\t", " "))
    if not match:
        return None
    key = match.group("key").strip().lower()
    if key not in KNOWN_KEYS:
        return None
    return key, match.group("value").strip()


def _header_block(lines: list[str], start: int) -> tuple[int, dict[str, str]] | None:
    """The header block starting at `start` (after blank lines): its end and fields."""
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    fields: dict[str, str] = {}
    last = ""
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            break
        parsed = _field(line)
        if parsed is None:
            if last and fields and line.startswith((" ", "\t")):
                fields[last] += " " + line.strip()  # a wrapped value
                index += 1
                continue
            break
        key, value = parsed
        last = key
        fields.setdefault(key, value)
        index += 1
    has_from = any(key in FROM_KEYS for key in fields)
    has_other = any(key in DATE_KEYS | SUBJECT_KEYS for key in fields)
    if has_from and has_other:
        return index, fields
    return None


def _blocks(lines: list[str]) -> list[tuple[int, int, dict[str, str]]]:
    """(first line, line after the block, fields) for every forwarded-header block."""
    found = []
    index = 0
    while index < len(lines):
        line = lines[index]
        start = index
        if _SEPARATOR.match(line):
            block = _header_block(lines, index + 1)
            if block is not None:
                found.append((start, block[0], block[1]))
                index = block[0]
                continue
        elif _field(line) is not None and (index == 0 or not lines[index - 1].strip()
                                           or _SEPARATOR.match(lines[index - 1])):
            block = _header_block(lines, index)
            if block is not None and any(k in FROM_KEYS for k in
                                         [(_field(line) or ("", ""))[0]]):
                found.append((start, block[0], block[1]))
                index = block[0]
                continue
        index += 1
    return found


def _pick(fields: dict[str, str], keys: set[str]) -> str:
    return next((value for key, value in fields.items() if key in keys), "")


def derived_id(message: ForwardedMessage, domain: str) -> str:
    """A stable Message-ID for a forwarded message, so that forwarding the same thread
    twice archives each of its messages once."""
    seed = "\n".join([message.author_address or message.author_name,
                      message.date.isoformat() if message.date else "", message.subject,
                      " ".join(message.text.split())])
    return f"fwd-{hashlib.sha256(seed.encode('utf-8')).hexdigest()[:32]}@{domain}"


_FORWARD_WORDS = re.compile(r"forward|transf[ée]r|weitergeleitet|reenviado|inoltrato|"
                            r"doorgestuurd|r[ée]exp[ée]di", re.IGNORECASE)


def has_forward_marker(text: str) -> bool:
    """A line that says "forwarded" in so many words (Outlook's bare rule of underscores
    and "-----Original Message-----" start replies as well as forwards)."""
    return any(_SEPARATOR.match(line) and _FORWARD_WORDS.search(line)
               for line in text.splitlines())


def split_forward(text: str) -> Forward | None:
    """The forwarder's note and the forwarded messages (oldest first), or None."""
    lines = text.replace("\r\n", "\n").split("\n")
    blocks = _blocks(lines)
    if not blocks:
        return None
    note = "\n".join(lines[:blocks[0][0]])
    messages = []
    for position, (_, body_start, fields) in enumerate(blocks):
        body_end = blocks[position + 1][0] if position + 1 < len(blocks) else len(lines)
        body = "\n".join(lines[body_start:body_end]).strip("\n")
        name, address = _author(_pick(fields, FROM_KEYS))
        if not name and not address:
            continue
        messages.append(ForwardedMessage(
            author_name=name, author_address=address,
            date=parse_loose_date(_pick(fields, DATE_KEYS)),
            subject=_pick(fields, SUBJECT_KEYS).strip("*").strip(),
            text=split_reply(body).text.strip()))
    if not messages:
        return None
    messages.reverse()  # clients write the newest first
    return Forward(note=split_reply(note).text.strip(), messages=messages)
