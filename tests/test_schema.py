"""The schema: migrations from empty to head on both databases, and the unique keys that
make retries harmless, enforced by the database itself (raw inserts, no Python checks)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, inspect
from sqlalchemy.exc import IntegrityError

from bridge.app import App
from bridge.db import SchemaBehind, check_schema, current_revision, head_revision
from bridge.models import (
    Address,
    Community,
    Conversation,
    Delivery,
    DigestRun,
    Held,
    ImapSeen,
    InboxItem,
    Membership,
    Message,
    Person,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_migrated_to_head(app: App) -> None:
    assert current_revision(app.engine) == head_revision()
    check_schema(app.engine)
    tables = set(inspect(app.engine).get_table_names())
    assert {"community", "person", "address", "membership", "organisation", "conversation",
            "message", "attachment", "inboxitem", "delivery", "digestrun", "held",
            "auditlog", "imapstate", "imapseen", "mute", "logintoken"} <= tables


def test_behind_schema_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bridge.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaBehind, match="causerie db upgrade"):
        check_schema(engine)
    engine.dispose()


def _insert(app: App, model: type, **values: object) -> int:
    with app.engine.begin() as connection:
        result = connection.execute(insert(model.__table__).values(**values))  # type: ignore[attr-defined]
        return int(result.inserted_primary_key[0])


def _base(app: App) -> dict[str, int]:
    community = _insert(app, Community, slug="rd", name="R&D", description="", language="en",
                        visibility="internal", posting_policy="members", admits_guests=False,
                        subject_tag="", reply_to="personal", goals={}, created_at=NOW)
    person = _insert(app, Person, display_name="A", language="", timezone="", digest_time="",
                     digest_weekday="", own_copies=False, created_at=NOW)
    inbox = _insert(app, InboxItem, received_at=NOW, source="smtp", peer="", helo="",
                    mail_from="", rcpt_to=[], size=1, sha256="0" * 64, header_message_id="x",
                    status="pending", kind="", reason="", attempts=0, next_attempt_at=NOW)
    conversation = _insert(app, Conversation, community_id=community, subject="s",
                           normalized_subject="s", started_at=NOW, last_activity=NOW,
                           message_count=0)
    return {"community": community, "person": person, "inbox": inbox,
            "conversation": conversation}


def _message(ids: dict[str, int], message_id: str) -> dict[str, object]:
    return dict(community_id=ids["community"], conversation_id=ids["conversation"],
                message_id=message_id, in_reply_to="", references=[], from_address="",
                from_name="", date=NOW, received_at=NOW, subject="", text="", quoted="",
                signature="", html="", language="", to_cc=[], status="published",
                has_attachments=False, redacted_reason="")


@pytest.mark.parametrize("case", ["community", "address", "membership", "message", "delivery",
                                  "digest", "imap", "held"])
def test_duplicate_insert_is_refused_by_the_database(app: App, case: str) -> None:
    ids = _base(app)
    rows: dict[str, tuple[type, dict[str, object]]] = {
        "community": (Community, dict(slug="rd", name="Again", description="", language="en",
                                      visibility="internal", posting_policy="members",
                                      admits_guests=False, subject_tag="", reply_to="personal",
                                      goals={}, created_at=NOW)),
        "address": (Address, dict(email="a@example.com", person_id=ids["person"], primary=True)),
        "membership": (Membership, dict(community_id=ids["community"], person_id=ids["person"],
                                        role="member", delivery_mode="each",
                                        duplicate_copies=False, bounce_score=0.0,
                                        disabled_reason="", joined_at=NOW)),
        "message": (Message, _message(ids, "abc@example.com")),
        "delivery": (Delivery, dict(dedupe_key="post:1:1", kind="post", address="a@example.com",
                                    status="pending", attempts=0, next_attempt_at=NOW,
                                    last_error="", created_at=NOW)),
        "digest": (DigestRun, dict(person_id=ids["person"], cadence="daily", period_start=NOW,
                                   period_end=NOW, status="pending", created_at=NOW)),
        "imap": (ImapSeen, dict(mailbox="sales", uidvalidity=7, uid=42)),
        "held": (Held, dict(inbox_id=ids["inbox"], community_id=ids["community"], sender="",
                            subject="", reason="", status="pending", decided_by="",
                            decision_note="", created_at=NOW)),
    }
    model, values = rows[case]
    if case != "community":
        _insert(app, model, **values)
    with pytest.raises(IntegrityError):
        _insert(app, model, **values)


def test_same_message_id_in_two_communities_is_allowed(app: App) -> None:
    ids = _base(app)
    other = _insert(app, Community, slug="sales", name="Sales", description="", language="en",
                    visibility="internal", posting_policy="members", admits_guests=False,
                    subject_tag="", reply_to="personal", goals={}, created_at=NOW)
    conversation = _insert(app, Conversation, community_id=other, subject="s",
                           normalized_subject="s", started_at=NOW, last_activity=NOW,
                           message_count=0)
    _insert(app, Message, **_message(ids, "same@example.com"))
    values = _message(ids, "same@example.com") | {"community_id": other,
                                                  "conversation_id": conversation}
    _insert(app, Message, **values)


def test_foreign_keys_are_enforced(app: App) -> None:
    with pytest.raises(IntegrityError):
        _insert(app, Address, email="ghost@example.com", person_id=999, primary=True)
