"""What the processor hands to the handlers the wiring passes in.

`inbound` decides what a message is; some messages are then handled by code that lives in
`outbound` (commands, bounces, moderation, private replies, notices to senders). The two
packages do not import each other: `serve` and the CLI build a `Handlers` from `outbound`'s
functions and give it to the processor. These types are the contract between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session

from bridge.addresses import Route


@dataclass(frozen=True)
class Bounce:
    recipient: str   # the bounced address, lower-cased ("" when the report does not say)
    status: str      # enhanced status code, e.g. "5.1.1"
    hard: bool       # the address is dead (user unknown, domain gone, ...)
    reason: str      # slug: userunknown, mailboxfull, policy, spam, expired, ...


@dataclass(frozen=True)
class IncomingMail:
    """One received message, parsed, as seen by a handler."""

    inbox_id: int
    route: Route                     # the recipient address this handling is for
    envelope_sender: str             # MAIL FROM ("" for the null sender)
    sender: str                      # From address, normalised ("" when none)
    sender_name: str
    subject: str
    message_id: str                  # without angle brackets
    in_reply_to: str
    references: tuple[str, ...]
    text: str                        # the new words (quotes and signature stripped)
    language: str                    # best guess, "" when unknown
    kind: str                        # the classifier's verdict: post, bounce, auto_reply, ...
    bounces: tuple[Bounce, ...] = ()
    raw: bytes = b""


@dataclass(frozen=True)
class Outcome:
    """What a handler did: the inbox row's final status and the reason recorded with it."""

    status: str   # done, discarded, rejected, held
    reason: str


Handler = Callable[[Session, IncomingMail], Outcome]
# notify(session, mail, reason_code, details) queues at most one notice per address, reason
# and day to a human sender, in their language (never to a null sender, bounce or
# auto-reply: the processor does not call it for those).
Notifier = Callable[[Session, IncomingMail, str, dict[str, str]], None]


def _unhandled(session: Session, mail: IncomingMail) -> Outcome:
    return Outcome("rejected", f"no handler for {mail.route.kind} addresses in this process")


def _no_notice(session: Session, mail: IncomingMail, reason: str, details: dict[str, str]
               ) -> None:
    return None


@dataclass(frozen=True)
class Handlers:
    """Functions for routes the processor does not handle itself (posts and replies)."""

    command: Handler = _unhandled      # SLUG+subscribe / +unsubscribe / +help
    owner: Handler = _unhandled        # SLUG+owner
    bounce: Handler = _unhandled       # bounces+TOKEN (VERP) and DSNs
    moderate: Handler = _unhandled     # moderate+TOKEN (a moderator's decision)
    private: Handler = _unhandled      # private+TOKEN (an off-list reply to an author)
    postmaster: Handler = _unhandled
    notify: Notifier = _no_notice
    extra: dict[str, Handler] = field(default_factory=dict)
