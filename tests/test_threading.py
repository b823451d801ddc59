"""The thread step, function by function: `ancestors`, the choice (`Processor.choose` on what
a `Batch` read: references, reply token, subject within the window, else new), and the
helpers of inbound.threader that re-link a reply that arrived before its parent.

The archive is seeded with rows directly, so that each rule is tried alone; the whole path
through SMTP is in test_inbound_gateway.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from bridge.app import App
from bridge.directory import create_community
from bridge.models import Conversation, Message, Mute, Person
from bridge.settings import Settings
from inbound.batch import Batch
from inbound.parse import ParsedMail, parse
from inbound.processor import Processor
from inbound.subjects import normalise_subject
from inbound.threader import (
    ThreadChoice,
    ancestors,
    conversation_row,
    refresh_conversation,
    relink_children,
)
from tests.conftest import DOMAIN, write_settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def mail(*lines: str, subject: str = "Budget 2027", message_id: str = "new@example.com"
         ) -> ParsedMail:
    raw = "\n".join([f"Message-ID: <{message_id}>", "From: Alice <alice@example.com>",
                     f"Subject: {subject}", "Date: Wed, 25 Nov 2026 11:00:00 +0000", *lines])
    return parse((raw + "\n\nText.\n").encode(), received_at=NOW, domain=DOMAIN)


def make_communities(app: App) -> dict[str, int]:
    with app.session() as session:
        return {slug: int(create_community(session, slug, slug.upper()).id or 0)
                for slug in ("rd", "sales")}


@pytest.fixture
def slugs(app: App) -> dict[str, int]:
    return make_communities(app)


def start(app: App, community_id: int, subject: str, date: datetime, message_id: str,
          *, in_reply_to: str = "") -> tuple[int, int]:
    """A conversation of one message; returns (conversation id, message id)."""
    with app.session() as session:
        conversation = Conversation(community_id=community_id, subject=subject,
                                    normalized_subject=normalise_subject(subject),
                                    started_at=date, last_activity=date, message_count=1)
        session.add(conversation)
        session.flush()
        assert conversation.id is not None
        pk = add_message(session, community_id, conversation.id, message_id, date,
                         subject=subject, in_reply_to=in_reply_to)
        return conversation.id, pk


def add_message(session: Session, community_id: int, conversation_id: int, message_id: str,
                date: datetime, *, subject: str = "", in_reply_to: str = "",
                parent_id: int | None = None) -> int:
    message = Message(community_id=community_id, conversation_id=conversation_id,
                      message_id=message_id, date=date, received_at=date, subject=subject,
                      in_reply_to=in_reply_to, parent_id=parent_id, text="Text.")
    session.add(message)
    session.flush()
    assert message.id is not None
    return message.id


def reply(app: App, community_id: int, conversation_id: int, message_id: str, date: datetime,
          parent_id: int, in_reply_to: str) -> int:
    with app.session() as session:
        return add_message(session, community_id, conversation_id, message_id, date,
                           subject="Re: x", in_reply_to=in_reply_to, parent_id=parent_id)


def choose(app: App, community_id: int, parsed: ParsedMail, token: int | None = None,
           now: datetime = NOW) -> ThreadChoice:
    processor = Processor(app)
    with app.engine.begin() as connection:
        batch = Batch(connection, app.settings, now, [parsed])
        return processor.choose(connection, batch, community_id, parsed, token)


# --- ancestors ------------------------------------------------------------------------------

def test_ancestors_are_nearest_first_without_duplicates_or_the_message_itself() -> None:
    parsed = mail("In-Reply-To: <parent@x>",
                  "References: <root@x> <mid@x> <parent@x> <new@example.com>")
    assert ancestors(parsed) == ["parent@x", "mid@x", "root@x"]


def test_ancestors_from_references_alone_and_from_nothing() -> None:
    assert ancestors(mail("References: <root@x> <mid@x>")) == ["mid@x", "root@x"]
    assert ancestors(mail("In-Reply-To: <parent@x>")) == ["parent@x"]
    assert ancestors(mail()) == []


# --- by In-Reply-To / References ------------------------------------------------------------

def test_in_reply_to_a_known_message_joins_its_conversation(app: App,
                                                            slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Budget 2027", NOW - DAY, "root@x")
    answer = reply(app, slugs["rd"], conversation, "r1@x", NOW - DAY / 2, root, "root@x")
    choice = choose(app, slugs["rd"], mail("In-Reply-To: <r1@x>", "References: <root@x> <r1@x>",
                                           subject="Something else"))
    assert choice == ThreadChoice(conversation, answer, "references")


def test_the_nearest_known_ancestor_is_the_parent(app: App, slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Budget 2027", NOW - DAY, "root@x")
    # The parent itself never reached the community; an older message of the thread did.
    choice = choose(app, slugs["rd"], mail("In-Reply-To: <unknown@x>",
                                           "References: <root@x> <unknown@x>",
                                           subject="Other"))
    assert choice == ThreadChoice(conversation, root, "references")


def test_a_message_known_in_another_community_is_not_joined(app: App,
                                                            slugs: dict[str, int]) -> None:
    start(app, slugs["sales"], "Pricing", NOW - DAY, "root@x")
    choice = choose(app, slugs["rd"], mail("In-Reply-To: <root@x>", subject="Re: Pricing"))
    assert choice == ThreadChoice(None, None, "new")


def test_references_win_over_reply_token_and_subject(app: App, slugs: dict[str, int]) -> None:
    by_reference, root = start(app, slugs["rd"], "Offsite", NOW - DAY, "root@x")
    by_token, _ = start(app, slugs["rd"], "Hiring", NOW - DAY, "hiring@x")
    by_subject, _ = start(app, slugs["rd"], "Budget 2027", NOW - DAY, "budget@x")
    assert len({by_reference, by_token, by_subject}) == 3
    choice = choose(app, slugs["rd"], mail("In-Reply-To: <root@x>", subject="Re: Budget 2027"),
                    token=by_token)
    assert choice == ThreadChoice(by_reference, root, "references")


# --- by reply token -------------------------------------------------------------------------

def test_a_reply_token_joins_its_conversation(app: App, slugs: dict[str, int]) -> None:
    by_token, _ = start(app, slugs["rd"], "Hiring", NOW - 300 * DAY, "hiring@x")
    start(app, slugs["rd"], "Budget 2027", NOW - DAY, "budget@x")
    # The token wins over the subject, and no window applies to it.
    choice = choose(app, slugs["rd"], mail(subject="Re: Budget 2027"), token=by_token)
    assert choice == ThreadChoice(by_token, None, "reply token")


def test_a_reply_token_of_another_community_is_not_followed(app: App,
                                                            slugs: dict[str, int]) -> None:
    other, _ = start(app, slugs["sales"], "Hiring", NOW - DAY, "hiring@x")
    choice = choose(app, slugs["rd"], mail(subject="Re: Hiring"), token=other)
    assert choice == ThreadChoice(None, None, "new")


def test_a_reply_token_of_a_deleted_conversation_is_not_followed(
        app: App, slugs: dict[str, int]) -> None:
    choice = choose(app, slugs["rd"], mail(subject="Re: Hiring"), token=999_999)
    assert choice == ThreadChoice(None, None, "new")


# --- by subject, within the window ----------------------------------------------------------

@pytest.mark.parametrize("subject", ["Re: Budget 2027", "RE : [rd] budget  2027",
                                     "TR: Budget 2027", "AW: BUDGET 2027"])
def test_same_subject_within_the_window_joins(app: App, slugs: dict[str, int],
                                              subject: str) -> None:
    conversation, _ = start(app, slugs["rd"], "Budget 2027", NOW - 29 * DAY, "root@x")
    assert choose(app, slugs["rd"], mail(subject=subject)) == \
        ThreadChoice(conversation, None, "subject")


def test_same_subject_outside_the_window_starts_a_new_conversation(
        app: App, slugs: dict[str, int]) -> None:
    assert app.settings.processor.thread_window_days == 30
    start(app, slugs["rd"], "Budget 2027", NOW - 31 * DAY, "root@x")
    assert choose(app, slugs["rd"], mail(subject="Re: Budget 2027")) == \
        ThreadChoice(None, None, "new")


def test_same_subject_in_another_community_is_not_joined(app: App,
                                                         slugs: dict[str, int]) -> None:
    start(app, slugs["sales"], "Budget 2027", NOW - DAY, "root@x")
    assert choose(app, slugs["rd"], mail(subject="Re: Budget 2027")) == \
        ThreadChoice(None, None, "new")


def test_the_most_recently_active_conversation_of_a_subject_is_joined(
        app: App, slugs: dict[str, int]) -> None:
    start(app, slugs["rd"], "Weekly report", NOW - 20 * DAY, "w1@x")
    recent, _ = start(app, slugs["rd"], "Weekly report", NOW - 2 * DAY, "w2@x")
    start(app, slugs["rd"], "Weekly report", NOW - 10 * DAY, "w3@x")
    assert choose(app, slugs["rd"], mail(subject="Re: Weekly report")) == \
        ThreadChoice(recent, None, "subject")


def test_an_empty_subject_never_threads_by_subject(app: App, slugs: dict[str, int]) -> None:
    start(app, slugs["rd"], "", NOW - DAY, "blank@x")
    assert choose(app, slugs["rd"], mail(subject="Re:")) == ThreadChoice(None, None, "new")


@pytest.mark.parametrize(("window", "age", "how"), [
    (7, 6 * DAY, "subject"),
    (7, 8 * DAY, "new"),
    (0, timedelta(hours=1), "new"),   # 0: never by subject
])
def test_the_window_is_the_configured_one(tmp_path: Path, db_url: str, window: int,
                                          age: timedelta, how: str) -> None:
    path = write_settings(tmp_path, db_url, f"\n[processor]\nthread_window_days = {window}\n")
    app = App(Settings.load(path, environ={}))
    try:
        communities = make_communities(app)
        start(app, communities["rd"], "Budget 2027", NOW - age, "root@x")
        assert choose(app, communities["rd"], mail(subject="Re: Budget 2027")).how == how
    finally:
        app.dispose()


# --- a reply that arrived before its parent -------------------------------------------------

@pytest.fixture
def early_reply(app: App, slugs: dict[str, int]) -> dict[str, int]:
    """A reply archived alone (its parent unknown), muted by Bob; then its parent in a
    conversation of its own. The same reply also reached "sales", where it stays."""
    rd = slugs["rd"]
    orphan, child = start(app, rd, "Re: Offsite", NOW - DAY, "child@x",
                          in_reply_to="parent@x")
    start(app, slugs["sales"], "Re: Offsite", NOW - DAY, "child@x", in_reply_to="parent@x")
    with app.session() as session:
        bob = Person(display_name="Bob")
        session.add(bob)
        session.flush()
        assert bob.id is not None
        session.add(Mute(person_id=bob.id, conversation_id=orphan, created_at=NOW))
        bob_id = bob.id
    conversation, parent = start(app, rd, "Offsite in May?", NOW - 2 * DAY, "parent@x")
    return {"orphan": orphan, "child": child, "conversation": conversation, "parent": parent,
           "bob": bob_id, "rd": rd, "sales": slugs["sales"]}


def test_an_early_reply_is_relinked_to_its_parent(app: App, early_reply: dict[str, int]
                                                  ) -> None:
    e = early_reply
    with app.engine.begin() as connection:
        merged = relink_children(connection, e["rd"], e["parent"], "parent@x",
                                 e["conversation"])
    assert merged == {e["orphan"]}
    with Session(app.engine) as session:
        child = session.get(Message, e["child"])
        assert child is not None
        assert (child.parent_id, child.conversation_id) == (e["parent"], e["conversation"])
        assert session.get(Conversation, e["orphan"]) is None
        conversation = session.get(Conversation, e["conversation"])
        assert conversation is not None
        assert conversation.message_count == 2
        assert conversation.subject == "Offsite in May?"
        assert conversation.started_at.replace(tzinfo=UTC) == NOW - 2 * DAY
        assert conversation.first_reply_at is not None
        # Who muted the early reply's conversation has muted the thread it joined.
        mutes = session.exec(select(Mute.person_id, Mute.conversation_id)).all()
        assert list(mutes) == [(e["bob"], e["conversation"])]
        # The copy of the reply in the other community is left alone.
        other = session.exec(select(Message).where(Message.community_id == e["sales"])).one()
        assert other.parent_id is None


def test_relinking_within_the_same_conversation_merges_nothing(
        app: App, slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Offsite", NOW - 2 * DAY, "root@x")
    with app.session() as session:
        child = add_message(session, slugs["rd"], conversation, "child@x", NOW - DAY,
                            in_reply_to="parent@x")
        parent = add_message(session, slugs["rd"], conversation, "parent@x",
                             NOW - DAY * 1.5, parent_id=root)
    with app.engine.begin() as connection:
        assert relink_children(connection, slugs["rd"], parent, "parent@x",
                               conversation) == set()
    with Session(app.engine) as session:
        stored = session.get(Message, child)
        assert stored is not None and stored.parent_id == parent
        assert session.get(Conversation, conversation) is not None


def test_relinking_without_early_replies_changes_nothing(app: App,
                                                         slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Offsite", NOW - DAY, "root@x")
    with app.engine.begin() as connection:
        assert relink_children(connection, slugs["rd"], root, "root@x", conversation) == set()


def test_the_batch_knows_a_parent_has_early_replies(app: App, early_reply: dict[str, int]
                                                    ) -> None:
    """What makes the processor call `relink_children` when the parent is stored."""
    with app.engine.begin() as connection:
        batch = Batch(connection, app.settings, NOW, [mail(message_id="parent@x")])
        unrelated = Batch(connection, app.settings, NOW, [mail(message_id="other@x")])
    assert (early_reply["rd"], "parent@x") in batch.children
    assert not unrelated.children


# --- conversation rows and counters ---------------------------------------------------------

def test_a_new_conversation_row() -> None:
    parsed = mail(subject="RE : TR : [rd] =?UTF-8?Q?R=C3=A9union_du_Comit=C3=A9?=")
    row = conversation_row(3, parsed, 7)
    assert row["community_id"] == 3 and row["author_id"] == 7
    assert row["subject"] == "Réunion du Comité"
    assert row["normalized_subject"] == "réunion du comité"
    assert row["started_at"] == row["last_activity"] == datetime(2026, 11, 25, 11, 0,
                                                                 tzinfo=UTC)
    assert row["message_count"] == 0 and row["first_reply_at"] is None


def test_a_conversation_row_keeps_a_subject_of_prefixes_only() -> None:
    row = conversation_row(1, mail(subject="Re:"), None)
    assert (row["subject"], row["normalized_subject"]) == ("Re:", "")


def test_refresh_takes_the_root_as_the_message_that_answers_nothing(
        app: App, slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Offsite in May?", NOW - DAY, "root@x")
    # A reply whose Date is earlier than its parent's (a client's clock was late).
    reply(app, slugs["rd"], conversation, "r1@x", NOW - 3 * DAY, root, "root@x")
    reply(app, slugs["rd"], conversation, "r2@x", NOW, root, "root@x")
    with app.engine.begin() as connection:
        refresh_conversation(connection, conversation)
    with Session(app.engine) as session:
        row = session.get(Conversation, conversation)
        assert row is not None
        assert row.message_count == 3
        assert row.subject == "Offsite in May?"
        assert row.normalized_subject == "offsite in may?"
        assert row.started_at.replace(tzinfo=UTC) == NOW - DAY
        assert row.last_activity.replace(tzinfo=UTC) == NOW


def test_refresh_deletes_a_conversation_left_empty(app: App, slugs: dict[str, int]) -> None:
    conversation, root = start(app, slugs["rd"], "Offsite", NOW - DAY, "root@x")
    with app.engine.begin() as connection:
        connection.execute(Message.__table__.delete().where(  # type: ignore[attr-defined]
            Message.__table__.c.id == root))  # type: ignore[attr-defined]
        refresh_conversation(connection, conversation)
    with Session(app.engine) as session:
        assert session.exec(select(Conversation).where(
            col(Conversation.id) == conversation)).first() is None

