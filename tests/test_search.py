"""Archive search, with the same expectations on SQLite (FTS5) and PostgreSQL (tsvector).

Messages are written with SQLAlchemy Core, as the processor writes them: the index must follow
through the database's triggers alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, insert, select, text, update

from archive.search import Reader, search, sqlite_functions
from archive.search.core import backend_for
from archive.search.query import parse
from archive.search.sqlite import trigger_ddl
from bridge.app import App
from bridge.cli import main
from bridge.models import Community, Conversation, Membership, Message, Person

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

_community = Community.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]


class Archive:
    """Writes communities, conversations and messages straight into the tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.count = 0

    def community(self, slug: str, visibility: str = "public", language: str = "en") -> int:
        with self.engine.begin() as connection:
            return int(connection.execute(insert(_community).values(
                slug=slug, name=slug.title(), description="", language=language,
                visibility=visibility, posting_policy="open", admits_guests=False,
                subject_tag="", reply_to="personal", goals={}, created_at=NOW,
            ).returning(_community.c.id)).scalar_one())

    def conversation(self, community: int, subject: str) -> int:
        with self.engine.begin() as connection:
            return int(connection.execute(insert(_conversation).values(
                community_id=community, subject=subject, normalized_subject=subject.lower(),
                started_at=NOW, last_activity=NOW, message_count=0,
            ).returning(_conversation.c.id)).scalar_one())

    def values(self, community: int, conversation: int, body: str, **fields: Any
               ) -> dict[str, Any]:
        self.count += 1
        values: dict[str, Any] = dict(
            community_id=community, conversation_id=conversation,
            message_id=f"m{self.count}@example.com", in_reply_to="", references=[],
            from_address="alice@example.com", from_name="Alice Martin",
            date=NOW - timedelta(days=10), received_at=NOW, subject="Hello", text=body,
            quoted="", signature="", html="", language="en", to_cc=[], status="published",
            has_attachments=False, redacted_reason="")
        values.update(fields)
        return values

    def message(self, community: int, conversation: int, body: str, **fields: Any) -> int:
        with self.engine.begin() as connection:
            return int(connection.execute(insert(_message).values(
                self.values(community, conversation, body, **fields)
            ).returning(_message.c.id)).scalar_one())

    def post(self, community: int, subject: str, body: str, **fields: Any) -> int:
        """A new conversation with one message; returns the message's id."""
        return self.message(community, self.conversation(community, subject), body,
                            subject=subject, **fields)

    def person(self, name: str) -> int:
        with self.engine.begin() as connection:
            return int(connection.execute(insert(_person).values(
                display_name=name, language="", timezone="", kind=None, digest_time="",
                digest_weekday="", own_copies=False, created_at=NOW,
            ).returning(_person.c.id)).scalar_one())

    def join(self, person: int, community: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(_membership).values(
                community_id=community, person_id=person, role="member", delivery_mode="each",
                duplicate_copies=False, bounce_score=0.0, disabled_reason="", joined_at=NOW))


@pytest.fixture
def archive(app: App) -> Archive:
    if app.engine.dialect.name == "sqlite":
        # What bridge/db.py's connect hook is to do for every engine.
        event.listen(app.engine, "connect", sqlite_functions)
    return Archive(app.engine)


def find(app: App, query: str, **options: Any) -> list[str]:
    """The subjects of the hits, best first."""
    return [hit.subject for hit in search(app.reader, query, now=NOW, **options).hits]


@pytest.fixture
def corpus(archive: Archive) -> dict[str, int]:
    en = archive.community("dev")
    fr = archive.community("equipe", language="fr")
    ids = {"dev": en, "equipe": fr}
    archive.post(en, "Weekly meeting", "The meeting is moved to Thursday, bring the budget.")
    archive.post(en, "Budget review", "Please review the budget spreadsheet before Friday.")
    archive.post(fr, "Réunion d'équipe", "La réunion aura lieu mardi dans la grande salle.",
                 language="fr", from_name="Hélène Dubois", from_address="helene@exemple.fr")
    archive.post(fr, "Chevaux", "Les chevaux sont dans le pré.", language="fr",
                 from_name="Hélène Dubois", from_address="helene@exemple.fr")
    archive.post(en, "Server crash", "The server crashed again, see the attached log.",
                 has_attachments=True, from_name="Bob Stone", from_address="bob@example.org",
                 date=datetime(2024, 3, 15, 9, 0, tzinfo=UTC))
    archive.post(en, "Release notes", "Notes for the release: the meeting room is booked.",
                 from_name="Bob Stone", from_address="bob@example.org",
                 date=datetime(2023, 12, 31, 23, 0, tzinfo=UTC))
    return ids


