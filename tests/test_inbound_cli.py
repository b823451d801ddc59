"""The administrator's view of inbound mail: inbox, message, conversation, explain, rebuild,
and the processor's handling of a message that makes a step fail."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import Session, select

from bridge import wiring
from bridge.app import App
from bridge.cli import main
from bridge.directory import add_member, create_community
from bridge.models import Conversation, InboxItem, Message
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN, STAFF_DOMAIN

RD = f"rd@{DOMAIN}"


def raw_mail(subject: str, body: str, message_id: str, sender: str = f"alice@{STAFF_DOMAIN}",
             **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = RD
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


@pytest.fixture
def community(app: App) -> App:
    with app.session() as session:
        rd = create_community(session, "rd", "R&D")
        add_member(session, rd, f"alice@{STAFF_DOMAIN}", name="Alice")
        add_member(session, rd, f"bob@{STAFF_DOMAIN}", name="Bob")
    return app


def deliver(app: App, raw: bytes, rcpt: str = RD) -> int:
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    return writer.accept_sync(raw, Envelope(mail_from=f"alice@{STAFF_DOMAIN}",
                                            rcpt_to=[rcpt]))


def cli_json(capsys: pytest.CaptureFixture[str], app: App, *argv: str) -> object:
    assert app.settings.source is not None
    code = main(["--config", str(app.settings.source), *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_message_and_conversation_json(community: App,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    deliver(community, raw_mail("Kick-off", "Let's start.\n\n-- \nAlice", "k1@example.com"))
    deliver(community, raw_mail("Re: Kick-off", "Great!\n\nOn Wed, 25 Nov 2026 at 09:00, "
                                "Alice <alice@example.com> wrote:\n> Let's start.",
                                "k2@example.com", sender=f"bob@{STAFF_DOMAIN}",
                                In_Reply_To="<k1@example.com>"))
    wiring.processor(community).run_until_idle()
    shown = cli_json(capsys, community, "message", "show", "<k2@example.com>")
    assert isinstance(shown, dict)
    assert {"message_id", "conversation", "author", "text", "quoted", "status"} <= set(shown)
    assert (shown["text"], shown["author"], shown["status"]) == (
        "Great!", f"bob@{STAFF_DOMAIN}", "published")
    assert "Let's start." in shown["quoted"]
    first = cli_json(capsys, community, "message", "show", "k1@example.com")
    assert first["text"] == "Let's start." and "Alice" in first["signature"]  # type: ignore[index]
    conversations = cli_json(capsys, community, "conversation", "list", "--community", "rd")
    assert isinstance(conversations, list) and len(conversations) == 1
    assert {"id", "subject", "message_count", "last_activity"} <= set(conversations[0])
    assert conversations[0]["message_count"] == 2
    conversation = cli_json(capsys, community, "conversation", "show",
                            str(conversations[0]["id"]))
    assert [m["message_id"] for m in conversation["messages"]] == [  # type: ignore[index]
        "k1@example.com", "k2@example.com"]
    inbox = cli_json(capsys, community, "inbox", "list")
    assert [(i["status"], i["kind"]) for i in inbox] == [("done", "reply"), ("done", "post")]  # type: ignore[union-attr]
    item = cli_json(capsys, community, "inbox", "show", str(inbox[0]["id"]))  # type: ignore[index]
    assert item["messages"][0]["community"] == "rd"  # type: ignore[index]


def test_a_failing_step_is_recorded_retried_and_blocks_nothing(
        community: App, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import inbound.processor as processor_module

    real_extract = processor_module.extract

    def fragile_extract(parsed, *args):  # type: ignore[no-untyped-def]
        if "boom" in parsed.subject:
            raise ValueError("the extractor choked")
        return real_extract(parsed, *args)

    monkeypatch.setattr(processor_module, "extract", fragile_extract)
    bad = deliver(community, raw_mail("boom", "This one breaks a step.", "bad@example.com"))
    deliver(community, raw_mail("Fine", "This one is fine.", "good@example.com"))
    wiring.processor(community).run_until_idle()
    with Session(community.engine) as session:
        item = session.get(InboxItem, bad)
        assert item is not None
        assert (item.status, item.attempts) == ("failed", 1)
        assert "the extractor choked" in item.reason
        assert item.next_attempt_at > community.clock.now()
        stored = session.exec(select(Message.message_id)).all()
    assert stored == ["good@example.com"]
    monkeypatch.setattr(processor_module, "extract", real_extract)
    result = cli_json(capsys, community, "inbox", "retry")
    assert result["queued"] == 1  # type: ignore[index]
    with Session(community.engine) as session:
        assert session.get(InboxItem, bad).status == "done"  # type: ignore[union-attr]


def test_explain_prints_what_would_happen(community: App, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    deliver(community, raw_mail("Budget", "Numbers attached.", "b1@example.com"))
    wiring.processor(community).run_until_idle()
    reply = tmp_path / "reply.eml"
    reply.write_bytes(raw_mail("Re: Budget", "Thanks, looks good.\n\nLe mer. 25 nov. 2026 à "
                               "10:00, Alice <alice@example.com> a écrit :\n> Numbers attached.",
                               "b2@example.com", sender=f"bob@{STAFF_DOMAIN}",
                               In_Reply_To="<b1@example.com>"))
    elsewhere = tmp_path / "elsewhere.eml"
    elsewhere.write_bytes(raw_mail("Hello", "Not for us.", "x@example.com")
                          .replace(RD.encode(), b"team@other.example"))
    auto = tmp_path / "auto.eml"
    auto.write_bytes(raw_mail("Absence du bureau", "Je suis absent.", "oof@example.com",
                              Auto_Submitted="auto-replied"))
    reports = cli_json(capsys, community, "inbox", "explain", str(reply), str(elsewhere),
                       str(auto))
    assert isinstance(reports, list) and len(reports) == 3
    first, second, third = reports
    assert (first["kind"], first["community"], first["text"]) == ("reply", "rd",
                                                                  "Thanks, looks good.")
    assert "Numbers attached." in first["quoted"]
    with Session(community.engine) as session:
        conversation = session.exec(select(Conversation)).one()
    assert first["conversation"] == conversation.id
    assert second["community"] is None and second["kind"] == "post"
    assert third["kind"] == "auto_reply"
    with Session(community.engine) as session:  # explain stored nothing
        assert len(session.exec(select(InboxItem)).all()) == 1


def test_rebuild_rederives_conversations_without_sending(
        community: App, capsys: pytest.CaptureFixture[str]) -> None:
    deliver(community, raw_mail("One", "First.", "o1@example.com"))
    deliver(community, raw_mail("Re: One", "Second.", "o2@example.com",
                                In_Reply_To="<o1@example.com>"))
    wiring.processor(community).run_until_idle()
    assert community.settings.source is not None
    assert main(["--config", str(community.settings.source), "rebuild", "--yes"]) == 0
    with Session(community.engine) as session:
        messages = session.exec(select(Message)).all()
        conversations = session.exec(select(Conversation)).all()
    assert sorted(m.message_id for m in messages) == ["o1@example.com", "o2@example.com"]
    assert len(conversations) == 1 and conversations[0].message_count == 2
