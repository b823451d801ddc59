"""Bounce scores: a dead address stops getting mail, a full mailbox does not.

A bounce is matched to its member by the VERP token of the address it was sent to
(`bounces+TOKEN@` names the delivery, hence the person and the community); a DSN that
reaches another of our addresses is matched by the bounced recipient within the community
it was addressed to. Reading the report (flufl.bounce, RFC 3464) is the inbound
classifier's job; it hands us `bridge.events.Bounce` entries.

Scoring, after Mailman's: a hard bounce (the address is dead: 5.1.x, user unknown, ...)
adds `HARD_POINTS`, a soft one (mailbox full, 4.x.x reports, ...) `SOFT_POINTS`;
rejections for policy or spam reasons (5.7.x, "policy", "spam", feedback reports) are
logged and not counted, since they say nothing about the address. The score halves every
`HALF_LIFE` without bounces, so occasional trouble fades. At `THRESHOLD` delivery is
disabled (`Membership.disabled_reason`), the member is told once through another of their
addresses when they have one, and the community's owners are told once.
`causerie member set SLUG EMAIL --enable` re-enables and resets the score.

A relay's own 5xx at RCPT/DATA time is scored the same way by the sender.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, select

from bridge.app import App
from bridge.events import Bounce, IncomingMail, Outcome
from bridge.models import Community, Delivery, Membership, Person
from bridge.tokens import read_token
from outbound.notices import Notices, language_for, other_addresses, queue, system_mail

log = logging.getLogger("causerie.delivery")

HARD_POINTS = 1.0
SOFT_POINTS = 0.5
THRESHOLD = 5.0
HALF_LIFE = timedelta(days=7)

_POLICY_REASONS = frozenset({"policy", "spam", "feedback", "securityerror", "blocked",
                             "rejected", "virus", "contenterror"})
_NOT_FAILURES = frozenset({"delivered", "delayed", "vacation"})


def classify(status: str, hard: bool, reason: str) -> str:
    """"hard", "soft", "policy" (not counted) or "ignore" (not a failure)."""
    reason = (reason or "").lower()
    if reason in _NOT_FAILURES or status.startswith("2."):
        return "ignore"
    if status.startswith("5.7") or reason in _POLICY_REASONS:
        return "policy"
    if hard or status.startswith("5.1") or (status.startswith("5.") and reason in
                                            ("userunknown", "hostunknown", "notaccept",
                                             "suspend", "hasmoved")):
        return "hard"
    return "soft"


def smtp_classify(status: str) -> str:
    """A relay's own permanent refusal: 5.1.x and 5.0.0 mean the address; 5.7.x is policy."""
    if status.startswith("5.7"):
        return "policy"
    if status.startswith(("5.1", "5.0")):
        return "hard"
    return "soft"


def decayed(score: float, updated_at: datetime | None, now: datetime) -> float:
    if not score or updated_at is None:
        return score
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=now.tzinfo)
    elapsed = max((now - updated_at).total_seconds(), 0.0)
    return score * 0.5 ** (elapsed / HALF_LIFE.total_seconds())


@dataclass(frozen=True)
class Scored:
    score: float
    disabled_now: bool


