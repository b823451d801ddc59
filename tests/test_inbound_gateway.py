"""The SMTP/LMTP gateway driven by real clients over loopback, and what lands in the archive."""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import Session, select

from bridge.app import App
from bridge.cli import main
from bridge.directory import add_member, create_community
from bridge.models import Conversation, Delivery, InboxItem, Message
from bridge.settings import Settings
from tests.conftest import DOMAIN, STAFF_DOMAIN, free_port, write_settings
from tests.servers import serving, wait_for


def make_app(tmp_path: Path, db_url: str, smtp_extra: str = "") -> tuple[App, Path]:
    ports = f"\n[smtp]\nport = {free_port()}\nlmtp_host = \"127.0.0.1\"\n" \
            f"lmtp_port = {free_port()}\nmax_recipients = 5\nmax_message_size = 200000\n" \
            f"{smtp_extra}[web]\nport = {free_port()}\n"
    path = write_settings(tmp_path, db_url, ports)
    app = App(Settings.load(path, environ={}))
    with app.session() as session:
        for slug in ("rd", "sales"):
            community = create_community(session, slug, slug.upper(), policy="members")
            add_member(session, community, f"alice@{STAFF_DOMAIN}", name="Alice")
            add_member(session, community, f"bob@{STAFF_DOMAIN}", name="Bob")
    return app, path


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[App]:
    app, _ = make_app(tmp_path, db_url)
    with serving(app):
        yield app
    app.dispose()


