"""Delivery status notifications, non-standard bounces and feedback (abuse) reports.

Nothing here decides what the processor does with a message; classify() does, after
`bounce_evidence` (headers and MIME types only, cheap) says a message may be a report.

How a report is read, most trustworthy source first (parse_dsn):

1. RFC 3464 delivery-status parts: one entry per recipient, with Action, Status and
   Diagnostic-Code (several recipients run together without a blank line are split apart).
2. An Amazon SES event that SNS sent as e-mail (a JSON body).
3. The human-readable text of the report, cut where the returned message begins (quoted,
   forwarded, QP/base64/CR-only and HTML reports included): DSN fields written into the text,
   then the line shapes MTAs use to list failed addresses ("<addr>:", "addr: 550 ...",
   "  * addr", "RCPT TO:<addr>", "could not be delivered to <addr>"), then Exim's
   X-Failed-Recipients, then a bounce forwarded as an attachment.
4. flufl.bounce's detectors (all_failures), for old MTAs the shapes above miss; only the
   addresses that the report's own text names are kept.
5. Last, for a report that a mail system visibly wrote and that carries the returned message
   as a MIME part: that message's To/Cc (Apache James never names the failed address).

The status is the entry's RFC 3463 code, replaced by a more specific code of the same class
from its diagnostic when it only says X.0.0 or X.4.7 ("gave up"), or X.0.0 derived from a bare
SMTP reply code or from the report saying the failure is permanent/temporary; "" when nothing
says. The reason slug comes from a specific status first, from the diagnostic's words when the
status is generic; `hard` is True only for a 5.x.x failure with a dead-address reason:

    hard:  userunknown hostunknown notaccept suspend hasmoved
    soft:  mailboxfull policy spam expired toobig systemerror systemfull networkerror content
           rejected protocol delayed other; "delivered" for a success DSN; "feedback"
"""

from __future__ import annotations

import base64
import binascii
import html as htmlmod
import json
import logging
import quopri
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from types import MappingProxyType

import flufl.bounce

from bridge.charsets import (
    content_charset,
    decode_text,
    header_text,
    header_values,
    mime_payload,
    raw_header_values,
    transported,
)

log = logging.getLogger("causerie.inbound")


@dataclass(frozen=True)
class BounceInfo:
    """What a report says about one recipient of a message we sent."""

    recipient: str  # the bounced address (lower-cased), "" if unknown
    status: str  # enhanced status code like "5.1.1", "" if unknown
    hard: bool  # permanent failure that means the address is dead
    reason: str  # short slug: "userunknown", "mailboxfull", "policy", "spam", "feedback", ...


# Reasons that mean the address itself is dead (only with a permanent, 5.x.x, failure). Every
# other reason (mailboxfull, policy, spam, expired, ...) is soft: the bounce scorer decides.
HARD_REASONS = frozenset({"userunknown", "hostunknown", "notaccept", "suspend", "hasmoved"})

# Reasons for DSN entries that are not failures at all.
SUCCESS_REASON = "delivered"
DELAYED_REASON = "delayed"

_DSN_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"}
)
_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
     "message/global-headers"}
)
_FEEDBACK_TYPE = "message/feedback-report"

# ---------------------------------------------------------------------------------------------
# Small helpers on messages (shared with autoreply and classify).
# ---------------------------------------------------------------------------------------------

_ADDR_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]"
_ADDR = rf"{_ADDR_CHARS}+@[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?"
# A match starts where a run of address characters starts (the leftmost address `search`
# finds starts there anyway): tried from every position of a long run without "@", the
# pattern was quadratic (a mangled From of 100,000 characters took 30 s to classify).
ADDR_RE = re.compile(rf"(?<!{_ADDR_CHARS}){_ADDR}")
_FULL_ADDR_RE = re.compile(rf"^{_ADDR}$")


# The common shapes of a From field — `addr`, `Name <addr>`, `addr (Name)` — with nothing
# in them that the full parser could read differently (no quotes, commas, dots or
# parentheses in the name, no dot at either end of the local part): their address is read
# directly. classify() reads the From address several times a message, and
# email.utils.getaddresses was the largest part of classifying a plain post.
_PLAIN_LOCAL = r"[A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*"
_PLAIN_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?"
_PLAIN_FROM_RE = re.compile(
    rf"^(?:[\w \-']*<({_PLAIN_LOCAL}@{_PLAIN_DOMAIN})>"
    rf"|({_PLAIN_LOCAL}@{_PLAIN_DOMAIN})(?:\s+\([\w \-']*\))?)$")


def plain_address(text: str) -> str | None:
    """The address of `text` as written when it has one of the common shapes that
    email.utils.getaddresses reads the same way (see _PLAIN_FROM_RE), else None."""
    plain = _PLAIN_FROM_RE.match(text.strip())
    if plain is None or ".." in text:
        return None
    return plain.group(1) or plain.group(2)


def normalise_address(text: str) -> str:
    """The bare, lower-cased address in `text` (a header value or an addr-spec), or ""."""
    text = text.strip()
    if not text:
        return ""
    plain = plain_address(text)
    if plain is not None:
        return plain.lower()
    pairs = getaddresses([text])
    for _, addr in pairs:
        addr = addr.strip().strip("<>").strip().lower()
        if "@" in addr and _FULL_ADDR_RE.match(addr):
            return addr
    found = ADDR_RE.search(text)
    return found.group(0).strip(".").lower() if found else ""


def header_addresses(msg: Message, *names: str) -> list[str]:
    """All addresses of the given address headers, lower-cased, in order, without duplicates."""
    out: list[str] = []
    for name in names:
        for value in header_values(msg, name):
            for _, addr in getaddresses([value]):
                addr = addr.strip().strip("<>").lower()
                if "@" in addr and addr not in out:
                    out.append(addr)
    return out


