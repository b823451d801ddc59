"""The processor's batch writes: the rows of a batch's messages are written together at the
end (one statement per table), and still a message that fails leaves nothing behind while
the others of its batch are stored, whether it fails while being handled or only when its
rows are written."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from sqlmodel import Session, col, select

from bridge import wiring
from bridge.app import App
from bridge.directory import create_community
from bridge.models import Conversation, InboxItem, Message, Person
from inbound.batch import Batch, Staged
from inbound.processor import Prepared, Processor
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN

RD = f"rd@{DOMAIN}"


@pytest.fixture
def rd(app: App) -> App:
    with app.session() as session:
        create_community(session, "rd", "R&D", policy="open", admits_guests=True)
    return app


def deliver(app: App, count: int) -> None:
    """`count` messages from as many new people, processed in one batch."""
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    for number in range(1, count + 1):
        message = EmailMessage()
        message["From"] = f"Person {number} <p{number}@example.net>"
        message["To"] = RD
        message["Subject"] = f"Topic {number}"
        message["Message-ID"] = f"<m{number}@example.net>"
        message["Date"] = "Wed, 25 Nov 2026 10:00:00 +0000"
        message.set_content(f"Message number {number}.")
        writer.accept_sync(message.as_bytes(), Envelope(mail_from=f"p{number}@example.net",
                                                        rcpt_to=[RD]))
    assert wiring.processor(app).run_once() == count


def outcomes(app: App) -> list[tuple[str, str]]:
    with Session(app.engine) as session:
        return [(item.status, item.reason) for item in
                session.exec(select(InboxItem).order_by(col(InboxItem.id)))]


def archived(app: App) -> list[Message]:
    with Session(app.engine) as session:
        return list(session.exec(select(Message).order_by(col(Message.id))))


def test_a_batch_is_stored_with_the_ids_the_database_gives(rd: App) -> None:
    deliver(rd, 3)
    messages = archived(rd)
    assert [m.message_id for m in messages] == ["m1@example.net", "m2@example.net",
                                                "m3@example.net"]
    with Session(rd.engine) as session:
        conversations = session.exec(select(Conversation).order_by(col(Conversation.id))).all()
        people = session.exec(select(Person).order_by(col(Person.id))).all()
    assert [c.message_count for c in conversations] == [1, 1, 1]
    assert [m.conversation_id for m in messages] == [c.id for c in conversations]
    assert [m.author_id for m in messages] == [p.id for p in people]
    assert [p.display_name for p in people] == ["Person 1", "Person 2", "Person 3"]
    assert [status for status, _ in outcomes(rd)] == ["done"] * 3


def test_a_message_that_fails_after_staging_its_rows_leaves_none(
        rd: App, monkeypatch: pytest.MonkeyPatch) -> None:
    insert_message = Processor.insert_message

    def failing(self: Processor, batch: Batch, staged: Staged, prepared: Prepared,
                community: Any, values: dict[str, Any]) -> int:
        pk = insert_message(self, batch, staged, prepared, community, values)
        if values["message_id"] == "m2@example.net":
            raise RuntimeError("broken on purpose")
        return pk

    monkeypatch.setattr(Processor, "insert_message", failing)
    deliver(rd, 3)
    assert [status for status, _ in outcomes(rd)] == ["done", "failed", "done"]
    assert "broken on purpose" in outcomes(rd)[1][1]
    messages = archived(rd)
    assert [m.message_id for m in messages] == ["m1@example.net", "m3@example.net"]
    with Session(rd.engine) as session:
        names = session.exec(select(Person.display_name).order_by(col(Person.id))).all()
        conversations = session.exec(select(Conversation.id)).all()
    assert names == ["Person 1", "Person 3"]
    assert len(conversations) == 2
    if rd.engine.dialect.name == "sqlite":  # the ids it took are given again, as SQLite does
        assert [m.id for m in messages] == [1, 2]


def test_a_row_the_database_refuses_fails_only_its_message(
        rd: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    insert_message = Processor.insert_message

    def refused(self: Processor, batch: Batch, staged: Staged, prepared: Prepared,
                community: Any, values: dict[str, Any]) -> int:
        if values["message_id"] == "m2@example.net":
            values = values | {"conversation_id": 10**9}  # no such conversation
        return insert_message(self, batch, staged, prepared, community, values)

    monkeypatch.setattr(Processor, "insert_message", refused)
    deliver(rd, 3)
    assert [status for status, _ in outcomes(rd)] == ["done", "failed", "done"]
    assert "IntegrityError" in outcomes(rd)[1][1]
    assert "once more, row by row" in caplog.text  # written in bulk first, then row by row
    assert [m.message_id for m in archived(rd)] == ["m1@example.net", "m3@example.net"]
    with Session(rd.engine) as session:
        names = session.exec(select(Person.display_name).order_by(col(Person.id))).all()
    assert names == ["Person 1", "Person 3"]
