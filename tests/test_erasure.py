"""Erasure: redact a message, forget a person; the index, the raw store and the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from archive.people import rank_people
from archive.search import search
from bridge.app import App
from bridge.cli import main
from bridge.db import upgrade
from bridge.directory import create_community
from bridge.models import Address, Attachment, AuditLog, InboxItem, Message, Person
from tests.archive_mail import cli_json, import_mail, mail

_message = Message.__table__  # type: ignore[attr-defined]
_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_attachment = Attachment.__table__  # type: ignore[attr-defined]
_audit = AuditLog.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]

ALICE = "Alice Martin <alice@example.com>"
BOB = "Bob Stone <bob@partner.org>"
SHARED = b"\x00shared attachment bytes\x01" * 50


@pytest.fixture
def archive(app: App, settings_path: Path, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> App:
    upgrade(app.engine)
    with app.session() as session:
        create_community(session, "rd", "R&D", policy="open", visibility="public",
                         admits_guests=True)
    big = "A very long log line about the zanzibar failure.\n" * 7000  # > inline_raw_limit
    import_mail(capsys, settings_path, tmp_path, "rd", [
        mail("m1@x", ALICE, "Quokka budget", "The quokka budget is secret.\n\nAlice Martin\n",
             date="Mon, 4 May 2026 10:00:00 +0000", attachment=SHARED),
        mail("m2@x", BOB, "Re: Quokka budget",
             "Alice Martin <alice@example.com> wrote:\n> The quokka budget\n\nAgreed.",
             date="Mon, 4 May 2026 11:00:00 +0000", reply_to="m1@x", attachment=SHARED),
        mail("m3@x", ALICE, "Zanzibar log", big, date="Mon, 4 May 2026 12:00:00 +0000"),
    ])
    return app


def row(app: App, message_id: str) -> object:
    with app.engine.connect() as connection:
        return connection.execute(select(_message).where(
            _message.c.message_id == message_id)).one()


def subjects(app: App, query: str) -> list[str]:
    return [hit.message_id for hit in search(app.reader, query).hits]


def test_redact_removes_content_index_raw_and_unshared_blobs(
        archive: App, settings_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    app = archive
    assert subjects(app, "quokka secret") == ["m1@x"]
    with app.engine.connect() as connection:
        digest = connection.execute(select(_attachment.c.sha256)).scalars().first()
        big = connection.execute(select(_inbox.c.sha256, _inbox.c.raw).where(
            _inbox.c.header_message_id == "m3@x")).one()
    assert digest and app.blobs.exists(digest)
    assert big.raw is None and app.blobs.exists(big.sha256)  # large mail lives in the store

    erased = cli_json(capsys, settings_path, "redact", "<m1@x>", "--reason", "GDPR request 7")
    assert isinstance(erased, dict) and erased["attachments"] == 1 and erased["raw_mails"] == 1
    m1 = row(app, "m1@x")
    assert (m1.status, m1.text, m1.subject, m1.quoted, m1.signature, m1.html) == (
        "redacted", "", "", "", "", "")
    assert m1.redacted_reason == "GDPR request 7" and m1.redacted_at is not None
    assert subjects(app, "quokka secret") == []                  # gone from the index
    assert subjects(app, "quokka") == ["m2@x"]                   # the others remain
    with app.engine.connect() as connection:
        raw = connection.execute(select(_inbox.c.raw).where(
            _inbox.c.header_message_id == "m1@x")).scalar_one()
        audit = connection.execute(select(_audit).where(
            _audit.c.action == "message.redact")).one()
    assert raw is None
    assert audit.target == "<m1@x>" and audit.details["reason"] == "GDPR request 7"
    assert app.blobs.exists(digest)             # m2 still has the same attachment
    cli_json(capsys, settings_path, "redact", "m2@x", "--reason", "asked")
    assert not app.blobs.exists(digest)         # now nothing uses it
    cli_json(capsys, settings_path, "redact", "m3@x", "--reason", "asked")
    assert not app.blobs.exists(big.sha256)     # the raw store forgets large mail too
    assert subjects(app, "zanzibar") == []
    # The export leaves tombstones out; an unknown Message-ID is an error.
    report = cli_json(capsys, settings_path, "export", "mbox", "--community", "rd",
                      "--output", str(tmp_path / "out.mbox"))
    assert isinstance(report, dict) and report["messages"] == 0 and report["redacted"] == 3
    code = main(["--config", str(settings_path), "redact", "nope@x", "--reason", "x"])
    assert code == 1 and "no archived message <nope@x>" in capsys.readouterr().err


def test_forget_person_replaces_identity_everywhere(
        archive: App, settings_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = archive
    assert subjects(app, "from:alice")
    result = cli_json(capsys, settings_path, "forget-person", "Alice@Example.com")
    assert isinstance(result, dict)
    placeholder = result["placeholder"]
    assert isinstance(placeholder, str) and placeholder.endswith("@invalid")
    assert len(result["messages"]) == 2 and result["rewritten"] == 1
    for message_id in ("m1@x", "m3@x"):
        m = row(app, message_id)
        assert m.from_address == placeholder and "Alice" not in m.from_name
        assert m.status == "published"          # what she wrote stays
    reply = row(app, "m2@x")
    shown = reply.text + reply.quoted
    assert "alice@example.com" not in shown and "Alice Martin" not in shown
    assert placeholder in reply.quoted     # "Alice Martin <alice@...> wrote:" was quoted
    assert subjects(app, "from:alice") == [] and subjects(app, "alice") == []
    with app.engine.connect() as connection:
        raws = connection.execute(select(_inbox.c.raw, _inbox.c.mail_from).where(
            _inbox.c.header_message_id.in_(["m1@x", "m3@x"]))).all()
        person = connection.execute(select(_person).join(
            _address, _address.c.person_id == _person.c.id).where(
            _address.c.email == placeholder)).one()
        emails = list(connection.execute(select(_address.c.email)).scalars())
        audit = connection.execute(select(_audit).where(
            _audit.c.action == "person.forget")).one()
        hits = rank_people(connection, "quokka", None)
    assert all(r.raw is None and r.mail_from == placeholder for r in raws)
    assert person.forgotten_at is not None and "Alice" not in person.display_name
    assert "alice@example.com" not in emails
    assert "alice" not in str(audit.details).lower() and "alice" not in audit.target
    assert [h.address for h in hits] == ["bob@partner.org"]  # forgotten people are not ranked
    code = main(["--config", str(settings_path), "forget-person", "alice@example.com",
                 "--yes"])
    assert code == 1 and "no person" in capsys.readouterr().err