def content_type(msg: Message) -> str:
    """The part's content type, lower-cased, read from the raw header (fast under any policy).

    A missing or broken Content-Type gives the part's default type (text/plain, or
    message/rfc822 inside multipart/digest), as RFC 2045 says.
    """
    values = raw_header_values(msg, "Content-Type")
    # A folded Content-Type without its ";" ("text/plain\n charset=...") still names its type.
    words = values[0].split(";")[0].split() if values else []
    ctype = words[0].lower() if words else ""
    if "/" not in ctype:
        try:
            return msg.get_default_type()
        except Exception:
            return "text/plain"
    return ctype


_REPORT_TYPE_RE = re.compile(r";\s*report-type\s*=\s*\"?([^\";\s]+)", re.IGNORECASE)


def report_type(msg: Message) -> str:
    """The report-type parameter of a multipart/report ("delivery-status", ...), or ""."""
    values = raw_header_values(msg, "Content-Type")
    found = _REPORT_TYPE_RE.search(" ".join(values[0].split())) if values else None
    return found.group(1).lower() if found else ""


def mime_parts(msg: Message) -> Iterator[Message]:
    """Every part of the report itself, depth first, never entering a returned message.

    A message/rfc822 part is yielded, but what is inside it belongs to the message that
    bounced (or to a forwarded message) and must not be read as part of the report.
    """
    yield msg
    if content_type(msg).startswith("message/"):
        return
    if msg.is_multipart():
        payload = msg.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    yield from mime_parts(sub)


def _payload_bytes(part: Message) -> bytes | None:
    """The decoded body of a part whose raw text has bare CR line endings.

    The email package's quoted-printable decoder does not treat a lone CR as a line end and
    loses text after it; normalising the line ends before decoding keeps it all.
    """
    data = transported(part)
    if data is None or b"\r" not in data:
        return None
    raw = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    if cte == "base64":
        try:
            return base64.b64decode(b"".join(raw.split()), validate=False)
        except (binascii.Error, ValueError):
            return raw
    return raw


