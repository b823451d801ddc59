"""Moderation by email.

The inbound processor writes a `Held` row when a post waits for a moderator. The sender's
sweep (`Moderation.sweep`, run each cycle) sends each pending held message, once, to every
owner and moderator of its community: the reason, the sender, and the message attached;
its Reply-To is `moderate+TOKEN@` (HMAC over the held row and the moderator), with
mailto links whose subject already says "approve" or "reject".

A moderator answers "approve" or "reject [reason]" (French words too). The decision is one
conditional UPDATE (`WHERE status = 'pending'`), so the first moderator wins even when two
answers are processed at once; the others are told who decided. Approving sets the Held
row to "approved" and its inbox row back to "pending" with kind "approved": the inbound
processor runs it again and skips authorisation for a community whose Held row is
approved (outbound never imports inbound). Rejecting tells the sender, with the reason.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re

from sqlalchemy import update
from sqlmodel import Session, col, select

from bridge.app import App
from bridge.events import IncomingMail, Outcome
from bridge.models import Community, Held, InboxItem, Membership, Person
from bridge.tokens import make_token, read_token
from outbound.listheaders import clean_text
from outbound.notices import (
    Notices,
    language_for,
    other_addresses,
    person_for,
    queue,
    render_mail,
    system_mail,
)

log = logging.getLogger("causerie.decision")

_held = Held.__table__  # type: ignore[attr-defined]

APPROVE = frozenset({"approve", "approved", "accept", "accepted", "ok", "yes", "approuver",
                     "approuvé", "approuve", "accepter", "accepté", "accepte", "oui", "valider"})
REJECT = frozenset({"reject", "rejected", "refuse", "refused", "deny", "decline", "no",
                    "rejeter", "rejeté", "rejette", "refuser", "refusé", "non"})
_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|tr|aw|réf|ref)\s*:\s*|\[[^\]]*\]\s*)*", re.I)
MODERATOR_ROLES = ("owner", "moderator")
CONFIRM_EXTERNAL = "confirm_external"  # Held.code the processor writes for such reply-alls


def parse_decision(subject: str, text: str) -> tuple[str, str] | None:
    """("approve"|"reject", note) from the first line of the answer, else its subject."""
    candidates = [line for line in (text or "").splitlines() if line.strip()][:1]
    candidates.append(_PREFIX.sub("", subject or ""))
    for candidate in candidates:
        words = candidate.strip().split(None, 1)
        if not words:
            continue
        first = words[0].strip(".:!,").lower()
        rest = words[1].strip() if len(words) > 1 else ""
        if first in APPROVE:
            return "approve", ""
        if first in REJECT:
            return "reject", clean_text(rest)[:500]
    return None


class Moderation:
    def __init__(self, app: App, notices: Notices) -> None:
        self.app = app
        self.notices = notices
        self.watermark = 0  # Held ids below it have had their requests queued (this process)

    # -- asking ------------------------------------------------------------------------------
    def moderators(self, session: Session, community_id: int) -> list[tuple[int, str]]:
        rows = session.exec(select(Membership).where(
            Membership.community_id == community_id,
            col(Membership.role).in_(MODERATOR_ROLES)).order_by(col(Membership.id))).all()
        result = []
        for membership in rows:
            addresses = other_addresses(session, membership.person_id, "")
            if addresses:
                result.append((membership.person_id, addresses[0]))
        return result

    def sender_decider(self, session: Session, held: Held) -> list[tuple[int, str]]:
        """The sender, who may confirm a message held because it also went to people
        outside the company (they know whether the reply-all was meant)."""
        person = person_for(session, held.sender) if held.sender else None
        return [(person.id, held.sender)] if person is not None and person.id else []

    def sweep(self) -> int:
        """Queue the requests of pending held messages not seen yet; returns how many."""
        with self.app.session() as session:
            rows = session.exec(select(Held).where(Held.status == "pending",
                                                   col(Held.id) > self.watermark)
                                .order_by(col(Held.id)).limit(200)).all()
            count = 0
            for held in rows:
                count += self.request(session, held)
                self.watermark = max(self.watermark, held.id or 0)
        return count

    def request(self, session: Session, held: Held) -> int:
        community = session.get(Community, held.community_id)
        item = session.get(InboxItem, held.inbox_id)
        if community is None or item is None:
            return 0
        domain = self.app.settings.instance.primary_domain
        raw = self.app.raw_mail(item)
        now = self.app.clock.now()
        count = 0
        deciders = self.moderators(session, community.id or 0)
        if held.code == CONFIRM_EXTERNAL:
            deciders = [*self.sender_decider(session, held), *deciders]
        for person_id, address in deciders:
            token = make_token(self.app.secret, "moderate", held.id or 0, person_id)
            reply = f"moderate+{token}@{domain}"
            language = language_for(self.app, session, address, community.language)
            subject, body = render_mail(
                self.notices.catalogue, "email/moderation_request.txt", language,
                community=community.name, subject=clean_text(held.subject) or "-",
                sender=held.sender or item.mail_from or "?", reason=held.reason or "-",
                approve=f"mailto:{reply}?subject=approve",
                reject=f"mailto:{reply}?subject=reject")
            message = system_mail(self.app, sender=f"{community.slug}+owner@{domain}",
                                  sender_name=community.name, to=address, subject=subject,
                                  body=body, now=now, reply_to=reply, language=language,
                                  attachment=raw)
            if queue(session, dedupe_key=f"moderation:{held.id}:{person_id}", kind="moderation",
                     address=address, raw=message, now=now, community_id=community.id,
                     person_id=person_id):
                count += 1
        if count:
            log.info("held #%s (%s): %d moderation requests queued", held.id, held.subject,
                     count)
        return count

    # -- deciding ----------------------------------------------------------------------------
    def handle(self, session: Session, mail: IncomingMail) -> Outcome:
        data = read_token(self.app.secret, "moderate", mail.route.token)
        if data is None:
            return Outcome("rejected", "invalid moderation address")
        held = session.get(Held, data.first)
        if held is None:
            return Outcome("rejected", f"held message #{data.first} no longer exists")
        moderator = session.get(Person, data.second)
        role = session.exec(select(Membership.role).where(
            Membership.community_id == held.community_id,
            Membership.person_id == data.second)).first()
        sender = person_for(session, mail.sender)
        sender_decides = held.code == CONFIRM_EXTERNAL and any(
            person_id == data.second for person_id, _ in self.sender_decider(session, held))
        if moderator is None or (role not in MODERATOR_ROLES and not sender_decides):
            return Outcome("rejected", "this moderation address's moderator is no longer one")
        if sender is None or sender.id != moderator.id:
            return Outcome("rejected", f"{mail.sender} is not the moderator this address was "
                                       f"sent to")
        community = session.get(Community, held.community_id)
        assert community is not None
        decision = parse_decision(mail.subject, mail.text)
        if decision is None:
            self._tell(session, mail.sender, community, held, "email/moderation_unclear.txt",
                       f"moderation-unclear:{mail.inbox_id}")
            return Outcome("done", f"moderation answer for held #{held.id} not understood")
        verdict, note = decision
        status = "approved" if verdict == "approve" else "rejected"
        now = self.app.clock.now()
        won = session.execute(
            update(_held).where(_held.c.id == held.id, _held.c.status == "pending")
            .values(status=status, decided_by=mail.sender, decided_at=now, decision_note=note)
        ).rowcount  # type: ignore[attr-defined]
        session.refresh(held)
        if not won:
            self._tell(session, mail.sender, community, held, "email/moderation_decided.txt",
                       f"moderation-late:{held.id}:{mail.inbox_id}", late=True)
            return Outcome("done", f"held #{held.id} was already {held.status} by "
                                   f"{held.decided_by}")
        item = session.get(InboxItem, held.inbox_id)
        if item is not None and status == "approved":
            item.status, item.kind = "pending", "approved"
            item.reason = f"approved by {mail.sender}"
            item.next_attempt_at = now
            session.add(item)
        elif item is not None:
            others = session.exec(select(Held).where(Held.inbox_id == item.id,
                                                     Held.status != "rejected")).all()
            if not others:
                item.status = "rejected"
                item.reason = f"rejected by moderator {mail.sender}: {note}".strip(": ")
                session.add(item)
            self._tell_sender(session, item, community, held, note)
        for person_id, address in self.moderators(session, community.id or 0):
            if person_id != moderator.id:
                self._tell(session, address, community, held, "email/moderation_decided.txt",
                           f"moderation-decided:{held.id}:{person_id}")
        log.info("held #%s %s by %s", held.id, status, mail.sender)
        return Outcome("done", f"held #{held.id} {status} by {mail.sender}")

    def _tell(self, session: Session, to: str, community: Community, held: Held,
              template: str, key: str, late: bool = False) -> None:
        language = language_for(self.app, session, to, community.language)
        subject, body = render_mail(
            self.notices.catalogue, template, language, community=community.name,
            subject=clean_text(held.subject) or "-", sender=held.sender or "?",
            moderator=held.decided_by or "?", status=held.status, late=late)
        sender, name = self.notices.sender_identity(community)
        now = self.app.clock.now()
        raw = system_mail(self.app, sender=sender, sender_name=name, to=to, subject=subject,
                          body=body, now=now, language=language)
        queue(session, dedupe_key=key, kind="moderation", address=to, raw=raw, now=now,
              community_id=community.id)

    def _tell_sender(self, session: Session, item: InboxItem, community: Community,
                     held: Held, note: str) -> None:
        if not item.mail_from:
            return  # never to the null sender
        parsed = email.message_from_bytes(self.app.raw_mail(item), policy=email.policy.default)
        to = held.sender or item.mail_from
        language = language_for(self.app, session, to, community.language)
        domain = self.app.settings.instance.primary_domain
        subject, body = render_mail(
            self.notices.catalogue, "email/notice_rejected.txt", language,
            subject=clean_text(held.subject), community=community.name,
            address=f"{community.slug}@{domain}", details={"reason": note},
            reason="rejected", instance=self.app.settings.instance.name)
        sender, name = self.notices.sender_identity(community)
        now = self.app.clock.now()
        message_id = str(parsed.get("Message-ID", "")).strip().strip("<>")
        raw = system_mail(self.app, sender=sender, sender_name=name, to=to, subject=subject,
                          body=body, now=now, auto_submitted="auto-replied",
                          in_reply_to=message_id, language=language)
        queue(session, dedupe_key=f"notice:{to}:rejected-{held.id}:{now.date().isoformat()}",
              kind="notice", address=to, raw=raw, now=now, community_id=community.id)