def mail(sender: str, to: str, subject: str, body: str, message_id: str,
         **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def smtp(app: App) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", app.settings.smtp.port, timeout=30)


def messages(app: App, slug: str | None = None) -> list[Message]:
    with Session(app.engine) as session:
        rows = session.exec(select(Message).order_by(Message.id)).all()
    if slug is None:
        return list(rows)
    from bridge.models import Community

    with Session(app.engine) as session:
        community = session.exec(select(Community).where(Community.slug == slug)).one()
    return [m for m in rows if m.community_id == community.id]


def processed(app: App) -> bool:
    with Session(app.engine) as session:
        items = session.exec(select(InboxItem)).all()
    return bool(items) and all(i.status not in ("pending", "failed") for i in items)


ALICE = f"Alice <alice@{STAFF_DOMAIN}>"
BOB = f"Bob <bob@{STAFF_DOMAIN}>"
RD = f"rd@{DOMAIN}"


def test_thread_by_references_subject_and_early_reply(gateway: App) -> None:
    with smtp(gateway) as client:
        client.send_message(mail(ALICE, RD, "Budget 2027", "Shall we review the budget?",
                                 "root@example.com"))
        wait_for(lambda: len(messages(gateway)) == 1)
        client.send_message(mail(BOB, RD, "Re: Budget 2027", "Yes, on Monday.\n\n"
                                 "On Tue, 24 Nov 2026 at 10:02, Alice <alice@example.com> wrote:\n"
                                 "> Shall we review the budget?",
                                 "r1@example.com", In_Reply_To="<root@example.com>",
                                 References="<root@example.com>"))
        # A reply by subject only (a client that dropped the headers), French prefix.
        client.send_message(mail(ALICE, RD, "RE : [RD] Budget 2027", "Monday is fine.",
                                 "r2@example.com"))
        # A reply whose parent arrives after it.
        client.send_message(mail(BOB, RD, "Agenda", "Agreed, see you then.",
                                 "late-child@example.com",
                                 In_Reply_To="<late-parent@example.com>",
                                 References="<root@example.com> <late-parent@example.com>"))
        wait_for(lambda: len(messages(gateway)) == 4)
        client.send_message(mail(ALICE, RD, "Re: Budget 2027", "Agenda: budget, then hiring.",
                                 "late-parent@example.com", In_Reply_To="<r1@example.com>",
                                 References="<root@example.com> <r1@example.com>"))
    wait_for(lambda: len(messages(gateway)) == 5)
    stored = {m.message_id: m for m in messages(gateway)}
    assert len({m.conversation_id for m in stored.values()}) == 1
    assert stored["r1@example.com"].text == "Yes, on Monday."
    assert "Shall we review" in stored["r1@example.com"].quoted
    assert stored["late-child@example.com"].parent_id == stored["late-parent@example.com"].id
    with Session(gateway.engine) as session:
        conversation = session.exec(select(Conversation)).one()
    assert conversation.message_count == 5
    assert conversation.subject == "Budget 2027"
    assert conversation.first_reply_at is not None


def test_early_reply_in_its_own_conversation_is_merged(gateway: App) -> None:
    with smtp(gateway) as client:
        client.send_message(mail(BOB, RD, "Re: Offsite", "Count me in.", "child@example.com",
                                 In_Reply_To="<parent@example.com>"))
        wait_for(lambda: len(messages(gateway)) == 1)
        client.send_message(mail(ALICE, RD, "Offsite in May?", "Who comes to the offsite?",
                                 "parent@example.com"))
    wait_for(lambda: len(messages(gateway)) == 2)
    wait_for(lambda: processed(gateway), 10)
    stored = {m.message_id: m for m in messages(gateway)}
    assert stored["child@example.com"].conversation_id == \
        stored["parent@example.com"].conversation_id
    assert stored["child@example.com"].parent_id == stored["parent@example.com"].id
    with Session(gateway.engine) as session:
        conversations = session.exec(select(Conversation)).all()
    assert len(conversations) == 1
    assert conversations[0].subject == "Offsite in May?"


def test_message_to_two_communities_is_posted_in_each(gateway: App) -> None:
    with smtp(gateway) as client:
        client.send_message(mail(ALICE, f"{RD}, sales@{DOMAIN}", "Customer visit",
                                 "The customer visits on Friday.", "both@example.com"))
    wait_for(lambda: len(messages(gateway)) == 2)
    assert {m.community_id for m in messages(gateway)} == {1, 2} or \
        len({m.community_id for m in messages(gateway)}) == 2


def test_same_message_twice_is_archived_once(gateway: App) -> None:
    message = mail(ALICE, RD, "Retry", "An MTA retries after a lost 250.", "twice@example.com")
    with smtp(gateway) as client:
        client.send_message(message)
        client.send_message(message)
    wait_for(lambda: processed(gateway))
    assert len(messages(gateway)) == 1
    with Session(gateway.engine) as session:
        items = session.exec(select(InboxItem).order_by(InboxItem.id)).all()
    assert [i.status for i in items] == ["done", "discarded"]
    assert "already archived" in items[1].reason


def test_rcpt_and_data_refusals(gateway: App) -> None:
    with smtp(gateway) as client:
        code, features = client.ehlo()
        assert code == 250
        assert b"SIZE 200000" in features
        client.mail(f"alice@{STAFF_DOMAIN}")
        code, text = client.rcpt(f"nobody@{DOMAIN}")
        assert code == 550 and text.startswith(b"5.1.1")
        code, text = client.rcpt("someone@elsewhere.example")
        assert code == 550 and b"5.7.1" in text and b"relaying denied" in text
        code, text = client.rcpt(f"reply+notatoken@{DOMAIN}")
        assert code == 550 and text.startswith(b"5.1.1")
        code, text = client.rcpt(f"reply+{'a' * 32}@{DOMAIN}")
        assert code == 550 and b"not valid" in text
        for _ in range(5):
            assert client.rcpt(RD)[0] == 250
        code, text = client.rcpt(f"sales@{DOMAIN}")
        assert code == 452 and text.startswith(b"4.5.3")
        client.rset()
        for local in ("rd+subscribe", "rd+unsubscribe", "rd+help", "rd+owner", "postmaster"):
            client.mail("someone@elsewhere.example")
            assert client.rcpt(f"{local}@{DOMAIN}")[0] == 250, local
            client.rset()
        client.mail(f"alice@{STAFF_DOMAIN}")
        client.rcpt(RD)
        code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n" * 1
                                 + (b"y" * 998 + b"\r\n") * 250)
        assert code == 552 and text.startswith(b"5.3.4")


def test_lmtp_answers_once_per_recipient(gateway: App) -> None:
    client = smtplib.LMTP("127.0.0.1", gateway.settings.smtp.lmtp_port, timeout=30)
    try:
        refused = client.send_message(mail(ALICE, f"{RD}, sales@{DOMAIN}", "Via LMTP",
                                           "Handed over by the MTA.", "lmtp@example.com"))
        assert refused == {}
    finally:
        client.quit()
    wait_for(lambda: len(messages(gateway)) == 2)


def test_swaks_delivers(gateway: App) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (scripts/install-system-deps installs it)")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{gateway.settings.smtp.port}", "--from",
         f"alice@{STAFF_DOMAIN}", "--to", RD, "--header", "Subject: Sent with swaks",
         "--header", "Message-Id: <swaks@example.com>", "--body", "Hello from swaks."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Queued as #" in result.stdout
    wait_for(lambda: len(messages(gateway)) == 1)
    assert messages(gateway)[0].text == "Hello from swaks."


