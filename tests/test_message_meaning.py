"""What a message really says, end to end through the processor: replies from several mail
clients, forwarded threads, a community Cc'd into a thread, and corporate mail (banners,
Safe Links, winmail.dat, invitations, S/MIME and PGP, dangerous attachments, reply-alls
that would bring guests into an internal community)."""

from __future__ import annotations

import struct
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from sqlmodel import Session, col, select

from bridge import wiring
from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import Attachment, Conversation, Held, InboxItem, Message
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN, STAFF_DOMAIN

RD = f"rd@{DOMAIN}"
ALICE = f"Alice Martin <alice@{STAFF_DOMAIN}>"
BOB = f"Bob Durand <bob@{STAFF_DOMAIN}>"
CLAIRE = f"Claire Petit <claire@{STAFF_DOMAIN}>"
DAN = f"Dan Smith <dan@{STAFF_DOMAIN}>"


@pytest.fixture
def rd(app: App) -> App:
    with app.session() as session:
        community = create_community(session, "rd", "R&D")
        for address, name in ((f"alice@{STAFF_DOMAIN}", "Alice Martin"),
                              (f"bob@{STAFF_DOMAIN}", "Bob Durand"),
                              (f"claire@{STAFF_DOMAIN}", "Claire Petit"),
                              (f"dan@{STAFF_DOMAIN}", "Dan Smith")):
            add_member(session, community, address, name=name)
    return app


def deliver(app: App, *messages: EmailMessage | MIMEMultipart) -> None:
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    for message in messages:
        writer.accept_sync(message.as_bytes(), Envelope(mail_from=f"alice@{STAFF_DOMAIN}",
                                                        rcpt_to=[RD]))
    wiring.processor(app).run_until_idle()


def stored(app: App) -> list[Message]:
    with Session(app.engine) as session:
        return list(session.exec(select(Message).order_by(col(Message.date),
                                                          col(Message.id))))


def headers(message: EmailMessage | MIMEMultipart, sender: str, subject: str,
            message_id: str, in_reply_to: str = "", to: str = RD, cc: str = "") -> None:
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}>"
    message["Date"] = "Wed, 25 Nov 2026 10:00:00 +0000"
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        message["References"] = f"<{in_reply_to}>"


def test_three_mail_clients_reply_into_one_conversation_of_new_words(rd: App) -> None:
    first = EmailMessage()
    headers(first, ALICE, "Test bench for the new sensor", "t0@example.com")
    first.set_content("Hi all,\n\nWho can lend me the test bench on Friday?\n\nAlice")

    gmail = EmailMessage()
    headers(gmail, BOB, "Re: Test bench for the new sensor", "t1@example.com",
            "t0@example.com")
    gmail.set_content("I can, it is free all day.\n\nOn Wed, Nov 25, 2026 at 10:00 AM Alice "
                      "Martin <alice@example.com> wrote:\n> Hi all,\n>\n> Who can lend me the "
                      "test bench on Friday?\n>\n> Alice\n")
    gmail.add_alternative(
        '<div dir="ltr">I can, it is free all day.</div><br><div class="gmail_quote">'
        '<div dir="ltr" class="gmail_attr">On Wed, Nov 25, 2026 at 10:00 AM Alice Martin '
        '&lt;<a href="mailto:alice@example.com">alice@example.com</a>&gt; wrote:<br></div>'
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px '
        'solid rgb(204,204,204);padding-left:1ex"><div dir="ltr">Hi all,<br><br>Who can lend '
        'me the test bench on Friday?<br><br>Alice</div></blockquote></div>', subtype="html")

    outlook = EmailMessage()
    headers(outlook, CLAIRE, "RE: Test bench for the new sensor", "t2@example.com",
            "t1@example.com")
    outlook.set_content(
        "Je peux aussi prêter le mien lundi si besoin.\n\nClaire\n\n"
        "________________________________\nDe : Bob Durand <bob@example.com>\n"
        "Envoyé : mercredi 25 novembre 2026 10:05\nÀ : rd@lists.example.org\n"
        "Objet : Re: Test bench for the new sensor\n\nI can, it is free all day.\n")

    apple = EmailMessage()
    headers(apple, DAN, "Re: Test bench for the new sensor", "t3@example.com",
            "t2@example.com")
    apple.set_content("Thanks both, I'll take Bob's on Friday.\n\nSent from my iPhone\n\n"
                      "> On 25 Nov 2026, at 10:10, Claire Petit <claire@example.com> wrote:\n"
                      ">\n> Je peux aussi prêter le mien lundi si besoin.\n")
    deliver(rd, first, gmail, outlook, apple)
    messages = stored(rd)
    assert len({m.conversation_id for m in messages}) == 1
    assert [m.text for m in messages] == [
        "Hi all,\n\nWho can lend me the test bench on Friday?\n\nAlice",
        "I can, it is free all day.",
        "Je peux aussi prêter le mien lundi si besoin.\n\nClaire",
        "Thanks both, I'll take Bob's on Friday.",
    ]
    assert "Who can lend me" in messages[1].quoted
    assert "I can, it is free" in messages[2].quoted
    assert "iPhone" in messages[3].signature


