"""What kind of message has come in: a person's post, or mail a machine wrote.

classify() runs RULES in order; each rule is a small predicate that returns a Verdict with a
human sentence saying why (kept with the message, shown by `inbox explain`) or None to pass.
The first verdict wins; a message no rule claims is a "post".

Order, and why:

1. loop: our own loop header, one of our List-Ids, or a From (or VERP envelope sender) on
   our own domains. Checked first: whatever else it is, mail we wrote must never be
   distributed again.
2. spam: the upstream filter's verdict (X-Spam-Flag / X-Spam-Status / X-Spam: yes). Before
   the report rules, so a forged "bounce" or "complaint" that the filter caught is held for
   a human rather than acted on.
3. feedback: an abuse/feedback report (ARF, JMRP, Apple Mail's unsubscribe mail).
4. bounce: a delivery status notification or a non-standard bounce. Before the auto-reply
   rules because real bounces carry Auto-Submitted: auto-replied (Exim), come from
   MAILER-DAEMON and from the null sender. Only messages with a cheap sign of being a report
   (null sender, a report part, a mail-system sender, a bounce subject, X-Failed-Recipients)
   are parsed; a report that yields no recipient falls through to the rules below.
5. auto_reply: Auto-Submitted other than "no", X-Autoreply & co, Precedence bulk/junk/
   auto_reply, an out-of-office subject, a read receipt, mail from MAILER-DAEMON/postmaster,
   the null sender (see inbound.autoreply for each).
6. post.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message

from bridge.charsets import header_text, header_values
from inbound.autoreply import (
    oof_subject_anywhere,
    rule_auto_submitted,
    rule_autoreply_headers,
    rule_daemon_sender,
    rule_list_robot,
    rule_null_sender,
    rule_oof_subject,
    rule_precedence,
)
from inbound.bounces import (
    BounceEvidence,
    BounceInfo,
    bounce_evidence,
    content_type,
    normalise_address,
    parse_dsn,
    parse_feedback,
    parse_report,
    report_type,
)

__all__ = [
    "RULES",
    "BounceInfo",
    "ClassifierConfig",
    "Verdict",
    "classify",
    "parse_dsn",
]

POST = "post"
BOUNCE = "bounce"
FEEDBACK = "feedback"
AUTO_REPLY = "auto_reply"
LOOP = "loop"
SPAM = "spam"


@dataclass(frozen=True)
class Verdict:
    """The kind of a message and the sentence that says why."""

    kind: str  # "post" | "bounce" | "feedback" | "auto_reply" | "loop" | "spam"
    reason: str  # a short human sentence saying why
    bounce: BounceInfo | None = None  # the first reported recipient, for bounce/feedback


@dataclass(frozen=True)
class ClassifierConfig:
    """What classify() must know about this instance.

    our_domains are the domains Causerie serves; every address on them is Causerie's own
    (see bridge.addresses), so mail From one of them (other than postmaster@/abuse@, which
    a person may answer from) is a loop.
    """

    loop_header: str = "X-Causerie-Loop"  # header Causerie adds to everything it sends
    instance_name: str = ""  # our value of that header
    our_domains: tuple[str, ...] = ()  # mail domains we serve
    list_ids: tuple[str, ...] = ()  # List-Id values we emit (e.g. "rd.example.org")


@dataclass
class _Message:
    """One message under classification, with the facts several rules need computed once."""

    msg: Message
    envelope_sender: str
    config: ClassifierConfig
    _evidence: BounceEvidence | None = field(default=None, repr=False)

    @property
    def evidence(self) -> BounceEvidence:
        if self._evidence is None:
            self._evidence = bounce_evidence(self.msg, self.envelope_sender)
        return self._evidence


Rule = Callable[[_Message], "Verdict | None"]

# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------

_TOKEN_PREFIXES = ("reply+", "bounces+", "private+", "moderate+")
_HUMAN_LOCALPARTS = frozenset({"postmaster", "abuse"})
_LIST_ID_RE = re.compile(r"<([^<>]+)>")


def _list_id(value: str) -> str:
    found = _LIST_ID_RE.search(value)
    return (found.group(1) if found else value).strip().lower()


def rule_loop_header(m: _Message) -> Verdict | None:
    """Our loop header with our instance name: we sent this very message."""
    name = m.config.instance_name.strip().lower()
    if not name:
        return None
    for value in header_values(m.msg, m.config.loop_header):
        if value.strip().lower() == name:
            return Verdict(LOOP, f"carries our own {m.config.loop_header}: {value.strip()}")
    return None


def rule_loop_list_id(m: _Message) -> Verdict | None:
    """A List-Id we emit: a copy of our own list mail came back."""
    ours = {_list_id(list_id) for list_id in m.config.list_ids}
    if not ours:
        return None
    for value in header_values(m.msg, "List-Id"):
        list_id = _list_id(value)
        if list_id in ours:
            return Verdict(LOOP, f"List-Id <{list_id}> is one of ours")
    return None


def _own_address_kind(address: str, domains: frozenset[str]) -> str:
    """"reply"/"bounces"/... for a token address on our domains, "community" for another
    address there, "" when the address is not ours (or is postmaster@/abuse@)."""
    local, _, domain = address.rpartition("@")
    if domain not in domains or not local or local in _HUMAN_LOCALPARTS:
        return ""
    for prefix in _TOKEN_PREFIXES:
        if local.startswith(prefix):
            return prefix[:-1]
    return "community"


def rule_loop_own_address(m: _Message) -> Verdict | None:
    """From one of our own addresses, or our VERP return path as envelope sender."""
    domains = frozenset(d.strip().lower() for d in m.config.our_domains if d.strip())
    if not domains:
        return None
    author = normalise_address(header_text(m.msg, "From"))
    kind = _own_address_kind(author, domains)
    if kind:
        return Verdict(LOOP, f"From {author} is our own {kind} address")
    envelope = normalise_address(m.envelope_sender)
    kind = _own_address_kind(envelope, domains)
    if kind and kind != "community":
        return Verdict(LOOP, f"envelope sender {envelope} is our own {kind} address")
    return None


# ---------------------------------------------------------------------------------------------
# Upstream spam verdicts
# ---------------------------------------------------------------------------------------------

_YES_RE = re.compile(r"^\s*yes\b", re.IGNORECASE)


def rule_upstream_spam(m: _Message) -> Verdict | None:
    """The upstream filter said spam: X-Spam-Flag: YES, X-Spam-Status: Yes, X-Spam: yes."""
    for name in ("X-Spam-Flag", "X-Spam-Status", "X-Spam"):
        for value in header_values(m.msg, name):
            if _YES_RE.match(value):
                return Verdict(SPAM, f"upstream spam filter: {name}: {value[:60]}")
    return None


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _may_be_feedback(m: _Message) -> bool:
    """Cheap test before parse_feedback(): a report part, an attachment, or Apple's header."""
    return (
        m.evidence.feedback_part
        or m.evidence.ses_notice
        or "X-Apple-Unsubscribe" in m.msg
        or (m.msg.is_multipart() and content_type(m.msg) in ("multipart/mixed", "multipart/report"))
    )