def test_non_member_is_held_and_approved_by_cli(gateway: App, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with smtp(gateway) as client:
        client.send_message(mail(f"Eve <eve@{STAFF_DOMAIN}>", RD, "Question",
                                 "Can I join?", "eve@example.com"))
    wait_for(lambda: processed(gateway))
    assert messages(gateway) == []
    settings_path = gateway.settings.source
    assert settings_path is not None
    assert main(["--config", str(settings_path), "held", "list", "--json"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert [(h["community"], h["sender"]) for h in held] == [("rd", f"eve@{STAFF_DOMAIN}")]
    assert "only members" in held[0]["reason"]
    assert main(["--config", str(settings_path), "held", "approve", str(held[0]["id"]),
                 "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["inbox_status"] == "done"
    assert [m.message_id for m in messages(gateway)] == ["eve@example.com"]
    assert main(["--config", str(settings_path), "held", "reject", str(held[0]["id"])]) == 1
    assert "already approved" in capsys.readouterr().err


def test_posts_fan_out_to_members(gateway: App) -> None:
    with smtp(gateway) as client:
        client.send_message(mail(ALICE, RD, "Fan-out", "Everyone but me.", "fan@example.com"))
    wait_for(lambda: processed(gateway))
    with Session(gateway.engine) as session:
        deliveries = session.exec(select(Delivery)).all()
    assert [d.address for d in deliveries] == [f"bob@{STAFF_DOMAIN}"]


def test_postfix_relays_over_lmtp_into_the_archive(tmp_path: Path, db_url: str) -> None:
    from tests.postfix import Postfix

    app, _ = make_app(tmp_path, db_url)
    postfix = Postfix({
        "relay_domains": DOMAIN,
        "transport_maps": f"inline:{{{DOMAIN}=lmtp:inet:127.0.0.1:"
                          f"{app.settings.smtp.lmtp_port}}}",
    })
    postfix.start()
    try:
        with serving(app):
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
                client.send_message(mail(ALICE, f"{RD}, sales@{DOMAIN}", "Through Postfix",
                                         "Relayed by a real MTA.", "postfix@example.com"))
            wait_for(lambda: len(messages(app)) == 2, 30)
            wait_for(lambda: "status=sent" in postfix.read_log(), 10)
        log = postfix.read_log()
        assert "relay=127.0.0.1" in log and "status=sent (250 2.0.0 Queued as #" in log
        with Session(app.engine) as session:
            items = session.exec(select(InboxItem)).all()
        assert [item.source for item in items] == ["lmtp"]
        assert sorted(items[0].rcpt_to) == [RD, f"sales@{DOMAIN}"]
    except BaseException:
        print(postfix.read_log())
        raise
    finally:
        postfix.stop()
        app.dispose()


def test_per_client_limits_answer_421_and_451(tmp_path: Path, db_url: str) -> None:
    app, _ = make_app(tmp_path, db_url, "max_connections_per_client = 2\n"
                                        "max_messages_per_minute_per_client = 3\n")
    with serving(app):
        first, second = smtp(app), smtp(app)
        third = smtplib.SMTP()
        code, text = third.connect("127.0.0.1", app.settings.smtp.port)
        assert code == 421 and b"4.7.0" in text and b"Too many connections" in text
        third.close()
        first.ehlo()
        for _ in range(3):
            assert first.mail(f"alice@{STAFF_DOMAIN}")[0] == 250
            first.rset()
        code, text = first.mail(f"alice@{STAFF_DOMAIN}")
        assert code == 451 and text.startswith(b"4.7.1")
        first.quit()
        second.quit()
    app.dispose()


def test_starttls_is_offered_with_a_certificate(tmp_path: Path, db_url: str) -> None:
    import ssl

    from tests.dovecot import make_certificate

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no test certificate")
    cert, key = make_certificate(tmp_path)
    app, _ = make_app(tmp_path, db_url, f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    with serving(app):
        with smtp(app) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            context = ssl.create_default_context(cafile=str(cert))
            client.starttls(context=context)
            client.ehlo()
            client.send_message(mail(ALICE, RD, "Over TLS", "Encrypted on the wire.",
                                     "tls@example.com"))
        wait_for(lambda: len(messages(app)) == 1)
    app.dispose()
