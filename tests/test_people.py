"""Who knows about X: ranking by how much, how recently and how helpfully, with permissions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from archive.people import rank_people
from archive.search import Reader
from bridge.app import App
from bridge.db import upgrade
from bridge.directory import create_community
from tests.archive_mail import cli_json, import_mail, mail

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def archive(app: App, settings_path: Path, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> App:
    upgrade(app.engine)
    with app.session() as session:
        create_community(session, "rd", "R&D", policy="open", visibility="public",
                         admits_guests=True)
        create_community(session, "secret", "Secret", policy="open", visibility="private",
                         admits_guests=True)
    alice, bob = "Alice Martin <alice@example.com>", "Bob Stone <bob@partner.org>"
    carol, dan = "Carol Diaz <carol@example.com>", "Dan Black <dan@elsewhere.net>"
    import_mail(capsys, settings_path, tmp_path, "rd", [
        mail("q1@x", alice, "gfortran on macOS", "How do I configure the gfortran compiler?",
             date="Mon, 4 May 2026 10:00:00 +0000"),
        mail("a1@x", bob, "Re: gfortran on macOS", "Install gfortran from the CRAN tools page.",
             date="Mon, 4 May 2026 11:00:00 +0000", reply_to="q1@x"),
        mail("a2@x", carol, "Re: gfortran on macOS", "And set FC in Makevars for gfortran.",
             date="Mon, 4 May 2026 12:00:00 +0000", reply_to="a1@x"),
        mail("q2@x", carol, "gfortran link errors", "The gfortran linker fails on arm64.",
             date="Tue, 5 May 2026 10:00:00 +0000"),
        mail("a3@x", bob, "Re: gfortran link errors", "Use the gfortran 12 build for arm64.",
             date="Tue, 5 May 2026 11:00:00 +0000", reply_to="q2@x"),
        mail("o1@x", alice, "Lunch", "Lunch at noon?", date="Tue, 5 May 2026 12:00:00 +0000"),
    ])
    import_mail(capsys, settings_path, tmp_path, "secret", [
        mail(f"s{i}@x", dan, "gfortran secrets", f"gfortran internals, part {i}.",
             date=f"Wed, {6 + i} May 2026 10:00:00 +0000",
             reply_to=f"s{i - 1}@x" if i else "")
        for i in range(4)
    ])
    return app


def ranked(app: App, query: str, reader: Reader | None) -> list[str]:
    with app.reader.connect() as connection:
        return [hit.address for hit in rank_people(
            connection, query, reader, staff_domains=("example.com",), now=NOW)]


def test_helpful_answers_rank_first_with_their_threads(archive: App) -> None:
    with archive.reader.connect() as connection:
        hits = rank_people(connection, "gfortran", Reader(), staff_domains=("example.com",),
                           now=NOW)
    by_address = {hit.address: hit for hit in hits}
    assert hits[0].address == "bob@partner.org"
    bob = by_address["bob@partner.org"]
    assert bob.kind == "guest" and bob.first_replies == 2 and bob.closing_replies == 1
    assert {t.subject for t in bob.threads} == {"gfortran on macOS", "gfortran link errors"}
    assert all(t.helpful for t in bob.threads)
    carol = by_address["carol@example.com"]
    assert carol.kind == "staff" and carol.closing_replies == 1
    # Asking is not knowing: Alice only asked, and ranks last.
    assert hits[-1].address == "alice@example.com" and by_address[
        "alice@example.com"].answers == 0


def test_private_communities_never_count_for_those_who_cannot_see_them(archive: App) -> None:
    assert "dan@elsewhere.net" not in ranked(archive, "gfortran", Reader())
    assert "dan@elsewhere.net" not in ranked(archive, "gfortran", Reader(1, staff=True))
    assert ranked(archive, "internals", Reader()) == []
    assert "dan@elsewhere.net" in ranked(archive, "gfortran", None)  # the administrator
    with archive.reader.connect() as connection:
        secret = connection.exec_driver_sql(
            "SELECT id FROM community WHERE slug = 'secret'").scalar_one()
    member = Reader(99, staff=False, communities=frozenset({int(secret)}))
    assert ranked(archive, "internals", member) == ["dan@elsewhere.net"]


def test_operators_and_empty_queries(archive: App) -> None:
    assert ranked(archive, "lunch", None) == ["alice@example.com"]
    assert "carol@example.com" not in ranked(archive, "gfortran -makevars -linker", None)
    assert ranked(archive, "", None) == []
    assert ranked(archive, "zzzunknownword", None) == []


def test_cli_people_json(archive: App, settings_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    hits = cli_json(capsys, settings_path, "people", "gfortran")
    assert isinstance(hits, list)
    assert hits[0]["address"] == "bob@partner.org" and hits[0]["guest"] is True
    assert hits[0]["threads"][0]["community"] == "rd"
    assert any(h["address"] == "dan@elsewhere.net" for h in hits)  # the CLI sees everything
    assert {"name", "kind", "staff", "score", "messages", "answers", "last_date"} <= set(hits[0])
    only = cli_json(capsys, settings_path, "people", "gfortran", "--community", "secret")
    assert isinstance(only, list) and [h["address"] for h in only] == ["dan@elsewhere.net"]


def test_digest_people_finder_marks_questions_a_reader_could_answer(
        archive: App, settings_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The digest's "questions you could answer": a new unanswered question about gfortran
    is one for Bob (who answered two gfortran threads), not for someone who never wrote
    about it; the person asking is not an expert on their own question."""
    from sqlmodel import Session, select

    from archive.people import CouldAnswer
    from bridge.models import Address, Message

    import_mail(capsys, settings_path, tmp_path, "rd", [
        mail("q3@x", "Eve Novak <eve@example.com>", "gfortran and OpenMP",
             "Does gfortran support OpenMP on arm64?", date="Fri, 8 May 2026 10:00:00 +0000"),
    ])
    with Session(archive.engine) as session:
        question = session.exec(select(Message).where(Message.message_id == "q3@x")).one()
        people = {a.email: a.person_id for a in session.exec(select(Address))}
    finder = CouldAnswer(archive.reader, ("example.com",))
    conversation = question.conversation_id
    assert finder(people["bob@partner.org"], [conversation]) == {conversation}
    assert finder(people["eve@example.com"], [conversation]) == set()
    assert conversation in finder.experts  # found once, kept for the other readers
