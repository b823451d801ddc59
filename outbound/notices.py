"""Mail Causerie writes by itself: notices to senders, answers to commands, moderation mail.

`system_mail` renders a template in a language into complete message bytes; `queue`
stores them as a delivery row (kind notice/command/moderation/...) that the sender sends
as they are, with a VERP envelope. The dedupe key makes every queueing idempotent.

A mail template's first line is `Subject: ...`, then a blank line, then the body, so that
subject and body are translated together in one file.

`notify` is the processor's `Notifier`: at most one notice per address, reason and day
(`notice:<address>:<reason>:<YYYY-MM-DD>`), in the sender's language, never to a null
sender, and never to one of our own addresses (that could loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from bridge.addresses import normalise_address
from bridge.app import App
from bridge.events import IncomingMail
from bridge.i18n import Catalogues, catalogues, normalise_language
from bridge.models import Address, Community, Delivery, Person
from outbound.listheaders import LOOP_HEADER, clean_text, format_address

log = logging.getLogger("causerie.delivery")

_delivery = Delivery.__table__  # type: ignore[attr-defined]

# The reasons the processor notifies senders about, each with its template
# (email/notice_<template>.txt); an unknown reason uses email/notice_generic.txt.
NOTICE_TEMPLATES = {
    "held": "held", "held_moderated": "held", "held_readonly": "held", "held_spam": "held",
    "token_mismatch": "held", "not_member": "not_member", "too_large": "too_large",
    "empty": "empty", "guests_not_admitted": "guests_not_admitted",
    "held_dmarc": "dmarc_fail", "dmarc_fail": "dmarc_fail", "rejected": "rejected",
}


def render_mail(catalogue: Catalogues, template: str, language: str,
                **context: object) -> tuple[str, str]:
    """(subject, body) of a mail template."""
    text = catalogue.render(template, language, **context)
    first, _, body = text.lstrip("\n").partition("\n")
    if not first.lower().startswith("subject:"):
        raise ValueError(f"{template}: the first line must be 'Subject: ...'")
    return clean_text(first.split(":", 1)[1]), body.lstrip("\n")


def system_mail(app: App, *, sender: str, sender_name: str, to: str, subject: str, body: str,
                now: datetime, auto_submitted: str = "auto-generated",
                in_reply_to: str = "", references: Iterable[str] = (), reply_to: str = "",
                attachment: bytes | None = None, language: str = "en",
                extra_headers: dict[str, str] | None = None) -> bytes:
    """A complete text/plain (or text + attached message) mail, as bytes with CRLF ends."""
    message = EmailMessage()
    message["From"] = format_address(sender_name, sender)
    message["To"] = to
    message["Subject"] = clean_text(subject)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("causerie", app.settings.instance.primary_domain)
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        refs = [f"<{r}>" for r in references if r] or [f"<{in_reply_to}>"]
        message["References"] = " ".join(refs)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Auto-Submitted"] = auto_submitted
    message["X-Auto-Response-Suppress"] = "All"
    message["Precedence"] = "bulk"
    message[LOOP_HEADER] = clean_text(app.settings.instance.name) or "causerie"
    for name, value in (extra_headers or {}).items():
        message[name] = value
    message.set_content(body, charset="utf-8", cte="quoted-printable")
    message["Content-Language"] = language  # after set_content, which resets Content-*
    if attachment is not None:
        message.add_attachment(attachment, maintype="message", subtype="rfc822",
                               filename="message.eml")
    from email import policy

    return message.as_bytes(policy=policy.SMTP)


def queue(session: Session, *, dedupe_key: str, kind: str, address: str, raw: bytes,
          now: datetime, community_id: int | None = None, person_id: int | None = None,
          message_pk: int | None = None) -> bool:
    """Insert one raw delivery; False when one with this key exists already (no-op)."""
    values = {"dedupe_key": dedupe_key[:500], "kind": kind, "address": address, "raw": raw,
              "community_id": community_id, "person_id": person_id, "message_id": message_pk,
              "status": "pending", "attempts": 0, "next_attempt_at": now, "last_error": "",
              "created_at": now}
    dialect = session.get_bind().dialect.name
    statement: object
    if dialect == "postgresql":
        statement = postgresql.insert(_delivery).values(**values).on_conflict_do_nothing(
            index_elements=["dedupe_key"])
    elif dialect == "sqlite":
        statement = sqlite.insert(_delivery).values(**values).on_conflict_do_nothing(
            index_elements=["dedupe_key"])
    else:  # pragma: no cover - other databases are not supported
        statement = insert(_delivery).values(**values)
    result = session.execute(statement)  # type: ignore[call-overload]
    return bool(getattr(result, "rowcount", 0))


def person_for(session: Session, address: str) -> Person | None:
    address = normalise_address(address)
    if not address:
        return None
    return session.exec(select(Person).join(Address).where(Address.email == address)).first()


def language_for(app: App, session: Session, address: str, *hints: str) -> str:
    """The person's chosen language, else the first usable hint, else the instance's."""
    default = app.settings.instance.language
    person = person_for(session, address)
    if person is not None and person.language:
        return normalise_language(person.language, default)
    for hint in hints:
        if hint and normalise_language(hint, "") in ("en", "fr"):
            return normalise_language(hint, default)
    return normalise_language(default)


def other_addresses(session: Session, person_id: int, besides: str) -> list[str]:
    rows = session.exec(select(Address).where(Address.person_id == person_id)
                        .order_by(col(Address.primary).desc(), col(Address.id))).all()
    return [row.email for row in rows if row.email != besides.lower()]


def community_of(session: Session, slug: str) -> Community | None:
    if not slug:
        return None
    return session.exec(select(Community).where(Community.slug == slug)).first()


def is_ours(app: App, address: str) -> bool:
    return address.rpartition("@")[2].lower() in app.settings.instance.domains


class Notices:
    """The `Notifier` the processor calls, and the notices other handlers send."""

    def __init__(self, app: App, catalogue: Catalogues | None = None) -> None:
        self.app = app
        self.catalogue = catalogue or catalogues(("email",))

    def sender_identity(self, community: Community | None) -> tuple[str, str]:
        """(address, name) notices come from: the community's owner address, or postmaster."""
        domain = self.app.settings.instance.primary_domain
        if community is not None:
            return f"{community.slug}+owner@{domain}", community.name
        return f"postmaster@{domain}", self.app.settings.instance.name

    def notify(self, session: Session, mail: IncomingMail, reason: str,
               details: dict[str, str]) -> None:
        to = normalise_address(mail.sender or mail.envelope_sender)
        if not mail.envelope_sender or not to:
            log.info("no notice %s for inbox #%s: null sender", reason, mail.inbox_id)
            return
        if is_ours(self.app, to) or mail.kind in ("bounce", "auto_reply", "loop"):
            log.info("no notice %s to %s: would loop", reason, to)
            return
        now = self.app.clock.now()
        key = f"notice:{to}:{reason}:{now.date().isoformat()}"
        community = community_of(session, mail.route.slug or details.get("community", ""))
        language = language_for(self.app, session, to, mail.language,
                                community.language if community else "")
        template = f"email/notice_{NOTICE_TEMPLATES.get(reason, 'generic')}.txt"
        subject, body = render_mail(
            self.catalogue, template, language, reason=reason, details=details,
            subject=clean_text(mail.subject), community=community.name if community else "",
            address=(community and f"{community.slug}@{self.app.settings.instance.primary_domain}")
            or "", instance=self.app.settings.instance.name)
        sender, name = self.sender_identity(community)
        raw = system_mail(self.app, sender=sender, sender_name=name, to=to, subject=subject,
                          body=body, now=now, auto_submitted="auto-replied",
                          in_reply_to=mail.message_id, references=(*mail.references,
                                                                   mail.message_id),
                          language=language)
        if queue(session, dedupe_key=key, kind="notice", address=to, raw=raw, now=now,
                 community_id=community.id if community else None):
            log.info("notice %s queued for %s (inbox #%s)", reason, to, mail.inbox_id)