OUTLOOK_FORWARD = """FYI, the customer's answer below.

Dan

From: Bob Durand <bob@example.com>
Sent: Tuesday, November 24, 2026 10:30 AM
To: Alice Martin <alice@client.example>
Subject: RE: Budget 2027

Great news, thanks! We'll start in January.

From: Alice Martin <alice@client.example>
Sent: Tuesday, November 24, 2026 9:12 AM
To: Bob Durand <bob@example.com>
Subject: Budget 2027

The budget is approved.
"""

GMAIL_FR_FORWARD = """Pour info, voir le fil ci-dessous.

Claire

---------- Message transféré ---------
De : Hélène Roux <helene@client.example>
Date: mar. 24 nov. 2026 à 16:40
Subject: Re: Réunion de lancement
To: Claire Petit <claire@example.com>


Parfait, jeudi 14 h nous convient.

Le mar. 24 nov. 2026 à 15:02, Claire Petit <claire@example.com> a écrit :
> Bonjour Hélène, que diriez-vous de jeudi 14 h ?
"""


@pytest.mark.parametrize(("subject", "body", "authors", "note"), [
    ("FW: Budget 2027", OUTLOOK_FORWARD,
     ["alice@client.example", "bob@example.com"], "FYI, the customer's answer below.\n\nDan"),
    ("TR: Réunion de lancement", GMAIL_FR_FORWARD,
     ["helene@client.example"], "Pour info, voir le fil ci-dessous.\n\nClaire"),
])
def test_forwarded_thread_keeps_its_authors_and_dates(rd: App, subject: str, body: str,
                                                      authors: list[str], note: str) -> None:
    forward = EmailMessage()
    headers(forward, DAN if subject.startswith("FW") else CLAIRE, subject, "fwd@example.com")
    forward.set_content(body)
    deliver(rd, forward)
    messages = stored(rd)
    assert len({m.conversation_id for m in messages}) == 1
    assert [m.from_address for m in messages[:-1]] == authors
    assert all(m.date.year == 2026 and m.date.day == 24 for m in messages[:-1])
    assert messages[-1].message_id == "fwd@example.com"
    assert messages[-1].text == note
    assert messages[-1].parent_id == messages[-2].id
    with Session(rd.engine) as session:
        conversation = session.exec(select(Conversation)).one()
    assert conversation.message_count == len(authors) + 1
    assert conversation.started_at.day == 24
    assert not conversation.subject.lower().startswith(("fw", "tr"))
    # A later reply-all that includes the community joins the same conversation.
    reply = EmailMessage()
    headers(reply, BOB, "RE: " + conversation.subject, "later@example.com")
    reply.set_content("Adding the team so everyone knows.")
    deliver(rd, reply)
    assert {m.conversation_id for m in stored(rd)} == {conversation.id}