def test_accents_are_folded_both_ways(app: App, corpus: dict[str, int]) -> None:
    assert find(app, "reunion") == ["Réunion d'équipe"]
    assert find(app, "RÉUNION") == ["Réunion d'équipe"]
    assert find(app, "equipe") == ["Réunion d'équipe"]
    assert find(app, "pre") == ["Chevaux"]


def test_french_stemming(app: App, corpus: dict[str, int]) -> None:
    assert find(app, "réunions") == ["Réunion d'équipe"]
    assert find(app, "cheval") == ["Chevaux"]
    assert find(app, "grandes salles") == ["Réunion d'équipe"]


def test_english_stemming(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "meetings")) == {"Weekly meeting", "Release notes"}
    assert find(app, "crashes") == ["Server crash"]
    assert find(app, "reviewing") == ["Budget review"]


def test_stemming_crosses_the_community_language(app: App, archive: Archive) -> None:
    fr = archive.community("fr", language="fr")
    archive.post(fr, "Compte rendu", "Notes from the meeting, in English for once.",
                 language="fr")
    en = archive.community("en")
    archive.post(en, "Paris", "We had a réunion with the French team.")
    assert find(app, "meetings") == ["Compte rendu"]
    assert find(app, "réunions") == ["Paris"]


def test_stop_words_do_not_prevent_a_match(app: App, corpus: dict[str, int]) -> None:
    assert find(app, "the budget") == find(app, "budget")
    assert find(app, "la réunion") == ["Réunion d'équipe"]
    assert find(app, "the") == []


def test_phrases(app: App, corpus: dict[str, int]) -> None:
    assert find(app, '"review the budget"') == ["Budget review"]
    assert find(app, '"budget review"') == ["Budget review"]  # in the subject
    assert find(app, '"budget spreadsheet"') == ["Budget review"]
    assert find(app, '"spreadsheet budget"') == []
    assert find(app, '"meeting room"') == ["Release notes"]
    assert find(app, '"grande salle"') == ["Réunion d'équipe"]


def test_phrases_in_the_other_language(app: App, archive: Archive) -> None:
    fr = archive.community("fr", language="fr")
    archive.post(fr, "Compte rendu", "Voici le meeting of the team de lundi.", language="fr")
    en = archive.community("en")
    archive.post(en, "Paris", "The réunion de l'équipe went well.")
    assert find(app, '"meeting of the team"') == ["Compte rendu"]
    assert find(app, '"réunion de l\'équipe"') == ["Paris"]


def test_excluded_words(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "budget")) == {"Weekly meeting", "Budget review"}
    assert find(app, "budget -thursday") == ["Budget review"]
    assert find(app, 'budget -"review the budget"') == ["Weekly meeting"]
    assert "Weekly meeting" not in find(app, "-meeting")
    assert set(find(app, "-meeting -budget community:dev")) == {"Server crash"}


def test_or(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "thursday OR friday")) == {"Weekly meeting", "Budget review"}
    assert find(app, "budget thursday OR crash") == ["Weekly meeting"]
    assert set(find(app, "chevaux OR from:bob")) == {"Chevaux", "Server crash",
                                                     "Release notes"}
    assert find(app, "thursday or friday") == []  # lower-case "or" is a word


def test_from(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "from:bob")) == {"Server crash", "Release notes"}
    assert set(find(app, "from:helene")) == {"Réunion d'équipe", "Chevaux"}
    assert set(find(app, 'from:"Hélène Dubois" chevaux')) == {"Chevaux"}
    assert set(find(app, "from:bob@example.org")) == {"Server crash", "Release notes"}
    assert find(app, "from:bob@example.com") == []
    assert find(app, "from:stone crash") == ["Server crash"]
    assert "Server crash" not in find(app, "meeting -from:bob")
    assert find(app, "bob") == []  # the author is not part of the text