def rule_feedback(m: _Message) -> Verdict | None:
    """An abuse/feedback report: never a post, never a bounce."""
    if not _may_be_feedback(m):
        return None
    report = parse_feedback(m.msg)
    if report is None:
        return None
    first = report.infos[0]
    count = len(report.infos)
    about = f"{first.recipient}" if count == 1 else f"{first.recipient} and {count - 1} more"
    return Verdict(FEEDBACK, f"feedback report ({report.feedback_type}) about {about}", first)


def _looks_automatic(m: _Message) -> bool:
    """Signs of an out-of-office or autoresponder, for mail whose only bounce sign is <>."""
    return bool(
        rule_auto_submitted(m.msg, m.envelope_sender)
        or rule_autoreply_headers(m.msg, m.envelope_sender)
        or oof_subject_anywhere(header_text(m.msg, "Subject"))
    )


def rule_bounce(m: _Message) -> Verdict | None:
    """A delivery status notification or a bounce, with at least one reported recipient."""
    evidence = m.evidence
    if not evidence.any:
        return None
    strong = evidence.strong
    if not strong and not evidence.subject and _looks_automatic(m):
        return None  # a vacation reply from <>, not a report
    infos = parse_report(m.msg, evidence)
    if not infos:
        return None
    if not strong and not evidence.null_sender and not any(i.status for i in infos):
        return None  # a person's subject like "Undeliverable?" without a report in it
    first = infos[0]
    what = "delivery status notification" if evidence.report_part else "bounce"
    detail = " ".join(part for part in (first.status, first.reason) if part)
    more = f" and {len(infos) - 1} more" if len(infos) > 1 else ""
    return Verdict(BOUNCE, f"{what} for {first.recipient or 'an unknown recipient'}"
                           f"{more} ({detail})", first)


# ---------------------------------------------------------------------------------------------
# Automatic replies
# ---------------------------------------------------------------------------------------------


def _auto(check: Callable[[Message, str], str]) -> Rule:
    """Turn an inbound.autoreply predicate into a classify rule."""

    def rule(m: _Message) -> Verdict | None:
        reason = check(m.msg, m.envelope_sender)
        return Verdict(AUTO_REPLY, f"automatic reply: {reason}") if reason else None

    rule.__name__ = check.__name__
    rule.__doc__ = check.__doc__
    return rule


def _read_receipt(msg: Message, envelope_sender: str) -> str:
    """A read receipt (RFC 8098 message disposition notification)."""
    if (content_type(msg) == "multipart/report"
            and report_type(msg) == "disposition-notification"):
        return "read receipt (disposition notification)"
    return ""


RULES: tuple[Rule, ...] = (
    rule_loop_header,
    rule_loop_list_id,
    rule_loop_own_address,
    rule_upstream_spam,
    rule_feedback,
    rule_bounce,
    _auto(rule_auto_submitted),
    _auto(rule_autoreply_headers),
    _auto(rule_precedence),
    _auto(rule_oof_subject),
    _auto(_read_receipt),
    _auto(rule_daemon_sender),
    _auto(rule_list_robot),
    _auto(rule_null_sender),
)


def classify(msg: Message, envelope_sender: str, config: ClassifierConfig) -> Verdict:
    """The kind of `msg` (with the reason), from the first rule of RULES that claims it.

    `envelope_sender` is the SMTP MAIL FROM, "" for the null sender <>.
    """
    m = _Message(msg, envelope_sender or "", config)
    for rule in RULES:
        verdict = rule(m)
        if verdict is not None:
            return verdict
    return Verdict(POST, "no sign of automatic mail: a person's post")