def test_forward_as_attachment_keeps_the_original_message(rd: App) -> None:
    original = EmailMessage()
    original["From"] = "Hélène Roux <helene@client.example>"
    original["Subject"] = "Order 4711"
    original["Date"] = "Mon, 23 Nov 2026 08:00:00 +0100"
    original["Message-ID"] = "<order-4711@client.example>"
    original.set_content("Please confirm the delivery date for order 4711.")
    forward = EmailMessage()
    headers(forward, ALICE, "Fwd: Order 4711", "fwd-attached@example.com")
    forward.set_content("Can someone in logistics answer this?")
    forward.add_attachment(original)
    deliver(rd, forward)
    messages = stored(rd)
    assert [m.message_id for m in messages] == ["order-4711@client.example",
                                                 "fwd-attached@example.com"]
    assert messages[0].text == "Please confirm the delivery date for order 4711."
    assert messages[1].text == "Can someone in logistics answer this?"
    # The customer's reply-all, threaded by its real References, joins the conversation.
    answer = EmailMessage()
    headers(answer, "Hélène Roux <helene@client.example>", "Re: Order 4711",
            "answer@client.example", "order-4711@client.example")
    answer.set_content("Thanks! Delivery on Friday is fine.")
    with rd.session() as session:
        community = session.exec(select(__import__("bridge.models").models.Community)).one()
        community.admits_guests = True
        community.posting_policy = "open"
        session.add(community)
    deliver(rd, answer)
    assert len({m.conversation_id for m in stored(rd)}) == 1


def test_a_thread_that_cc_s_the_community_continues_in_it(rd: App) -> None:
    start = EmailMessage()
    headers(start, ALICE, "Supplier audit", "audit-1@example.com",
            to=f"bob@{STAFF_DOMAIN}", cc=RD)
    start.set_content("Bob, can you join the supplier audit next week? Copying the team.")
    reply = EmailMessage()
    headers(reply, BOB, "Re: Supplier audit", "audit-2@example.com", "audit-1@example.com",
            to=f"alice@{STAFF_DOMAIN}", cc=RD)
    reply.set_content("Yes, Tuesday works.")
    deliver(rd, start, reply)
    messages = stored(rd)
    assert len(messages) == 2 and len({m.conversation_id for m in messages}) == 1


def test_banner_and_safe_links_are_cleaned(rd: App) -> None:
    message = EmailMessage()
    headers(message, ALICE, "Datasheet", "banner@example.com")
    message.set_content(
        "CAUTION: This email originated from outside of the organization. Do not click links "
        "or open attachments unless you recognize the sender and know the content is safe.\n\n"
        "The datasheet is here: https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F"
        "%2Fvendor.example%2Fdatasheet.pdf&data=05%7C01%7C&sdata=abc&reserved=0\n")
    deliver(rd, message)
    assert stored(rd)[0].text == "The datasheet is here: https://vendor.example/datasheet.pdf"


def _tnef(body: bytes, filename: bytes, data: bytes) -> bytes:
    """A minimal winmail.dat, as Outlook writes it (signature, key, attributes)."""
    def attribute(level: int, name: int, kind: int, value: bytes) -> bytes:
        return struct.pack("<BHHI", level, name, kind, len(value)) + value + \
            struct.pack("<H", sum(value) & 0xFFFF)

    return (struct.pack("<IH", 0x223E9F78, 0x0101)
            + attribute(1, 0x9006, 0x0009, struct.pack("<I", 0x10000))
            + attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
            + attribute(1, 0x800C, 0x0002, body + b"\x00")
            + attribute(2, 0x9002, 0x0006, b"\x01\x00" + b"\xff" * 4 + b"\x00" * 8)
            + attribute(2, 0x8010, 0x0001, filename + b"\x00")
            + attribute(2, 0x800F, 0x0006, data))