def test_community(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "community:equipe")) == {"Réunion d'équipe", "Chevaux"}
    assert find(app, "meeting community:equipe") == []
    assert find(app, "reunion community:nowhere") == []
    assert find(app, "reunion", community="equipe") == ["Réunion d'équipe"]
    assert find(app, "reunion", community="dev") == []


def test_dates(app: App, corpus: dict[str, int]) -> None:
    assert find(app, "before:2024-01-01") == ["Release notes"]
    assert find(app, "before:2024-03-15") == ["Release notes"]
    assert set(find(app, "before:2024-03-16")) == {"Server crash", "Release notes"}
    assert find(app, "after:2024-03-15 from:bob") == ["Server crash"]
    assert find(app, "after:2024-03-16 from:bob") == []
    assert find(app, "after:2023-12-31 before:2024-01-01") == ["Release notes"]
    assert find(app, "meeting before:2024-01-01") == ["Release notes"]
    assert find(app, "meeting -before:2024-01-01") == ["Weekly meeting"]
    assert find(app, "before:1900-01-01") == []
    assert len(find(app, "after:1990-02-03")) == 6
    assert find(app, "before:soon") == []  # not a date: plain words


def test_has_attachment(app: App, corpus: dict[str, int]) -> None:
    assert find(app, "has:attachment") == ["Server crash"]
    assert find(app, "server has:attachment") == ["Server crash"]
    assert find(app, "budget has:attachment") == []
    assert "Server crash" not in find(app, "the -has:attachment from:bob")


def test_in_subject(app: App, corpus: dict[str, int]) -> None:
    assert set(find(app, "meeting")) == {"Weekly meeting", "Release notes"}
    assert find(app, "meeting in:subject") == ["Weekly meeting"]
    assert find(app, "in:subject budget") == ["Budget review"]
    assert find(app, 'in:subject "weekly meeting"') == ["Weekly meeting"]


def test_unparseable_queries_are_words(app: App, corpus: dict[str, int]) -> None:
    for query in ['"', '"budget', 'budget"', "-", "--budget", "OR", "budget OR", "OR budget",
                  "(budget", "budget)", "NEAR(budget thursday)", "budget*", "^budget",
                  "budget:", ":budget", "{subject}: budget", "budget AND NOT thursday",
                  "'; DROP TABLE message; --", "from:", "from:\"\"", "before:2024-13-45",
                  "has:everything", "in:body", "community:", "\\", "\x00budget", "é" * 600,
                  "budget " * 100, "-budget", "a:b:c", "from:@", "from:a@b"]:
        search(app.reader, query, now=NOW)
    assert find(app, "(budget)") == find(app, "budget")
    assert find(app, "budget*") == find(app, "budget")
    assert find(app, '"budget') == find(app, "budget")
    assert find(app, "re:budget") == []   # "re" and "budget" as a phrase
    assert find(app, "http://example.org/budget") == []


