"""Commands by email: SLUG+subscribe@, SLUG+unsubscribe@, SLUG+help@ (and delivery modes).

- `+subscribe`: answered with a confirmation request whose subject carries a signed token
  (HMAC over the community, the address and the day; valid a week). Replying to it (any
  mail client's plain reply keeps the subject) to the `+subscribe` address makes the
  address a member. Guests (outside `staff_domains`) are refused where the community does
  not admit guests; private communities take members from their owners only.
- `+unsubscribe`: the member leaves at once (the RFC 2369 mailto of List-Unsubscribe must
  work without a round trip); the goodbye message tells a forged victim what happened.
- `+help`: the help text; with "delivery each|daily|weekly|none" (or the French words) in
  the subject or the first line, a member's delivery mode changes.

Every answer is rendered in the person's language (their setting, else the language the
mail was written in, else the community's), marked `Auto-Submitted: auto-replied`, and
never sent to the null sender.
"""

from __future__ import annotations

import logging
import re

from sqlmodel import Session

from bridge.addresses import normalise_address
from bridge.app import App
from bridge.directory import add_member, derived_kind, get_membership, remove_member
from bridge.events import IncomingMail, Outcome
from bridge.models import Community
from bridge.tokens import read_subscribe_token, subscribe_token
from bridge.urls import community_url
from outbound.notices import (
    Notices,
    community_of,
    language_for,
    person_for,
    queue,
    render_mail,
    system_mail,
)

log = logging.getLogger("causerie.decision")

_CONFIRM = re.compile(r"\bconfirm\s+([a-z2-7]{20,40})\b", re.IGNORECASE)
_MODES = {
    "each": "each", "every": "each", "chaque": "each", "tous": "each",
    "daily": "daily", "quotidien": "daily", "quotidienne": "daily", "jour": "daily",
    "weekly": "weekly", "hebdomadaire": "weekly", "semaine": "weekly",
    "none": "none", "aucun": "none", "aucune": "none", "web": "none",
}
_DELIVERY = re.compile(r"^\s*(?:re\s*:\s*)*(?:delivery|mode|livraison|réception|reception)"
                       r"\s*:?\s*(\w+)", re.IGNORECASE)


def delivery_request(subject: str, text: str) -> str:
    """The delivery mode asked for ("each", "daily", "weekly", "none"), or ""."""
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    for candidate in (subject, first_line):
        match = _DELIVERY.match(candidate or "")
        if match and match.group(1).lower() in _MODES:
            return _MODES[match.group(1).lower()]
    return ""