def part_text(part: Message) -> str:
    """The decoded text of a single, non-multipart part, with LF line endings."""
    raw: object = _payload_bytes(part)
    if raw is None:
        try:
            raw = part.get_payload(decode=True)
        except Exception:
            raw = None
    if raw is None:
        payload = mime_payload(part)
        text = payload if isinstance(payload, str) else ""
    else:
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
        text = decode_text(data, content_charset(part) or "utf-8", "latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_accents(text: str) -> str:
    """Lower-case `text` and drop its accents, so "Réponse" matches "reponse"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# ---------------------------------------------------------------------------------------------
# Is this message a report at all? (cheap: headers and content types only)
# ---------------------------------------------------------------------------------------------

_DAEMON_LOCALPARTS = frozenset(
    {"mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "maildaemon",
     "postmaster", "post_master", "double-bounce", "mdaemon", "mail.daemon"}
)
_DAEMON_NAME_RE = re.compile(
    r"mail(?:er)?[ -]?daemon|mail delivery (?:sub)?system|delivery status notification"
    r"|postmaster|ndr administrator",
    re.IGNORECASE,
)
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status )?notification|delivery fail"
    r"|failed delivery|delivery (?:has )?failed|delivery problem|failure notice|returned mail"
    r"|mail delivery (?:failed|failure|system|error)|could ?n[o']t be delivered"
    r"|could not send|error sending your mail|returned to sender|mail system error"
    r"|message not delivered|nicht zustellbar|unzustellbar|non remis|non distribu"
    r"|no (?:se )?(?:pudo )?entregad|non recapitat|onbestelbaar|mail failure|warning: could not",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BounceEvidence:
    """Which cheap signs of a machine-written report a message carries."""

    null_sender: bool = False  # SMTP MAIL FROM:<>
    daemon_sender: bool = False  # From or envelope is MAILER-DAEMON, postmaster, ...
    report_part: bool = False  # a message/delivery-status part (RFC 3464 DSN)
    feedback_part: bool = False  # a message/feedback-report part (RFC 5965 ARF)
    failed_header: bool = False  # Exim's X-Failed-Recipients
    subject: bool = False  # a subject like "Undelivered Mail Returned to Sender"
    ses_notice: bool = False  # an Amazon SES event delivered by SNS e-mail (JSON body)

    @property
    def any(self) -> bool:
        return (self.null_sender or self.daemon_sender or self.report_part
                or self.feedback_part or self.failed_header or self.subject or self.ses_notice)

    @property
    def strong(self) -> bool:
        """Signs that a mail system, not a person, wrote a report."""
        return self.report_part or self.daemon_sender or self.failed_header or self.ses_notice


def is_daemon_address(address: str) -> bool:
    """Is `address` (an addr-spec or a bare local part) a mail system's own address?"""
    local = address.strip().strip("<>").rpartition("@")[0] or address.strip().strip("<>")
    return local.lower() in _DAEMON_LOCALPARTS


def _report_parts(msg: Message) -> tuple[bool, bool]:
    """(has a DSN part, has a feedback-report part), not looking inside returned messages."""
    ctype = content_type(msg)
    if not ctype.startswith("multipart/"):
        return ctype in _DSN_TYPES, ctype == _FEEDBACK_TYPE
    dsn = feedback = False
    if ctype == "multipart/report":
        kind = report_type(msg)
        dsn = kind == "delivery-status"
        feedback = kind == "feedback-report"
    for part in mime_parts(msg):
        ptype = content_type(part)
        dsn = dsn or ptype in _DSN_TYPES
        feedback = feedback or ptype == _FEEDBACK_TYPE
    return dsn, feedback


def bounce_evidence(msg: Message, envelope_sender: str | None) -> BounceEvidence:
    """The cheap signs that `msg` may be a bounce or a report: headers and MIME types only.

    `envelope_sender` is the SMTP MAIL FROM ("" for <>), None when it is not known.
    """
    from_header = header_text(msg, "From")
    from_addr = normalise_address(from_header)
    envelope = None if envelope_sender is None else envelope_sender.strip().strip("<>")
    daemon = (
        is_daemon_address(from_addr)
        or (not from_addr and bool(from_header) and is_daemon_address(from_header))
        or (envelope is not None and bool(envelope) and is_daemon_address(envelope))
        or bool(_DAEMON_NAME_RE.search(from_header.split("<")[0]))
    )
    dsn, feedback = _report_parts(msg)
    return BounceEvidence(
        null_sender=envelope == "",
        daemon_sender=daemon,
        report_part=dsn,
        feedback_part=feedback,
        failed_header="X-Failed-Recipients" in msg,
        subject=bool(BOUNCE_SUBJECT_RE.search(header_text(msg, "Subject"))),
        ses_notice=_SNS_HEADER in msg,
    )


# ---------------------------------------------------------------------------------------------
# Status codes and reasons
# ---------------------------------------------------------------------------------------------

STATUS_RE = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
REPLY_CODE_RE = re.compile(r"(?:^|[\s:;(\[<\"'=#])([45][0-5]\d)(?=[ \-]|$)", re.MULTILINE)

# subject.detail of a status → reason, when the status alone says it unambiguously.
_STATUS_REASONS: Mapping[str, str] = MappingProxyType({
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",  # bad destination mailbox address syntax
    "1.6": "hasmoved",
    "1.7": "rejected",  # the sender's address is bad
    "1.8": "rejected",
    "1.10": "notaccept",  # null MX (RFC 7505)
    "2.1": "suspend",  # mailbox disabled
    "2.2": "mailboxfull",
    "2.3": "toobig",
    "2.4": "systemerror",  # mailing list expansion problem
    "3.1": "systemfull",
    "3.2": "systemerror",
    "3.3": "systemerror",
    "3.4": "toobig",
    "3.5": "systemerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",  # unable to route: no MX/A for the domain (Postfix, Exim)
    "4.5": "networkerror",
    "4.6": "systemerror",  # routing loop
    "4.7": "expired",
    "6.1": "content",
    "6.2": "content",
    "6.3": "content",
    "6.4": "content",
    "6.5": "content",
    "6.6": "content",
    "6.7": "content",
    "6.8": "content",
    "6.9": "content",
})

# Reasons read from diagnostic text, first match wins. Consulted when the status is generic
# (see _GENERIC_SUBJECT_DETAILS), has no mapping (X.5.x) or is missing; for X.7.x only to tell
# "spam" from "policy".
_TEXT_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (slug, re.compile(pattern, re.IGNORECASE))
    for slug, pattern in (
        ("mailboxfull",
         r"mailbox (?:is )?full|mail ?box (?:size )?(?:limit|quota)|over ?quota|quota exceed"
         r"|exceed\w* (?:\w+ )?(?:storage|quota|disk)|insufficient (?:system )?storage"
         r"|mailbox (?:has )?exceeded|disk quota|not enough (?:disk )?space|mailfolder is full"
         r"|user(?:'s)? (?:mailbox|disk) is full"),
        ("suspend",
         r"(?:account|mailbox|user|address)(?: has been| is)? (?:disabled|suspended|inactive"
         r"|deactivated|locked|closed|expired|frozen)|(?:disabled|suspended|inactive|deactivated)"
         r" (?:account|mailbox|user|address)"),
        ("userunknown",
         r"user(?:name)? unknown|unknown (?:user|recipient|local|mailbox|address|e-?mail)"
         r"|no such (?:user|mailbox|recipient|address|local|person|account)"
         r"|user (?:not found|does ?n[o']t exist|not exist)|(?:recipient|address|mailbox|account"
         r"|user)(?: address)? (?:does ?n[o']t exist|not found|unknown|not listed|is invalid)"
         r"|invalid (?:recipient|mailbox|user|address)|not a valid (?:recipient|mailbox|user)"
         r"|no mailbox here|mailbox (?:not found|does not exist)"
         r"|unrouteable address|bad destination (?:mailbox|email|address)"
         r"|is not a (?:valid )?(?:known )?(?:user|recipient)|unknown in virtual"
         r"|undeliverable address|recipient rejected|no valid recipients|addressee unknown"
         r"|not (?:be )?recogni[sz]ed|not listed in|does ?n[o']t have an? [\w.]* ?account"),
        ("notaccept", r"does not accept (?:e-?)?mail|null mx|not accepting (?:any )?mail"
                      r"|no smtp service"),
        ("hostunknown",
         r"host (?:or domain name )?(?:not found|unknown)|unknown host|domain (?:not found"
         r"|does ?n[o']t exist|unknown)|no such domain|name or service not known"
         r"|unroutable|nxdomain|host name lookup failure|couldn't find any host"
         r"|no (?:mx|mail exchanger)|unknown domain|domain name not found"
         r"|domain (?:is )?not reachable"),
        ("hasmoved", r"has moved|no longer (?:at|with|available|valid)|address has changed"),
        ("spam",
         r"spam|junk|block ?list|black ?list|\brbl\b|dnsbl|spamhaus|spamcop|blocked using"
         r"|bad reputation|poor reputation|(?<!not )listed (?:at|on|in)|bulk mail"),
        ("policy",
         r"policy|not authori[sz]ed|access denied|relay(?:ing)? (?:denied|not permitted|access)"
         r"|dmarc|\bspf\b|dkim|authenticat|sender (?:address )?(?:rejected|denied|verify)"
         r"|reverse dns|\bptr\b|blocked|banned|rejected|refused|prohibited|not allowed"
         r"|security|filter"),
        ("toobig", r"too (?:big|large)|size (?:limit|exceed)|exceeds? (?:the )?(?:\w+ )?size"
                   r"|message length"),
        ("expired",
         r"retry time|timed? ?out|expired|could not be delivered (?:for|within)|too long"
         r"|failing for a long time"
         r"|giving up|give up|delivery time"),
        ("networkerror",
         r"connection (?:refused|reset|lost|closed)|network|no route|unreachable"
         r"|lost connection|could not connect|connect to"),
        ("systemerror",
         r"system error|internal error|configuration error|mail loop|too many hops"
         r"|loop detected|temporar"),
        ("content", r"virus|malware|content|attachment|mime"),
    )
)
_GENERIC_SUBJECT_DETAILS = frozenset({"0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "7.0"})


def first_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in `text`, or ""."""
    found = STATUS_RE.search(text)
    return ".".join(found.groups()) if found else ""


def first_reply_code(text: str) -> str:
    """The first SMTP reply code (like "550") in `text`, or ""."""
    found = REPLY_CODE_RE.search(text)
    return found.group(1) if found else ""


def text_reason(text: str) -> str:
    """The reason slug that the words of a diagnostic suggest, or ""."""
    for slug, pattern in _TEXT_REASONS:
        if pattern.search(text):
            return slug
    return ""


_WRAPPER_DETAILS = frozenset({"0.0", "4.7"})  # "something failed" / "gave up after retrying"


def _specificity(status: str) -> int:
    """How much a status code says: 0 for X.0.0 and X.4.7, 1 for X.Y.0, 2 otherwise."""
    rest = status.partition(".")[2]
    if rest in _WRAPPER_DETAILS:
        return 0
    return 1 if rest.endswith(".0") else 2


def best_status(status_field: str, diagnostic: str) -> str:
    """The most telling status: the Status field, or a more specific code of the diagnostic.

    Many MTAs write "Status: 5.0.0" (or 4.4.7, "gave up") and put the remote server's
    "550 5.1.1 ..." in the Diagnostic-Code; that code is the better fact when it has the same
    class. Without any enhanced code, a bare SMTP reply code gives X.0.0.
    """
    status = first_status(status_field)
    candidates = [".".join(m.groups()) for m in STATUS_RE.finditer(diagnostic)]
    # A transcript shows the "250 2.1.5 Ok" of earlier commands too: failures come first.
    failures = [c for c in candidates if c[0] != "2"]
    candidates = failures or candidates
    if not status and candidates:
        status = candidates[0]
    if status and _specificity(status) < 2:
        same_class = [c for c in candidates if c[0] == status[0]]
        best = max(same_class, key=_specificity, default="")
        if best and _specificity(best) > _specificity(status):
            status = best
    if not status:
        code = first_reply_code(diagnostic)
        if code:
            status = f"{code[0]}.0.0"
    return status


def reason_for(status: str, diagnostic: str, action: str = "") -> tuple[str, bool]:
    """(reason slug, hard) for one recipient's status code and diagnostic text.

    A specific status decides; a generic one (X.0.0, 5.5.x, ...) lets the text decide; 5.7.x
    is always "policy" or "spam", never a dead address, because a filter's refusal says
    nothing about whether the mailbox exists. hard is only ever True for a 5.x.x failure with
    one of HARD_REASONS.
    """
    action = action.lower()
    if action.startswith(("deliver", "relay", "expand")) or status.startswith("2."):
        return SUCCESS_REASON, False
    klass, _, rest = status.partition(".")
    reason = ""
    if rest.startswith("7."):
        reason = "spam" if text_reason(diagnostic) == "spam" else "policy"
    elif rest and rest not in _GENERIC_SUBJECT_DETAILS:
        reason = _STATUS_REASONS.get(rest, "")
        if not reason and rest.startswith("5."):
            reason = text_reason(diagnostic) or "protocol"
        elif reason in HARD_REASONS and text_reason(diagnostic) == "mailboxfull":
            reason = "mailboxfull"  # code and words disagree: never call a full box dead
    if not reason:
        reason = text_reason(diagnostic)
    if not reason:
        reason = DELAYED_REASON if action.startswith("delay") or klass == "4" else "other"
    permanent = klass == "5" or (not klass and action.startswith(("fail", "error")))
    return reason, permanent and reason in HARD_REASONS


def make_info(address: str, status: str, diagnostic: str, action: str = "") -> BounceInfo:
    """One BounceInfo from the raw facts about one recipient."""
    reason, hard = reason_for(status, diagnostic, action)
    return BounceInfo(recipient=address.lower(), status=status, hard=hard, reason=reason)


# ---------------------------------------------------------------------------------------------
# RFC 3464 delivery-status fields, in their MIME part or written into the text
# ---------------------------------------------------------------------------------------------

Fields = list[tuple[str, str]]
_RECIPIENT_FIELDS: Mapping[str, str] = MappingProxyType(
    {"final-recipient": "final", "original-recipient": "original"}
)
_ENTRY_FIELDS: Mapping[str, str] = MappingProxyType(
    {"action": "action", "status": "status", "diagnostic-code": "diagnostic"}
)
_DSN_FIELD_NAMES = frozenset({*_RECIPIENT_FIELDS, *_ENTRY_FIELDS})
_FIELD_LINE_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")


@dataclass
class _Entry:
    """One recipient's DSN fields while a report is being read."""

    original: str = ""
    final: str = ""
    action: str = ""
    status: str = ""
    diagnostic: str = ""

    @property
    def address(self) -> str:
        return self.original or self.final


def _address_field(value: str) -> str:
    """The address of a "Final-Recipient: rfc822; addr" style field (any address type)."""
    _, _, rest = value.partition(";")
    return normalise_address(rest or value)


def _field_blocks_from_text(text: str, known: frozenset[str] | None = None) -> list[Fields]:
    """"Name: value" blocks of `text`, split at blank lines, folded lines joined.

    With `known`, only those field names count and other lines are skipped, which is how DSN
    fields are found inside a human-readable report.
    """
    blocks: list[Fields] = []
    current: Fields = []
    continuing = False
    for line in text.split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continuing = False
            continue
        match = _FIELD_LINE_RE.match(line)
        name = match.group(1).lower() if match else ""
        if match and (known is None or name in known):
            current.append((name, match.group(2).strip()))
            continuing = True
        elif continuing and line[:1] in (" ", "\t") and current:
            last_name, value = current[-1]
            current[-1] = (last_name, f"{value} {line.strip()}")
        else:
            continuing = False
    if current:
        blocks.append(current)
    return blocks


def _part_field_blocks(part: Message) -> list[Fields]:
    """The field blocks of a delivery-status or feedback-report part, however transported."""
    payload = mime_payload(part)
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        return [
            [(str(k).lower(), " ".join(str(v).split())) for k, v in block.items()]
            for block in payload
            if isinstance(block, Message)
        ]
    if isinstance(payload, list):
        # The email package split an encoded body into "blocks"; put it back together.
        text = "\n\n".join(block.as_string() for block in payload if isinstance(block, Message))
        try:
            raw = (base64.b64decode("".join(text.split()), validate=False)
                   if cte == "base64" else text.encode("latin-1", "replace"))
        except (binascii.Error, ValueError):
            return []
        return _field_blocks_from_text(raw.decode("utf-8", "replace"))
    return _field_blocks_from_text(part_text(part))


def _entries(blocks: Iterable[Fields]) -> list[_Entry]:
    """Per-recipient entries of DSN field blocks.

    A block normally holds one recipient. Some MTAs run several together without the blank
    line, so a repeated recipient field, or one that follows the entry's Action, Status or
    Diagnostic-Code, starts a new entry. Fields before the first recipient field belong to
    the first entry (a few MTAs write Action and Status first).
    """
    entries: list[_Entry] = []
    for fields in blocks:
        current = _Entry()
        has_recipient = False
        since: set[str] = set()
        for name, value in fields:
            if name in _RECIPIENT_FIELDS:
                if has_recipient and (name in since or since & _ENTRY_FIELDS.keys()):
                    entries.append(current)
                    current = _Entry()
                    since = set()
                attr = _RECIPIENT_FIELDS[name]
                if not getattr(current, attr):
                    setattr(current, attr, _address_field(value))
                has_recipient = True
                since.add(name)
            elif name in _ENTRY_FIELDS:
                attr = _ENTRY_FIELDS[name]
                if not getattr(current, attr):
                    setattr(current, attr, value.lower() if attr == "action" else value)
                if has_recipient:
                    since.add(name)
        if has_recipient:
            entries.append(current)
    return [entry for entry in entries if entry.address]


def _entry_info(entry: _Entry, lines: list[str]) -> BounceInfo:
    """A BounceInfo from one DSN entry, helped by the report text when the entry is vague."""
    diagnostic = entry.diagnostic
    status = best_status(entry.status, diagnostic)
    if not status or _specificity(status) < 2 or not diagnostic:
        context = _context_of(entry.address, lines)
        if context:
            status = best_status(status, context)
            diagnostic = f"{diagnostic} {context}"
    if not status:
        if entry.action.startswith("delay"):
            status = "4.0.0"
        elif entry.action.startswith(("fail", "error")):
            status = "5.0.0"
    return make_info(entry.address, status, f"{diagnostic} {entry.status}", entry.action)


def _unique(infos: Iterable[BounceInfo]) -> list[BounceInfo]:
    """The first entry for each recipient, in order."""
    out: list[BounceInfo] = []
    seen: set[str] = set()
    for info in infos:
        if info.recipient not in seen:
            seen.add(info.recipient)
            out.append(info)
    return out


def parse_delivery_status(msg: Message) -> list[BounceInfo]:
    """The per-recipient entries of the report's delivery-status parts."""
    entries: list[_Entry] = []
    for part in mime_parts(msg):
        if content_type(part) in _DSN_TYPES:
            entries.extend(_entries(_part_field_blocks(part)))
    if not entries:
        return []
    lines = report_text(msg).split("\n")
    return _unique(_entry_info(entry, lines) for entry in entries)


# ---------------------------------------------------------------------------------------------
# Human-readable reports
# ---------------------------------------------------------------------------------------------

# The line where the copy of the returned message starts: nothing below it is the report.
_SEPARATOR_RE = re.compile(
    # `{2,}+` is possessive: on a line of thousands of dashes the run is taken once, not
    # given back one character at a time (which was quadratic: a fuzzed bounce hung here).
    r"^[ \t]*+(?:[-=*_|#+]{2,}+[^\n]*?(?:cop(?:y|ie) of|original|returned (?:message|mail)"
    r"|undelivered message|message (?:headers?|text|body)|headers? of|forwarded message"
    r"|below this line|rfc822|returned content)"
    r"|(?:original message follows|message headers follow|returned message follows"
    r"|below this line is a copy|below is a copy|original message:|original message headers"
    r"|the original message headers|message text follows|header of the original"
    r"|headers of the original|original message header)"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# A header block of the returned message pasted into the text, without a separator line.
_PASTED_HEADER_RE = re.compile(
    r"^(?:received|return-path|message-id|mime-version|dkim-signature|delivered-to)[ \t]*:",
    re.IGNORECASE,
)
_ANY_HEADER_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*[ \t]*:|[ \t]+\S)")
_QUOTE_RE = re.compile(r"^(?:>[ \t]?)+", re.MULTILINE)
_HTML_DROP_RE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_BREAK_RE = re.compile(r"<br\s*/?>|</p>|</div>|</tr>|</li>|</h\d>", re.IGNORECASE)
_HTML_TAG_RE = re.compile(r"<[^>]+>")

# A line that starts with an address (after a bullet, or SendGrid's "name:00000:" prefix).
_LINE_ADDR_RE = re.compile(
    r"^[ \t]*(?:[*\-\u2022+][ \t]+|\d{1,2}[.)][ \t]+|[245]\d\d[ -](?:[245]\.\d+\.\d+ )?)?"
    rf"(?:[^\s<>@:]+:\d+:)?<?({_ADDR})>?(.*)$"
)
# What may follow such an address for the line to be a failure listing.
_LISTING_TAIL_RE = re.compile(
    r"^\s*(?:$|:|\[|\(|\.\.\.|,|;|-|\bon\b)|(?<![\w.])[245]\d\d(?![\w.])|[245]\.\d{1,3}\.\d"
    r"|fail|error|reject|unknown|invalid|refused|denied|bounced|undeliver|not |no such"
    r"|unable|full|quota",
    re.IGNORECASE,
)
# Phrases that introduce the failed address in prose or in a session transcript.
_PROSE_ADDR_RE = re.compile(
    rf"(?:rcpt to:?[ \t]*|(?:deliver(?:ing|ed|y)?|sending|send|relay(?:ing)?)[^<\n]{{0,40}}?"
    rf"\bto:?[ \t]+|rejected recipient[ \t]+|recipient:[ \t]*|recipient address:[ \t]*"
    rf"|addressed to[ \t]+|intended recipient:[ \t]*|undeliverable address:[ \t]*"
    rf"|failed recipients?:?[ \t]*|your message to[ \t]+|message for[ \t]+"
    rf"|the following address(?:es)?[^\n:]{{0,30}}:[ \t]*)"
    rf"['\"]?<?({_ADDR})>?",
    re.IGNORECASE,
)
_CONTEXT_LINES = 12
_STRONG_PERMANENT_RE = re.compile(
    r"permanent|fatal|unrecoverable|has been rejected|could not be delivered"
    r"|failed permanently|undeliverable|did not reach|was not delivered",
    re.IGNORECASE,
)
_TEMPORARY_RE = re.compile(
    r"delayed|will (?:be )?retr|still trying|temporar|not yet been delivered|deferred",
    re.IGNORECASE,
)


def _html_to_text(html: str) -> str:
    text = _HTML_DROP_RE.sub(" ", html)
    text = _HTML_BREAK_RE.sub("\n", text)
    return htmlmod.unescape(_HTML_TAG_RE.sub(" ", text))


def _cut_pasted_headers(text: str) -> str:
    """Drop a header block of the returned message pasted into the text (Zoho and others)."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if index and _PASTED_HEADER_RE.match(line):
            following = lines[index + 1 : index + 5]
            if sum(1 for f in following if _ANY_HEADER_RE.match(f)) >= 2:
                return "\n".join(lines[:index])
    return text


def report_text(msg: Message) -> str:
    """The readable text of the report: its text parts, without the returned message.

    Quote marks of a forwarded report are removed, HTML is reduced to text, and the text is
    cut where the copy of the returned message begins.
    """
    plain: list[str] = []
    html: list[str] = []
    for part in mime_parts(msg):
        ptype = content_type(part)
        broken_multipart = ptype.startswith("multipart/") and isinstance(mime_payload(part), str)
        if part.is_multipart() or (ptype.startswith("message/") and not broken_multipart):
            continue
        try:
            disposition = str(part.get("Content-Disposition", "")).lower()
        except Exception:
            disposition = ""
        if ("attachment" in disposition or "name=" in disposition) and (plain or html):
            continue  # an attached copy of the returned message or its headers
        if ptype == "text/plain" or broken_multipart:
            plain.append(part_text(part))
        elif ptype == "text/html":
            html.append(_html_to_text(part_text(part)))
    text = "\n".join(plain or html)
    text = _QUOTE_RE.sub("", text)
    cut = _SEPARATOR_RE.search(text)
    if cut and cut.start() > 0:
        text = text[: cut.start()]
    return _cut_pasted_headers(text)


@dataclass
class _Found:
    address: str
    line: int
    diagnostic: str = ""


def _shaped_addresses(
    lines: list[str], own: frozenset[str], reporter: frozenset[str]
) -> list[_Found]:
    """Addresses listed the way MTAs list failed recipients, with the lines that follow.

    An address that opens a listing line is taken unless it is the reporter's own; one
    found in prose is also refused when it is any of the report's own addresses (`own`),
    since prose names the original sender too ("sent by you@example.org").
    """
    found: list[_Found] = []
    seen: set[str] = set()
    for index, line in enumerate(lines):
        match = _LINE_ADDR_RE.match(line)
        if match and _LISTING_TAIL_RE.search(match.group(2)) and not _names_sender(lines, index):
            candidates = [match.group(1)]
            exclude = reporter
        else:
            candidates = [m.group(1) for m in _PROSE_ADDR_RE.finditer(line)]
            candidates = [c for c in candidates if not is_daemon_address(c)]
            exclude = own
        for raw in candidates:
            address = raw.strip(".").lower()
            if address not in seen and address not in exclude:
                seen.add(address)
                found.append(_Found(address, index))
    # Each address's diagnostic: its own line and those up to the next listed address.
    for position, item in enumerate(found):
        end = found[position + 1].line if position + 1 < len(found) else len(lines)
        end = min(max(end, item.line + 1), item.line + _CONTEXT_LINES)
        item.diagnostic = " ".join(part.strip() for part in lines[item.line : end])
    return found


_SENDER_INTRO_RE = re.compile(r"\b(?:sent|written|submitted|received) (?:by|from)\s*:?\s*$",
                              re.IGNORECASE)


def _names_sender(lines: list[str], index: int) -> bool:
    """Does the line before `index` introduce the sender ("A message sent by" / addr)?"""
    for previous in reversed(lines[max(0, index - 3) : index]):
        if previous.strip():
            return bool(_SENDER_INTRO_RE.search(previous))
    return False


def _context_of(address: str, lines: list[str]) -> str:
    """The first line naming `address` and the more-indented lines that continue it."""
    for index, line in enumerate(lines):
        if address in line.lower():
            indent = len(line) - len(line.lstrip())
            context = [line.strip()]
            for follow in lines[index + 1 : index + 6]:
                if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent:
                    break
                context.append(follow.strip())
            return " ".join(context)
    return ""


# flufl.bounce's detectors match patterns line by line, and some are quadratic in a line's
# length (GroupWise's `<[^>]*>` on a run of "<": a fuzzed report with 200,000 of them held the
# processor for minutes). No report has such a line: flufl is not asked about one that does.
_FLUFL_MAX_LINE = 5_000


def _has_long_line(msg: Message, limit: int = _FLUFL_MAX_LINE) -> bool:
    """Whether a part of `msg`, attached messages included, has a line longer than `limit`."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:
            continue
        if isinstance(data, bytes) and len(data) > limit and any(
                len(line) > limit for line in data.splitlines()):
            return True
    return False


def _addresses_from_flufl(msg: Message) -> tuple[list[str], list[str]]:
    """(temporary, permanent) failures per flufl.bounce, as sorted lower-case strings."""
    if _has_long_line(msg):
        return [], []
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception:  # a detector tripping over a malformed message must not stop us
        log.debug("flufl.bounce failed on a report", exc_info=True)
        return [], []

    def clean(addresses: Iterable[bytes]) -> list[str]:
        out: list[str] = []
        for raw in addresses:
            address = normalise_address(raw.decode("ascii", "replace"))
            if address and address not in out:
                out.append(address)
        return sorted(out)

    return clean(temporary), clean(permanent)


def _attached_messages(msg: Message) -> Iterator[Message]:
    """The messages the report carries as message/rfc822 (or headers-only) parts."""
    for part in mime_parts(msg):
        ptype = content_type(part)
        if ptype not in _ORIGINAL_TYPES:
            continue
        payload = mime_payload(part)
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            yield payload[0]
        elif isinstance(payload, str):
            yield HeaderParser().parsestr(part_text(part), headersonly=True)


def _attached_original_recipients(msg: Message) -> list[str]:
    """To/Cc of the returned message, when the report carries it as a MIME part."""
    for attached in _attached_messages(msg):
        return header_addresses(attached, "To", "Cc")
    return []


def _nested_report(msg: Message, depth: int) -> list[BounceInfo]:
    """The failures of a bounce that this message carries as an attachment (forwarded DSN)."""
    if depth > 0:
        return []
    for attached in _attached_messages(msg):
        from_addr = normalise_address(header_text(attached, "From"))
        if _report_parts(attached)[0] or is_daemon_address(from_addr):
            return parse_delivery_status(attached) or _parse_text(attached, None, depth + 1)
    return []


def _own_addresses(msg: Message) -> frozenset[str]:
    """Addresses that are the report's own sender or receiver, never a failed recipient."""
    return frozenset(header_addresses(
        msg, "From", "To", "Reply-To", "Return-Path", "Sender"
    ))


def parse_text_report(msg: Message, evidence: BounceEvidence | None = None) -> list[BounceInfo]:
    """Failed recipients of a report without a usable delivery-status part.

    `evidence` (from bounce_evidence) lets the last-resort rule, the returned message's own
    recipients, apply only to reports that a mail system visibly wrote.
    """
    return _parse_text(msg, evidence, 0)


def _parse_text(msg: Message, evidence: BounceEvidence | None, depth: int) -> list[BounceInfo]:
    text = report_text(msg)
    lines = text.split("\n")
    exclude = _own_addresses(msg)
    reporter = frozenset(header_addresses(msg, "From"))
    entries = _entries(_field_blocks_from_text(text, _DSN_FIELD_NAMES))
    entries = [entry for entry in entries if entry.address not in reporter]
    if entries:
        return _unique(_entry_info(entry, lines) for entry in entries)
    found = {item.address: item for item in _shaped_addresses(lines, exclude, reporter)}
    addresses = list(found) or [
        a for a in header_addresses(msg, "X-Failed-Recipients") if a not in exclude
    ]
    if not addresses:
        nested = _nested_report(msg, depth)
        if nested:
            return nested
    temporary: list[str] = []
    if not addresses:
        temporary, permanent = _addresses_from_flufl(msg)
        lowered = text.lower()
        addresses = [a for a in permanent + temporary if a not in exclude and a in lowered]
    if not addresses and (evidence is None or evidence.daemon_sender or evidence.subject):
        addresses = [a for a in _attached_original_recipients(msg) if a not in exclude]
    infos: list[BounceInfo] = []
    for address in addresses:
        item = found.get(address)
        diagnostic = item.diagnostic if item else _context_of(address, lines)
        status = best_status("", diagnostic)
        if not status and len(addresses) == 1:
            diagnostic = text  # a report about one recipient: all of its text is about it
            status = best_status("", diagnostic)
        action = ""
        if address in temporary or (not status and _TEMPORARY_RE.search(text)):
            action = "delayed"
            status = status or "4.0.0"
        elif not status and _STRONG_PERMANENT_RE.search(text):
            action = "failed"
            status = "5.0.0"
        infos.append(make_info(address, status, diagnostic or text, action))
    return _unique(infos)


# ---------------------------------------------------------------------------------------------
# Amazon SES event notifications sent as e-mail by SNS
# ---------------------------------------------------------------------------------------------

_SNS_HEADER = "X-Amz-Sns-Message-Id"


def _ses_event(msg: Message) -> dict[str, object] | None:
    """The SES event (notificationType Bounce / Complaint / Delivery) of an SNS e-mail."""
    if _SNS_HEADER not in msg:
        return None
    text = "\n".join(part_text(p) for p in mime_parts(msg) if content_type(p) == "text/plain")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        event = json.loads(text[start : end + 1])
        if isinstance(event, dict) and isinstance(event.get("Message"), str):
            event = json.loads(event["Message"])  # the raw SNS envelope around the event
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _dicts(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def parse_ses_bounce(msg: Message) -> list[BounceInfo]:
    """The bounced recipients of an Amazon SES "Bounce" notification, or []."""
    event = _ses_event(msg)
    if event is None or (event.get("notificationType") or event.get("eventType")) != "Bounce":
        return []
    bounce = event.get("bounce")
    if not isinstance(bounce, dict):
        return []
    permanent = str(bounce.get("bounceType", "")).lower() == "permanent"
    infos = []
    for recipient in _dicts(bounce.get("bouncedRecipients")):
        address = normalise_address(str(recipient.get("emailAddress", "")))
        diagnostic = str(recipient.get("diagnosticCode", ""))
        status = best_status(str(recipient.get("status", "")), diagnostic)
        action = str(recipient.get("action", "")) or ("failed" if permanent else "delayed")
        if address:
            infos.append(make_info(address, status, diagnostic, action))
    return infos


# ---------------------------------------------------------------------------------------------
# Feedback reports (RFC 5965 ARF, Microsoft JMRP, Apple Mail's unsubscribe)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackReport:
    """An abuse/feedback report: its type ("abuse", "opt-out", ...) and reported recipients."""

    feedback_type: str
    infos: tuple[BounceInfo, ...]


def _feedback_info(address: str) -> BounceInfo:
    return BounceInfo(recipient=address, status="", hard=False, reason="feedback")


def parse_feedback(msg: Message) -> FeedbackReport | None:
    """The feedback report `msg` is, or None when it is not one.

    Recognised: an RFC 5965 message/feedback-report part (recipients from Original-Rcpt-To,
    else the reported message's To); a Microsoft JMRP complaint (the reported message carries
    X-HmXmrOriginalRecipient); Apple Mail's "unsubscribe" mail (X-Apple-Unsubscribe: true).
    """
    for part in mime_parts(msg):
        if content_type(part) != _FEEDBACK_TYPE:
            continue
        fields = [field for block in _part_field_blocks(part) for field in block]
        feedback_type = next((v.lower() for k, v in fields if k == "feedback-type"), "abuse")
        recipients: list[str] = []
        for key, value in fields:
            if key in ("original-rcpt-to", "removal-recipient"):
                address = normalise_address(value)
                if address and address not in recipients:
                    recipients.append(address)
        if not recipients:
            recipients = _attached_original_recipients(msg)[:1]
        infos = tuple(_feedback_info(a) for a in recipients) or (_feedback_info(""),)
        return FeedbackReport(feedback_type, infos)
    for part in mime_parts(msg):
        if content_type(part) != "message/rfc822":
            continue
        payload = mime_payload(part)
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message) and "X-HmXmrOriginalRecipient" in inner:
            address = normalise_address(header_text(inner, "X-HmXmrOriginalRecipient"))
            return FeedbackReport("abuse", (_feedback_info(address),))
    event = _ses_event(msg)
    if event is not None and (event.get("notificationType") or event.get("eventType")) == (
        "Complaint"
    ):
        complaint = event.get("complaint")
        details = complaint if isinstance(complaint, dict) else {}
        addresses = [normalise_address(str(r.get("emailAddress", "")))
                     for r in _dicts(details.get("complainedRecipients"))]
        infos = tuple(_feedback_info(a) for a in addresses if a) or (_feedback_info(""),)
        return FeedbackReport(str(details.get("complaintFeedbackType", "abuse")), infos)
    if header_text(msg, "X-Apple-Unsubscribe").lower() == "true":
        address = normalise_address(header_text(msg, "From"))
        return FeedbackReport("opt-out", (_feedback_info(address),))
    return None


# ---------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------


_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")


def _declares_auto_reply(msg: Message) -> bool:
    """Auto-Submitted (other than "no"), an autoresponder's header or an out-of-office subject."""
    # Imported here: inbound.autoreply builds on this module's header helpers.
    from inbound.autoreply import oof_subject_anywhere, oof_subject_start

    value = header_text(msg, "Auto-Submitted").split(";")[0].split("(")[0].strip().lower()
    subject = header_text(msg, "Subject")
    return ((bool(value) and value != "no") or any(h in msg for h in _AUTO_REPLY_HEADERS)
            or oof_subject_start(subject) or oof_subject_anywhere(subject))


def parse_dsn(msg: Message, envelope_sender: str | None = None) -> list[BounceInfo]:
    """Every recipient a bounce or DSN reports on, with status, hardness and reason.

    For the caller that already knows where the message came in (VERP: a bounces+ address)
    and wants the details; [] when nothing could be read. Delivery-status parts are trusted
    first; then the text of the report, a forwarded report, flufl.bounce and, last, the
    returned message's own recipients. A feedback report (ARF, JMRP, SES complaint) gives
    its reported recipients, with reason "feedback".

    The text is read only when a mail system visibly wrote the message, its subject says it
    is a bounce, or it came from the null sender (`envelope_sender` "", if the caller knows
    it) without calling itself an automatic reply: an out-of-office reply that reached the
    bounces+ address names addresses too, and they have not bounced.
    """
    feedback = parse_feedback(msg)
    if feedback is not None:
        return [info for info in feedback.infos if info.recipient] or list(feedback.infos)
    evidence = bounce_evidence(msg, envelope_sender)
    if not (evidence.strong or evidence.subject
            or (evidence.null_sender and not _declares_auto_reply(msg))):
        return parse_delivery_status(msg) or parse_ses_bounce(msg)
    return parse_report(msg, evidence)


def parse_report(msg: Message, evidence: BounceEvidence) -> list[BounceInfo]:
    """parse_dsn with the evidence classify() already has (it knows the envelope sender)."""
    return (parse_delivery_status(msg) or parse_ses_bounce(msg)
            or parse_text_report(msg, evidence))
