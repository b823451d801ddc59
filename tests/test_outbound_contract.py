"""The handlers contract with the real inbound processor: mail to command, moderation and
VERP addresses goes through `inbound.processor.Processor` given `build_handlers(app)`, as
`serve` will wire it (bridge.wiring)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import importlib.util
import re
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from bridge.app import App
from bridge.models import Delivery, Held, InboxItem, Membership, Message
from bridge.settings import Settings
from bridge.tokens import make_token
from outbound.dmarc import StaticTxtResolver
from outbound.handlers import build_handlers
from outbound.moderation import Moderation
from outbound.notices import Notices
from outbound.sender import Sender
from tests.conftest import DOMAIN, write_settings
from tests.test_outbound_support import make_world, read_maildir, simple_post, store_post

pytestmark = pytest.mark.skipif(importlib.util.find_spec("inbound.processor") is None,
                                reason="the inbound processor is not there yet")


@pytest.fixture
def papp(tmp_path: Path, db_url: str) -> App:
    app = App(Settings.load(write_settings(tmp_path, db_url), environ={}))
    yield app  # type: ignore[misc]
    app.dispose()


def deliver_mail(app: App, mail_from: str, rcpt: str, raw: bytes) -> None:
    with app.session() as session:
        session.add(InboxItem(mail_from=mail_from, rcpt_to=[rcpt], size=len(raw),
                              sha256="3" * 64, raw=raw, status="pending"))
    from inbound.processor import Processor

    Processor(app, build_handlers(app)).run_until_idle()


def mail(sender: str, to: str, subject: str, body: str = "", message_id: str = "",
         extra: str = "") -> bytes:
    message_id = message_id or f"{abs(hash((sender, to, subject, body)))}@example.com"
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n{extra}"
            f"\r\n{body}\r\n").encode()


def rows(app: App, kind: str) -> list[Delivery]:
    with Session(app.engine) as session:
        return list(session.exec(select(Delivery).where(Delivery.kind == kind)
                                 .order_by(col(Delivery.id))).all())


def test_subscribe_by_email_through_the_processor(papp: App) -> None:
    world = make_world(papp)
    deliver_mail(papp, "eve@example.com", f"rd+subscribe@{DOMAIN}",
                 mail("Eve <eve@example.com>", f"rd+subscribe@{DOMAIN}", "subscribe"))
    [confirm] = rows(papp, "command")
    message = email.message_from_bytes(confirm.raw or b"", policy=email.policy.default)
    token = re.search(r"confirm ([a-z2-7]+)", str(message["Subject"]))
    assert token, message["Subject"]
    deliver_mail(papp, "eve@example.com", f"rd+subscribe@{DOMAIN}",
                 mail("Eve <eve@example.com>", f"rd+subscribe@{DOMAIN}",
                      f"Re: {message['Subject']}", "Yes please.",
                      extra=f"In-Reply-To: {message['Message-ID']}\r\n"))
    with Session(papp.engine) as session:
        count = len(session.exec(select(Membership).where(
            Membership.community_id == world.community_id)).all())
    assert count == 5


def test_moderation_round_trip_through_the_processor(papp: App) -> None:
    world = make_world(papp, policy="moderated")
    deliver_mail(papp, "bob@example.com", f"rd@{DOMAIN}",
                 mail("Bob Durand <bob@example.com>", f"rd@{DOMAIN}", "Proposal",
                      "Let us meet on Friday.", message_id="proposal-1@example.com"))
    with Session(papp.engine) as session:
        [held] = session.exec(select(Held)).all()
    assert held.status == "pending"
    assert Moderation(papp, Notices(papp)).sweep() == 2
    token = make_token(papp.secret, "moderate", held.id or 0, world.people["claire@example.com"])
    deliver_mail(papp, "claire@example.com", f"moderate+{token}@{DOMAIN}",
                 mail("Claire Petit <claire@example.com>", f"moderate+{token}@{DOMAIN}",
                      "Re: R&D: a message waits for moderation: Proposal", "approve"))
    with Session(papp.engine) as session:
        decided = session.get(Held, held.id)
        posted = session.exec(select(Message).where(
            Message.message_id == "proposal-1@example.com")).first()
    assert decided is not None and decided.status == "approved"
    assert posted is not None  # the processor ran the approved post again and stored it
    told = [d.address for d in rows(papp, "moderation")
            if d.dedupe_key.startswith("moderation-decided")]
    assert told == ["alice@example.com"]


def test_dsn_to_a_verp_address_through_the_processor(papp: App) -> None:
    world = make_world(papp)
    store_post(papp, world, simple_post())
    asyncio.run(Sender(papp, resolver=StaticTxtResolver()).drain())
    copy = next(m for m in read_maildir(papp.settings.outbox_dir)
                if m["Delivered-To"] == "dan@partner.example.net")
    verp = copy["Return-Path"].strip("<>")
    dsn = (f"From: MAILER-DAEMON@partner.example.net\r\nTo: {verp}\r\n"
           "Subject: Undelivered Mail Returned to Sender\r\n"
           "Date: Thu, 26 Nov 2026 10:05:00 +0000\r\nMessage-ID: <dsn-1@partner.example.net>\r\n"
           "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
           "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
           "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
           "Reporting-MTA: dns; mx.partner.example.net\r\n\r\n"
           "Final-Recipient: rfc822; dan@partner.example.net\r\nAction: failed\r\n"
           "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
           "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
           f"Message-ID: {copy['Message-ID']}\r\n--b--\r\n").encode()
    deliver_mail(papp, "", verp, dsn)
    with Session(papp.engine) as session:
        member = session.exec(select(Membership).where(
            Membership.person_id == world.people["dan@partner.example.net"])).one()
        item = session.exec(select(InboxItem).order_by(col(InboxItem.id).desc())).first()
    assert item is not None and "hard bounce" in item.reason, item.reason
    assert member.bounce_score == 1.0
