"""Forwarding: private replies to an author, and mail to a community's owners.

`private+TOKEN@` is in the footer of every copy (the token names the recipient it was
given to and the message): mail to it goes to that message's author and is never posted.
It is the off-list reply people lose when From is rewritten for DMARC. `SLUG+owner@`
goes to the community's owners.

The forwarded mail is the original bytes, untouched below a few prepended trace fields
(`Resent-*` of RFC 5322 and our loop header), so the sender's own DKIM signature still
verifies and the author's reply goes straight to the sender.
"""

from __future__ import annotations

import logging
from email.utils import format_datetime, make_msgid

from sqlmodel import Session, col, select

from bridge.app import App
from bridge.events import IncomingMail, Outcome
from bridge.models import Community, InboxItem, Membership, Message
from bridge.tokens import read_token
from outbound.listheaders import LOOP_HEADER, clean_text, header_line
from outbound.notices import community_of, other_addresses, queue

log = logging.getLogger("causerie.delivery")


class Forwarder:
    def __init__(self, app: App) -> None:
        self.app = app

    def _raw(self, session: Session, mail: IncomingMail) -> bytes:
        if mail.raw:
            return mail.raw
        item = session.get(InboxItem, mail.inbox_id)
        return self.app.raw_mail(item) if item is not None else b""

    def _resent(self, via: str, to: str) -> bytes:
        now = self.app.clock.now()
        return b"".join((
            header_line("Resent-From", via),
            header_line("Resent-To", to),
            header_line("Resent-Date", format_datetime(now)),
            header_line("Resent-Message-ID",
                        make_msgid("causerie", self.app.settings.instance.primary_domain)),
            header_line(LOOP_HEADER, clean_text(self.app.settings.instance.name) or "causerie"),
        ))

    def private(self, session: Session, mail: IncomingMail) -> Outcome:
        data = read_token(self.app.secret, "private", mail.route.token)
        if data is None:
            return Outcome("rejected", "invalid private reply address")
        message = session.get(Message, data.second)
        if message is None or message.author_id is None:
            return Outcome("rejected", "the message this private address belongs to is gone")
        addresses = other_addresses(session, message.author_id, "")
        if not addresses:
            return Outcome("rejected", "the author has no address any more")
        to = addresses[0]
        raw = self._raw(session, mail)
        queue(session, dedupe_key=f"private:{mail.inbox_id}:{message.id}", kind="private",
              address=to, raw=self._resent(mail.route.address, to) + raw,
              now=self.app.clock.now(), community_id=message.community_id,
              person_id=message.author_id)
        log.info("private reply inbox #%s forwarded to the author of %s", mail.inbox_id,
                 message.message_id)
        return Outcome("done", f"forwarded privately to the author of <{message.message_id}>")

    def owner(self, session: Session, mail: IncomingMail) -> Outcome:
        community: Community | None = community_of(session, mail.route.slug)
        if community is None:
            return Outcome("rejected", f"no community {mail.route.slug!r}")
        owners = session.exec(select(Membership).where(
            Membership.community_id == community.id, Membership.role == "owner")
            .order_by(col(Membership.id))).all()
        raw = self._raw(session, mail)
        sent = 0
        for owner in owners:
            addresses = other_addresses(session, owner.person_id, "")
            if not addresses:
                continue
            queue(session, dedupe_key=f"owner:{mail.inbox_id}:{owner.person_id}", kind="owner",
                  address=addresses[0], raw=self._resent(mail.route.address, addresses[0]) + raw,
                  now=self.app.clock.now(), community_id=community.id,
                  person_id=owner.person_id)
            sent += 1
        if not sent:
            return Outcome("rejected", f"{community.slug} has no owner to forward to")
        return Outcome("done", f"forwarded to {sent} owner(s) of {community.slug}")

    def postmaster(self, session: Session, mail: IncomingMail) -> Outcome:
        log.warning("mail to postmaster kept as inbox #%s (from %s, subject %r)",
                    mail.inbox_id, mail.sender or mail.envelope_sender, mail.subject)
        return Outcome("done", "kept for the administrator: causerie inbox show "
                               f"{mail.inbox_id}")