def test_ranking_prefers_relevance_then_recency(app: App, archive: Archive) -> None:
    c = archive.community("rank")
    archive.post(c, "Second floor", "The coffee machine and the lift on the second floor "
                 "are out of order, and the printer is jammed again.",
                 date=NOW - timedelta(days=3))
    archive.post(c, "Printer driver", "Which printer driver do you use for the printer?",
                 date=NOW - timedelta(days=900))
    archive.post(c, "Lunch", "Lunch is at noon; also, the printer needs toner.",
                 date=NOW - timedelta(days=1))
    # Same text, different dates: the newer first.
    archive.post(c, "Toner A", "Order toner cartridges.", date=NOW - timedelta(days=400))
    archive.post(c, "Toner B", "Order toner cartridges.", date=NOW - timedelta(days=2))
    assert find(app, "printer")[0] == "Printer driver"
    assert find(app, "cartridges") == ["Toner B", "Toner A"]
    assert find(app, "from:alice community:rank")[0] == "Lunch"  # no words: newest first
    hits = search(app.reader, "printer", now=NOW).hits
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_one_hit_per_conversation_with_its_count(app: App, archive: Archive) -> None:
    c = archive.community("threads")
    thread = archive.conversation(c, "Kubernetes upgrade")
    archive.message(c, thread, "Kubernetes upgrade planned.", subject="Kubernetes upgrade",
                    date=NOW - timedelta(days=5))
    archive.message(c, thread, "Which Kubernetes version?", subject="Re: Kubernetes upgrade",
                    date=NOW - timedelta(days=4))
    archive.message(c, thread, "Done, kubernetes is on 1.30 and kubernetes works.",
                    subject="Re: Kubernetes upgrade", date=NOW - timedelta(days=3))
    archive.message(c, thread, "Thanks!", subject="Re: Kubernetes upgrade",
                    date=NOW - timedelta(days=2))
    archive.post(c, "Other", "Kubernetes training next month.")
    hits = search(app.reader, "kubernetes -training", now=NOW).hits
    assert len(hits) == 1 and hits[0].conversation == thread
    assert hits[0].matches == 4   # the subject matches too
    hits = search(app.reader, "kubernetes community:threads", now=NOW).hits
    assert sorted(h.matches for h in hits) == [1, 4]
    assert len(search(app.reader, "kubernetes", now=NOW, limit=1).hits) == 1
    page2 = search(app.reader, "kubernetes", now=NOW, limit=1, offset=1).hits
    assert len(page2) == 1 and page2[0].conversation != hits[0].conversation
    hits = search(app.reader, '"kubernetes works"', now=NOW).hits
    assert hits[0].matches == 1 and hits[0].snippet.startswith("Done")


def test_snippets_are_highlighted_and_escaped(app: App, archive: Archive) -> None:
    c = archive.community("snip")
    filler = " ".join(f"word{i}" for i in range(80))
    archive.post(c, "Réunion <b>", f"{filler} Les <script>alert(1)</script> réunions "
                 f"d'équipe & co. {filler}", language="fr")
    hit = search(app.reader, "reunion equipes", now=NOW).hits[0]
    assert "<mark>réunions</mark>" in hit.snippet_html
    assert "<mark>équipe</mark>" in hit.snippet_html
    assert "alert(1)&lt;/script&gt;" in hit.snippet_html
    assert "&amp; co." in hit.snippet_html
    assert "<script" not in hit.snippet_html and "</script" not in hit.snippet_html
    assert "<mark>" not in hit.snippet and "réunions d'équipe & co." in hit.snippet
    assert hit.snippet.startswith("… ") and hit.snippet.endswith(" …")
    assert hit.subject == "Réunion <b>"  # raw: escaping is the template's job
    assert len(hit.snippet) < 400


def test_private_communities_stay_private(app: App, archive: Archive) -> None:
    public = archive.community("open", "public")
    internal = archive.community("staff", "internal")
    private = archive.community("secret", "private")
    archive.post(public, "Zeppelin public", "zeppelin in public")
    archive.post(internal, "Zeppelin internal", "zeppelin for staff")
    secret_thread = archive.conversation(private, "Zeppelin secret")
    for i in range(3):
        archive.message(private, secret_thread, f"zeppelin secret {i}",
                        subject="Zeppelin secret")
    member = archive.person("Member")
    archive.join(member, private)
    outsider = archive.person("Outsider")

    def seen(reader: Reader | None, query: str = "zeppelin") -> set[str]:
        return {h.subject for h in search(app.reader, query, reader=reader, now=NOW).hits}

    everything = {"Zeppelin public", "Zeppelin internal", "Zeppelin secret"}
    assert seen(None) == everything
    assert seen(Reader()) == {"Zeppelin public"}
    assert seen(Reader(outsider, staff=False)) == {"Zeppelin public"}
    assert seen(Reader(outsider, staff=True)) == {"Zeppelin public", "Zeppelin internal"}
    assert seen(Reader(None, staff=True)) == {"Zeppelin public"}  # staff, not signed in
    assert seen(Reader(member, staff=False, communities=frozenset({private}))) == {
        "Zeppelin public", "Zeppelin secret"}
    assert seen(Reader(member, True, frozenset({private}))) == everything
    # Asking for the community by name, or for what only it holds, shows nothing either.
    assert seen(Reader(outsider, True), "zeppelin community:secret") == set()
    assert seen(Reader(outsider, True), "secret") == set()
    assert seen(Reader(outsider, True), "-public") == {"Zeppelin internal"}
    assert seen(Reader(outsider, True), "from:alice") == {"Zeppelin public",
                                                          "Zeppelin internal"}
    # Counts: the total and the per-conversation counts hold visible messages only.
    outsider_view = search(app.reader, "zeppelin", reader=Reader(outsider, True), now=NOW,
                           count_total=True)
    assert outsider_view.total == 2
    assert all(h.matches == 1 for h in outsider_view.hits)
    member_view = search(app.reader, "zeppelin", reader=Reader(member, False,
                                                               frozenset({private})),
                         now=NOW, count_total=True)
    assert member_view.total == 4
    assert {h.subject: h.matches for h in member_view.hits}["Zeppelin secret"] == 3
    assert search(app.reader, "zeppelin", now=NOW, count_total=True).total == 5