def test_winmail_dat_is_unpacked(rd: App) -> None:
    message = MIMEMultipart()
    headers(message, ALICE, "Quarterly report", "tnef@example.com")
    part = MIMEApplication(_tnef(b"Please find the quarterly report attached.", b"Q3.txt",
                                 b"revenue up 4%"), "ms-tnef", name="winmail.dat")
    part.add_header("Content-Disposition", "attachment", filename="winmail.dat")
    message.attach(part)
    deliver(rd, message)
    [archived] = stored(rd)
    assert archived.text == "Please find the quarterly report attached."
    with Session(rd.engine) as session:
        files = session.exec(select(Attachment)).all()
    assert [(a.filename, a.size) for a in files] == [("Q3.txt", len(b"revenue up 4%"))]
    assert rd.blobs.get(files[0].sha256) == b"revenue up 4%"


def test_calendar_invitation_becomes_a_readable_summary(rd: App) -> None:
    message = MIMEMultipart("alternative")
    headers(message, ALICE, "Invitation: Design review", "ics@example.com")
    message.attach(MIMEText("", "plain"))
    message.attach(MIMEText(
        "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Design review\r\n"
        "DTSTART:20261203T140000Z\r\nDTEND:20261203T150000Z\r\nLOCATION:Room 4\\, "
        "building B\r\nORGANIZER;CN=Alice:mailto:alice@example.com\r\nDESCRIPTION:Agenda:"
        "\\n- sensor housing\\n- test plan\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n", "calendar"))
    deliver(rd, message)
    text = stored(rd)[0].text
    assert text.startswith("[Invitation] Design review")
    assert "When: 2026-12-03 14:00 UTC – 2026-12-03 15:00 UTC" in text
    assert "Where: Room 4, building B" in text
    assert "Organizer: alice@example.com" in text and "- test plan" in text


def test_signed_and_encrypted_mail_is_stored_with_its_status(rd: App) -> None:
    signed = MIMEMultipart("signed", protocol="application/pkcs7-signature", micalg="sha-256")
    headers(signed, ALICE, "Signed", "smime-signed@example.com")
    signed.attach(MIMEText("This message is signed with S/MIME."))
    signature = MIMEApplication(b"0\x82\x01\x00fake-pkcs7", "pkcs7-signature", name="smime.p7s")
    signature.add_header("Content-Disposition", "attachment", filename="smime.p7s")
    signed.attach(signature)
    encrypted = MIMEApplication(b"0\x80\x06\x09*\x86H\x86\xf7\r\x01\x07\x03encrypted",
                                "pkcs7-mime", name="smime.p7m")
    encrypted.set_param("smime-type", "enveloped-data")
    headers(encrypted, BOB, "Encrypted", "smime-encrypted@example.com")  # type: ignore[arg-type]
    pgp = EmailMessage()
    headers(pgp, CLAIRE, "PGP signed", "pgp@example.com")
    pgp.set_content("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nThe release is "
                    "tagged.\n- -- not a signature\n-----BEGIN PGP SIGNATURE-----\n\niQEz"
                    "BAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n")
    deliver(rd, signed, encrypted, pgp)  # type: ignore[arg-type]
    messages = {m.message_id: m for m in stored(rd)}
    assert (messages["smime-signed@example.com"].text,
            messages["smime-signed@example.com"].security) == (
        "This message is signed with S/MIME.", "signed")
    assert not messages["smime-signed@example.com"].has_attachments
    assert messages["smime-encrypted@example.com"].security == "encrypted"
    assert messages["pgp@example.com"].security == "signed"
    assert messages["pgp@example.com"].text == "The release is tagged.\n-- not a signature"


def test_dangerous_attachments_are_recorded_not_stored(rd: App) -> None:
    message = EmailMessage()
    headers(message, ALICE, "Tools", "exe@example.com")
    message.set_content("The installer and the notes.")
    message.add_attachment(b"MZ\x90\x00binary", maintype="application",
                           subtype="octet-stream", filename="setup.exe")
    message.add_attachment(b"notes", maintype="text", subtype="plain", filename="notes.txt")
    deliver(rd, message)
    with Session(rd.engine) as session:
        files = {a.filename: a for a in session.exec(select(Attachment))}
    assert files["setup.exe"].sha256 == "" and files["notes.txt"].sha256 != ""


