"""A plain reply to a digest (to `digest@domain`, its From and Reply-To) is never posted.

A digest gathers many conversations: a reply to it has no single conversation to land in.
The sender gets one short explanation (at most one per address and day, so two mail
systems answering each other cannot loop), in their language, `Auto-Submitted:
auto-replied`; the message itself is recorded as discarded with the reason.

The processor calls `DigestReplies` for the `digest` route (see the lead's wiring).
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from bridge.app import App
from bridge.events import IncomingMail, Outcome
from bridge.i18n import Catalogues, catalogues
from outbound.notices import is_ours, language_for, queue, render_mail, system_mail

log = logging.getLogger("causerie.digest")


class DigestReplies:
    """The handler for mail sent to the digest address."""

    def __init__(self, app: App, catalogue: Catalogues | None = None) -> None:
        self.app = app
        self.catalogue = catalogue or catalogues(("digest", "email"))

    def __call__(self, session: Session, mail: IncomingMail) -> Outcome:
        reason = "a reply to a digest is not posted; the sender was told how to reply"
        to = mail.sender or mail.envelope_sender
        if not mail.envelope_sender or not to or is_ours(self.app, to) \
                or mail.kind in ("bounce", "auto_reply", "loop"):
            return Outcome("discarded", "reply to a digest (no explanation: would loop)")
        now = self.app.clock.now()
        language = language_for(self.app, session, to, mail.language)
        subject, body = render_mail(self.catalogue, "email/digest_reply.txt", language,
                                    instance=self.app.settings.instance.name,
                                    base_url=self.app.settings.instance.base_url)
        domain = self.app.settings.instance.primary_domain
        raw = system_mail(self.app, sender=f"postmaster@{domain}",
                          sender_name=self.app.settings.instance.name, to=to, subject=subject,
                          body=body, now=now, auto_submitted="auto-replied",
                          in_reply_to=mail.message_id,
                          references=(*mail.references, mail.message_id), language=language)
        if queue(session, dedupe_key=f"digest-reply:{to}:{now.date().isoformat()}",
                 kind="notice", address=to, raw=raw, now=now):
            log.info("explained to %s that replies to digests are not posted", to)
        return Outcome("discarded", reason)