class BounceScores:
    def __init__(self, app: App, notices: Notices) -> None:
        self.app = app
        self.notices = notices

    def record(self, session: Session, *, community_id: int, person_id: int, kind: str,
               status: str, reason: str, address: str) -> Scored | None:
        """Add one bounce of `kind` (hard/soft) to a membership's score; disable past the
        threshold. None when the person is no member (any more)."""
        membership = session.exec(
            select(Membership).where(Membership.community_id == community_id,
                                     Membership.person_id == person_id)
            .with_for_update()).first()
        if membership is None:
            return None
        now = self.app.clock.now()
        points = HARD_POINTS if kind == "hard" else SOFT_POINTS
        score = decayed(membership.bounce_score, membership.bounce_updated_at, now) + points
        membership.bounce_score = round(score, 4)
        membership.bounce_updated_at = now
        disabled_now = False
        if score >= THRESHOLD and not membership.disabled_reason:
            membership.disabled_reason = (
                f"bounces: {address} {status or '?'} {reason or kind} (score {score:.1f})"[:250])
            disabled_now = True
        session.add(membership)
        session.flush()
        log.info("bounce %s %s for %s in community #%s: score %.2f%s", kind, status, address,
                 community_id, score, " -> delivery disabled" if disabled_now else "")
        if disabled_now:
            self._tell(session, membership, address, status, reason)
        return Scored(score, disabled_now)

    def _tell(self, session: Session, membership: Membership, address: str, status: str,
              reason: str) -> None:
        community = session.get(Community, membership.community_id)
        person = session.get(Person, membership.person_id)
        if community is None or person is None:
            return
        now = self.app.clock.now()
        day = now.date().isoformat()
        sender, name = self.notices.sender_identity(community)
        values = {"community": community.name, "address": address, "status": status,
                  "reason": reason, "member": person.display_name or address,
                  "slug": community.slug}
        others = other_addresses(session, person.id or 0, address)
        if others:  # "by another route": never to the address that bounces
            to = others[0]
            language = language_for(self.app, session, to, community.language)
            subject, body = self._render("email/bounce_disabled_member.txt", language, values)
            raw = system_mail(self.app, sender=sender, sender_name=name, to=to,
                              subject=subject, body=body, now=now, language=language)
            queue(session, dedupe_key=f"notice:{to}:bounce-disabled-{community.id}:{day}",
                  kind="notice", address=to, raw=raw, now=now, community_id=community.id,
                  person_id=person.id)
        owners = session.exec(select(Membership).where(
            Membership.community_id == community.id, Membership.role == "owner")).all()
        for owner in owners:
            if owner.person_id == person.id:
                continue
            owner_person = session.get(Person, owner.person_id)
            to = next(iter(other_addresses(session, owner.person_id, "")), "")
            if not to or owner_person is None:
                continue
            language = language_for(self.app, session, to, community.language)
            subject, body = self._render("email/bounce_disabled_owner.txt", language, values)
            raw = system_mail(self.app, sender=sender, sender_name=name, to=to,
                              subject=subject, body=body, now=now, language=language)
            queue(session, dedupe_key=f"notice:{to}:bounce-disabled-{membership.id}:{day}",
                  kind="notice", address=to, raw=raw, now=now, community_id=community.id,
                  person_id=owner.person_id)

    def _render(self, template: str, language: str, values: dict[str, str]
                ) -> tuple[str, str]:
        from outbound.notices import render_mail

        return render_mail(self.notices.catalogue, template, language, **values)

    # -- the handler for bounces+TOKEN@ and DSNs ------------------------------------------------
    def handle(self, session: Session, mail: IncomingMail) -> Outcome:
        delivery: Delivery | None = None
        if mail.route.kind == "bounce" and mail.route.token:
            data = read_token(self.app.secret, "bounces", mail.route.token)
            if data is not None:
                delivery = session.get(Delivery, data.first)
        failures = [(bounce, classify(bounce.status, bounce.hard, bounce.reason))
                    for bounce in mail.bounces]
        failures = [(bounce, kind) for bounce, kind in failures if kind != "ignore"]
        if not failures:
            return Outcome("discarded", "report without a failed recipient (delay or success)")
        notes: list[str] = []
        if delivery is not None:
            # VERP names the recipient; the most severe entry of the report counts, once.
            order = {"hard": 0, "soft": 1, "policy": 2}
            bounce, kind = min(failures, key=lambda pair: order[pair[1]])
            notes.append(self._apply(session, delivery.community_id, delivery.person_id,
                                     bounce, kind, delivery.address, delivery.id))
        else:
            community = None
            if mail.route.slug:
                community = session.exec(select(Community).where(
                    Community.slug == mail.route.slug)).first()
            for bounce, kind in failures:
                person = None
                if bounce.recipient:
                    from outbound.notices import person_for

                    person = person_for(session, bounce.recipient)
                if community is None or person is None:
                    notes.append(f"{bounce.recipient or '?'} {bounce.status}: no member matched")
                    continue
                notes.append(self._apply(session, community.id, person.id, bounce, kind,
                                         bounce.recipient, None))
        return Outcome("done", "; ".join(notes)[:500])

    def _apply(self, session: Session, community_id: int | None, person_id: int | None,
               bounce: Bounce, kind: str, address: str, delivery_id: int | None) -> str:
        label = f"{address} {bounce.status or '?'} {bounce.reason or ''}".strip()
        if kind == "policy":
            log.info("bounce for %s (delivery #%s) is a policy/spam rejection: not counted",
                     label, delivery_id)
            return f"{label}: policy or spam rejection, not counted"
        if community_id is None or person_id is None:
            log.info("bounce for %s (delivery #%s, not a post): logged", label, delivery_id)
            return f"{label}: {kind} bounce of a notice, logged"
        scored = self.record(session, community_id=community_id, person_id=person_id,
                             kind=kind, status=bounce.status, reason=bounce.reason,
                             address=address)
        if scored is None:
            return f"{label}: no longer a member"
        return (f"{label}: {kind} bounce, score {scored.score:.2f}"
                + (", delivery disabled" if scored.disabled_now else ""))