class Commands:
    def __init__(self, app: App, notices: Notices) -> None:
        self.app = app
        self.notices = notices

    def _reply(self, session: Session, mail: IncomingMail, community: Community, to: str,
               template: str, *, reply_to: str = "", **values: object) -> None:
        domain = self.app.settings.instance.primary_domain
        language = language_for(self.app, session, to, mail.language, community.language)
        addresses = {
            "community": community.name, "slug": community.slug,
            "posting": f"{community.slug}@{domain}",
            "subscribe": f"{community.slug}+subscribe@{domain}",
            "unsubscribe": f"{community.slug}+unsubscribe@{domain}",
            "help": f"{community.slug}+help@{domain}",
            "owner": f"{community.slug}+owner@{domain}",
            "archive": community_url(self.app.settings.instance.base_url, community.slug),
        }
        addresses.update({k: str(v) for k, v in values.items()})
        subject, body = render_mail(self.notices.catalogue, f"email/{template}.txt", language,
                                    **addresses)
        now = self.app.clock.now()
        raw = system_mail(self.app, sender=f"{community.slug}+help@{domain}",
                          sender_name=community.name, to=to, subject=subject, body=body,
                          now=now, auto_submitted="auto-replied", in_reply_to=mail.message_id,
                          references=(*mail.references, mail.message_id), reply_to=reply_to,
                          language=language)
        queue(session, dedupe_key=f"command:{mail.inbox_id}:{mail.route.address}:{to}",
              kind="command", address=to, raw=raw, now=now, community_id=community.id)

    def handle(self, session: Session, mail: IncomingMail) -> Outcome:
        sender = normalise_address(mail.sender or mail.envelope_sender)
        if not mail.envelope_sender or not sender:
            return Outcome("discarded", "command from the null sender: not answered")
        if mail.kind in ("auto_reply", "bounce", "loop"):
            return Outcome("discarded", f"{mail.kind} to a command address: not answered")
        community = community_of(session, mail.route.slug)
        if community is None:
            return Outcome("rejected", f"no community {mail.route.slug!r}")
        command = mail.route.command
        if command == "subscribe":
            return self.subscribe(session, mail, community, sender)
        if command == "unsubscribe":
            return self.unsubscribe(session, mail, community, sender)
        return self.help(session, mail, community, sender)

    def subscribe(self, session: Session, mail: IncomingMail, community: Community,
                  sender: str) -> Outcome:
        person = person_for(session, sender)
        membership = get_membership(session, community, person) if person else None
        if membership is not None:
            self._reply(session, mail, community, sender, "command_already")
            return Outcome("done", f"{sender} is already a member of {community.slug}")
        guest = derived_kind(self.app.settings, sender) == "guest"
        if guest and not community.admits_guests:
            self._reply(session, mail, community, sender, "command_refused", why="guest")
            return Outcome("done", f"subscription refused: {sender} is a guest")
        if community.visibility == "private":
            self._reply(session, mail, community, sender, "command_refused", why="private")
            return Outcome("done", f"subscription refused: {community.slug} is private")
        today = self.app.clock.now().toordinal()
        match = _CONFIRM.search(mail.subject or "") or _CONFIRM.search(mail.text or "")
        if match:
            confirmed = read_subscribe_token(self.app.secret, match.group(1).lower(), sender,
                                             today)
            if confirmed != community.id:
                self._reply(session, mail, community, sender, "command_bad_token")
                return Outcome("done", f"subscription of {sender}: invalid confirmation")
            add_member(session, community, sender, name=mail.sender_name,
                       role="guest" if guest else "member", actor=f"email:{sender}")
            self._reply(session, mail, community, sender, "command_welcome")
            return Outcome("done", f"{sender} joined {community.slug} (confirmed by email)")
        token = subscribe_token(self.app.secret, community.id or 0, sender, today)
        self._reply(session, mail, community, sender, "command_confirm", token=token,
                    reply_to=f"{community.slug}+subscribe@"
                             f"{self.app.settings.instance.primary_domain}")
        return Outcome("done", f"confirmation sent to {sender} for {community.slug}")

    def unsubscribe(self, session: Session, mail: IncomingMail, community: Community,
                    sender: str) -> Outcome:
        person = person_for(session, sender)
        membership = get_membership(session, community, person) if person else None
        if membership is None:
            self._reply(session, mail, community, sender, "command_not_member")
            return Outcome("done", f"{sender} is not a member of {community.slug}")
        remove_member(session, community, sender, actor=f"email:{sender}")
        self._reply(session, mail, community, sender, "command_goodbye")
        return Outcome("done", f"{sender} left {community.slug} by email")

    def help(self, session: Session, mail: IncomingMail, community: Community,
             sender: str) -> Outcome:
        mode = delivery_request(mail.subject, mail.text)
        person = person_for(session, sender)
        membership = get_membership(session, community, person) if person else None
        if mode and membership is not None:
            membership.delivery_mode = mode
            session.add(membership)
            from bridge.directory import audit

            audit(session, "member.delivery", f"{community.slug}:{sender}",
                  actor=f"email:{sender}", delivery=mode)
            self._reply(session, mail, community, sender, "command_delivery", mode=mode)
            return Outcome("done", f"{sender}: delivery mode {mode} in {community.slug}")
        if mode:
            self._reply(session, mail, community, sender, "command_not_member")
            return Outcome("done", f"{sender} asked for {mode} but is not a member")
        self._reply(session, mail, community, sender, "command_help")
        return Outcome("done", f"help sent to {sender}")