def test_redacted_messages_never_match(app: App, archive: Archive) -> None:
    c = archive.community("redact")
    kept = archive.post(c, "Quokka facts", "The quokka is a small marsupial.")
    gone = archive.post(c, "Quokka secret", "My quokka password is hunter2.")
    archive.post(c, "Already redacted", "quokka", status="redacted")
    assert set(find(app, "quokka")) == {"Quokka facts", "Quokka secret"}
    with app.engine.begin() as connection:
        connection.execute(update(_message).where(_message.c.id == gone).values(
            status="redacted", text="", subject="", redacted_reason="asked",
            redacted_at=NOW))
    assert find(app, "quokka") == ["Quokka facts"]
    assert find(app, "hunter2") == []
    assert search(app.reader, "quokka", now=NOW, count_total=True).total == 1
    assert kept


def test_index_follows_inserts_updates_and_deletes(app: App, archive: Archive) -> None:
    c = archive.community("live")
    conversation = archive.conversation(c, "Platypus")
    backend = backend_for(app.engine)

    def count(connection: Any, query: str) -> int:
        plan = backend.plan(connection, parse(query), {})
        return backend.total(connection, plan)

    with app.engine.begin() as connection:
        new = int(connection.execute(insert(_message).values(archive.values(
            c, conversation, "A platypus lays eggs.", subject="Platypus"))
            .returning(_message.c.id)).scalar_one())
        assert count(connection, "platypus") == 1      # in the same transaction
        connection.execute(update(_message).where(_message.c.id == new).values(
            text="An echidna lays eggs too."))
        assert count(connection, "echidna") == 1
        assert count(connection, "platypus in:subject") == 1
        assert count(connection, "eggs -platypus") == 0
        connection.execute(update(_message).where(_message.c.id == new).values(
            subject="Echidna"))
        assert count(connection, "platypus") == 0
    assert find(app, "echidna") == ["Echidna"]
    with app.engine.begin() as connection:
        connection.execute(update(_message).where(_message.c.id == new).values(
            has_attachments=True, from_address="carol@example.net", from_name="Carol"))
    assert find(app, "has:attachment from:carol") == ["Echidna"]
    assert find(app, "from:alice echidna") == []
    with app.engine.begin() as connection:
        connection.execute(delete(_message).where(_message.c.id == new))
        assert count(connection, "echidna") == 0
    assert find(app, "echidna") == []
    # A rolled-back insert leaves nothing behind.
    with app.engine.connect() as connection, connection.begin() as transaction:
        connection.execute(insert(_message).values(archive.values(
            c, conversation, "A wombat.", subject="Wombat")))
        assert count(connection, "wombat") == 1
        transaction.rollback()
    assert find(app, "wombat") == []
    # Deleting the community deletes its messages, and their index entries, by cascade.
    archive.post(c, "Numbat", "A numbat eats termites.")
    with app.engine.begin() as connection:
        connection.execute(delete(_community).where(_community.c.id == c))
    assert find(app, "numbat") == []
    if app.engine.dialect.name == "sqlite":
        with app.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO message_search(message_search, rank) VALUES ('integrity-check', 0)"))


def test_sqlite_triggers_are_the_ones_the_code_describes(app: App) -> None:
    if app.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's triggers")
    with app.engine.connect() as connection:
        stored = set(connection.execute(select(text("sql")).select_from(text(
            "sqlite_master")).where(text("type = 'trigger' AND name LIKE 'message_search%'")))
            .scalars())
    assert stored == set(trigger_ddl())