def test_reply_all_bringing_guests_into_an_internal_community_is_held(rd: App) -> None:
    message = EmailMessage()
    headers(message, ALICE, "Re: Pricing", "leak@example.com",
            to="buyer@customer.example", cc=RD)
    message.set_content("Our internal floor price is 40k, let's offer 55k.")
    deliver(rd, message)
    assert stored(rd) == []
    with Session(rd.engine) as session:
        held = session.exec(select(Held)).one()
        item = session.exec(select(InboxItem)).one()
    assert "outside the company (buyer@customer.example)" in held.reason
    assert item.status == "held"


def test_the_sender_confirms_a_reply_all_that_includes_guests(rd: App) -> None:
    """The sender of a held reply-all gets the confirmation request (moderators too), and
    answering "approve" to its address posts the message."""
    import email

    from bridge.models import Delivery
    from outbound.moderation import Moderation
    from outbound.notices import Notices

    message = EmailMessage()
    headers(message, ALICE, "Re: Delivery dates", "confirm@example.com",
            to="buyer@customer.example", cc=RD)
    message.set_content("Friday works for the delivery.")
    deliver(rd, message)
    assert stored(rd) == []
    Moderation(rd, Notices(rd)).sweep()
    with Session(rd.engine) as session:
        request = session.exec(select(Delivery).where(
            Delivery.kind == "moderation", Delivery.address == f"alice@{STAFF_DOMAIN}")).one()
    assert request.raw is not None
    reply_to = email.message_from_bytes(request.raw)["Reply-To"]
    answer = EmailMessage()
    headers(answer, ALICE, "Re: confirm", "answer@example.com", to=reply_to)
    answer.set_content("approve")
    writer = InboxWriter(rd.engine, rd.blobs, rd.settings.processor.inline_raw_limit,
                         rd.clock)
    writer.accept_sync(answer.as_bytes(), Envelope(mail_from=f"alice@{STAFF_DOMAIN}",
                                                   rcpt_to=[reply_to]))
    wiring.processor(rd).run_until_idle()
    assert [m.message_id for m in stored(rd)] == ["confirm@example.com"]
    with Session(rd.engine) as session:
        held = session.exec(select(Held)).one()
    assert (held.status, held.code, held.decided_by) == (
        "approved", "confirm_external", f"alice@{STAFF_DOMAIN}")


def test_a_member_whose_dmarc_evaluation_failed_is_held(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    """Authentication-Results from the trusted upstream (our MX) saying dmarc=fail: the post
    is held, not posted; the same header added by anyone else is not trusted."""
    from bridge.settings import Settings
    from tests.conftest import write_settings

    path = write_settings(tmp_path, db_url,
                          '[processor]\ntrusted_authserv_ids = ["mx.example.com"]\n')
    app = App(Settings.load(path, environ={}))
    try:
        with app.session() as session:
            community = create_community(session, "rd", "R&D")
            add_member(session, community, f"alice@{STAFF_DOMAIN}", name="Alice Martin")
        forged = EmailMessage()
        headers(forged, ALICE, "Wire the money", "dmarc-fail@example.com")
        forged["Authentication-Results"] = (f"mx.example.com; spf=fail smtp.mailfrom="
                                            f"{STAFF_DOMAIN}; dmarc=fail header.from="
                                            f"{STAFF_DOMAIN}")
        forged.set_content("Please wire the money today.")
        spoofed = EmailMessage()
        headers(spoofed, ALICE, "Hello", "untrusted@example.com")
        spoofed["Authentication-Results"] = f"evil.example; dmarc=fail header.from={STAFF_DOMAIN}"
        spoofed.set_content("An Authentication-Results from anyone else is ignored.")
        deliver(app, forged, spoofed)
        assert [m.message_id for m in stored(app)] == ["untrusted@example.com"]
        with Session(app.engine) as session:
            held = session.exec(select(Held)).one()
        assert "DMARC" in held.reason
    finally:
        app.dispose()