def test_rebuild_gives_the_same_index(app: App, corpus: dict[str, int]) -> None:
    from archive.search import rebuild_index

    before = find(app, "meeting OR reunion OR chevaux")
    with app.engine.begin() as connection:
        rebuild_index(connection)
    assert find(app, "meeting OR reunion OR chevaux") == before


def test_cli_search_json(app: App, archive: Archive, corpus: dict[str, int],
                         settings_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(settings_path), "search", "réunions", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 1
    hit = hits[0]
    assert {"message_id", "conversation", "subject", "author", "snippet", "community", "date",
            "score", "matches"} <= set(hit)
    assert hit["subject"] == "Réunion d'équipe" and hit["author"] == "Hélène Dubois"
    assert hit["community"] == "equipe" and "réunion" in hit["snippet"]
    code = main(["--config", str(settings_path), "search", "budget", "--community", "equipe",
                 "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out) == []
    code = main(["--config", str(settings_path), "search", "meeting", "--limit", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and "SUBJECT" in out and len(out.strip().splitlines()) == 2


def test_sqlite_relevance_is_bm25_of_the_whole_query(app: App, archive: Archive,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """bm25 is computed on the text phrases alone, on the candidates the whole expression
    found (sqlite.py): each candidate's relevance is what bm25 gives it over the whole
    expression, filters, exclusions and permission terms included."""
    if app.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's bm25")
    from archive.search import sqlite as fts
    from archive.search.plan import Meta, Plan

    dev, ops = archive.community("dev"), archive.community("ops")
    secret = archive.community("secret", "private")
    texts = ["budget meeting on Monday", "the budget, the budget and the budget",
             "server down during the meeting", "budget for the new server",
             "meeting notes: budget approved", "lunch menu"]
    for i in range(18):
        archive.post((dev, ops, secret)[i % 3], f"Topic {i}" + (" budget" if i % 4 else ""),
                     texts[i % len(texts)], has_attachments=i % 5 == 0,
                     from_name="Bob Stone" if i % 2 else "Alice Martin",
                     from_address="bob@example.org" if i % 2 else "alice@example.com",
                     date=NOW - timedelta(days=100 * i))
    queries = ["budget", "budget community:dev", "budget meeting -server",
               "budget before:2025-01-01", "from:bob budget", "meeting OR has:attachment",
               "budget OR server -lunch", '"budget approved" in:subject', "-budget"]
    backend = fts.SqliteBackend()

    def check(sparse: int, common_sample: int, tolerance: float) -> None:
        monkeypatch.setattr(fts, "SPARSE", sparse)
        monkeypatch.setattr(fts, "COMMON_SAMPLE", common_sample)
        with app.reader.connect() as connection:
            for query in queries:
                planned = backend.plan(connection, parse(query), {"dev": dev})
                for scoped in (planned,
                               Plan(planned.include, (*planned.exclude, Meta((f"c{secret}",)))),
                               Plan((*planned.include, Meta((f"c{dev}", f"c{ops}"))),
                                    planned.exclude)):
                    expected = dict(connection.execute(text(
                        f"SELECT rowid, -{fts._BM25} FROM message_search "
                        "WHERE message_search MATCH :q"),
                        {"q": fts.match_expression(scoped)}).all())
                    found = dict(backend.candidates(connection, scoped, window=100, pool=100))
                    assert found == pytest.approx(expected, abs=tolerance), query
                    newest = backend.candidates(connection, scoped, window=3, pool=3)
                    assert sorted(i for i, _ in newest) == sorted(expected)[-3:], query

    check(sparse=8, common_sample=2000, tolerance=1e-9)
    check(sparse=0, common_sample=2000, tolerance=1e-9)    # community terms in step 2 too
    # "budget" is in more than half of the newest four: left out of bm25, where its idf is
    # about 0 (FTS5 gives it 1e-6), so the scores hardly move.
    with app.reader.connect() as connection:
        monkeypatch.setattr(fts, "COMMON_SAMPLE", 4)
        cursor = connection.connection.cursor()
        planned = backend.plan(connection, parse("budget meeting"), {})
        assert fts._common(cursor, fts.ranking_phrases(planned)) == {
            ("{subject body}", "budget")}
    check(sparse=8, common_sample=4, tolerance=1e-4)
