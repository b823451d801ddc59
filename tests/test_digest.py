"""Digests: who gets what for which period, exactly once, in their language (SQLite and
PostgreSQL, through the `app` fixture)."""

from __future__ import annotations

import email
import re
import threading
from datetime import timedelta
from email import policy
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from archive.vitality import vitality_for
from bridge.addresses import Route, RouteKind
from bridge.app import App
from bridge.events import IncomingMail
from bridge.models import Delivery, DigestRun
from outbound.digest import DigestFunctions, preview_digest, run_digests
from outbound.digest.content import Item, rank
from outbound.digest.replies import DigestReplies
from outbound.digest.schedule import due_period, zone
from tests.test_digest_fixtures import NOW, World, at, build

_delivery = Delivery.__table__  # type: ignore[attr-defined]


def digests(app: App) -> dict[int, list[EmailMessage]]:
    """The queued digests, parsed, by person."""
    out: dict[int, list[EmailMessage]] = {}
    with app.engine.connect() as connection:
        for row in connection.execute(select(_delivery.c.person_id, _delivery.c.raw).where(
                _delivery.c.kind == "digest").order_by(_delivery.c.id)):
            message = email.message_from_bytes(row.raw, policy=policy.default)
            assert isinstance(message, EmailMessage)
            out.setdefault(row.person_id, []).append(message)
    return out


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()  # type: ignore[attr-defined]


def conversations(body: str) -> set[int]:
    return {int(n) for n in re.findall(r"/t/(\d+)", body)}


def ids(world: World, *keys: str) -> set[int]:
    return {world.conversations[k] for k in keys}


def functions(app: App) -> DigestFunctions:
    return DigestFunctions(vitality=vitality_for(app.reader))


def test_periods_follow_each_persons_clock() -> None:
    paris = due_period("daily", NOW, zone("Europe/Paris", "UTC"), at(1, 7, 30).time())
    assert (paris.start, paris.end) == (at(9, 6, 30), at(10, 6, 30))
    # New York moved to summer time on 8 March: that day is 23 hours long
    york = due_period("daily", NOW, zone("America/New_York", "UTC"), at(1, 7, 30).time())
    assert (york.start, york.end) == (at(8, 11, 30), at(9, 11, 30))
    monday = due_period("weekly", NOW, zone("UTC", "UTC"), at(1, 7, 30).time(), 0)
    assert (monday.start, monday.end) == (at(2, 7, 30), at(9, 7, 30))


def test_daily_and_weekly_contain_exactly_their_period_and_communities(app: App) -> None:
    world = build(app)
    report = run_digests(app, "daily", NOW, functions=functions(app))
    assert (report.persons, report.queued, report.deliveries) == (2, 2, 2)
    got = digests(app)
    alice, bob = world.people["alice"], world.people["bob"]
    assert set(got) == {alice, bob}

    text, html = parts(got[alice][0])
    # pricing and proto are new, old had a reply, help became unanswered in her period
    assert conversations(text) == conversations(html) == ids(world, "pricing", "old", "help",
                                                              "proto")
    assert "Nouvelles conversations" in text and "Questions sans réponse" in text
    assert "RND" in text and "Sales" in text
    assert got[alice][0]["Content-Language"] == "fr"

    text, html = parts(got[bob][0])
    assert conversations(text) == conversations(html) == ids(world, "pricing", "help")
    assert "New conversations" in text and "Unanswered questions" in text
    # never a private community the reader is not in, nor another community's items
    for message in (m for ms in got.values() for m in ms):
        body = "".join(parts(message))
        assert str(world.conversations["secret"]) not in conversations(body)
        assert "Confidential" not in body and "Ancient" not in body and "Too late" not in body

    weekly = run_digests(app, "weekly", NOW, functions=functions(app))
    assert weekly.queued == 1
    carol = world.people["carol"]
    text, html = parts(digests(app)[carol][0])
    assert conversations(text) == conversations(html) == ids(world, "old", "help", "lab")
    assert "Vitality" in text and "Questions answered within 48 h" in text  # owner of sales


def test_headers_reply_addresses_and_ranking(app: App) -> None:
    world = build(app)
    run_digests(app, "daily", NOW)
    message = digests(app)[world.people["alice"]][0]
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Reply-To"] == "digest@lists.example.org"
    assert "digest@lists.example.org" in message["From"]
    assert message["List-Unsubscribe"].startswith("<https://causerie.example.com/u/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    replies = set(re.findall(r"reply\+[a-z2-7]+@lists\.example\.org", text))
    assert replies == set(re.findall(r"reply\+[a-z2-7]+@lists\.example\.org", html))
    assert len(replies) == 4
    assert "<script" not in html.lower() and "<img" not in html.lower()


def test_ranking_puts_what_the_reader_cares_about_first() -> None:
    def item(cid: int, hour: int, participants: frozenset[int] = frozenset(),
             parents: frozenset[int] = frozenset(), words: frozenset[str] = frozenset()
             ) -> Item:
        return Item(cid, f"s{cid}", "x", "", at(9, hour), at(9, hour), 0, (), participants,
                    parents, words)

    items = [item(1, 12), item(2, 8, participants=frozenset({7})),
             item(3, 9, parents=frozenset({7})), item(4, 10, words=frozenset({"invoices"})),
             item(5, 11)]
    ranked = rank(items, 7, frozenset({"invoices"}), muted={5})
    assert [i.conversation_id for i in ranked] == [2, 3, 4, 1]


def test_one_email_per_community_when_configured(app: App, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    world = build(app)
    split = App(dataclasses.replace(app.settings, digest=dataclasses.replace(
        app.settings.digest, one_email_per_cadence=False)))
    try:
        report = run_digests(split, "daily", NOW)
    finally:
        split.dispose()
    assert report.deliveries == 3  # alice: sales and rnd; bob: sales
    assert len(digests(app)[world.people["alice"]]) == 2


def test_second_run_and_empty_period_send_nothing(app: App) -> None:
    build(app)
    assert run_digests(app, "daily", NOW).queued == 2
    again = run_digests(app, "daily", NOW + timedelta(minutes=15))
    assert (again.queued, again.already) == (0, 2)
    later = run_digests(app, "daily", NOW + timedelta(days=30))
    assert later.queued == 0 and later.empty == 2
    with app.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(_delivery)).scalar() == 2


def test_a_run_killed_half_way_resumes_without_a_second_copy(app: App) -> None:
    world = build(app)

    class Killed(Exception):
        pass

    def kill(person_id: int) -> None:
        raise Killed

    with pytest.raises(Killed):  # one person per transaction: killed after the first
        run_digests(app, "daily", NOW, after_person=kill, group=1)
    assert len(digests(app)) == 1
    report = run_digests(app, "daily", NOW)
    assert (report.queued, report.already) == (1, 1)
    got = digests(app)
    assert {k: len(v) for k, v in got.items()} == {world.people["alice"]: 1,
                                                    world.people["bob"]: 1}


def test_a_group_killed_before_its_commit_leaves_nothing_and_is_redone(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Persons are written in groups: a crash inside a group's transaction (its run rows
    inserted, its deliveries not yet) rolls the whole group back; the next run sends each
    person one digest."""
    import outbound.digest.run as run_module

    world = build(app)

    class Killed(Exception):
        pass

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    real = run_module._insert_deliveries
    monkeypatch.setattr(run_module, "_insert_deliveries", die)
    with pytest.raises(Killed):
        run_digests(app, "daily", NOW)
    monkeypatch.setattr(run_module, "_insert_deliveries", real)
    assert digests(app) == {}
    with app.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(
            DigestRun.__table__)).scalar() == 0  # type: ignore[attr-defined]
    report = run_digests(app, "daily", NOW)
    assert (report.queued, report.already) == (2, 0)
    assert {k: len(v) for k, v in digests(app).items()} == {world.people["alice"]: 1,
                                                            world.people["bob"]: 1}


def test_two_schedulers_at_once_send_each_digest_once(app: App) -> None:
    world = build(app)
    others = [App(app.settings) for _ in range(3)]
    barrier = threading.Barrier(len(others))
    errors: list[BaseException] = []

    def run(instance: App) -> None:
        try:
            barrier.wait()
            run_digests(instance, "daily", NOW)
            run_digests(instance, "weekly", NOW)
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(o,)) for o in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for other in others:
        other.dispose()
    assert not errors
    got = digests(app)
    assert {k: len(v) for k, v in got.items()} == {world.people[p]: 1
                                                    for p in ("alice", "bob", "carol")}
    with app.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(
            DigestRun.__table__)).scalar() == 3  # type: ignore[attr-defined]


def test_preview_shows_the_period_ending_now(app: App) -> None:
    world = build(app)
    raw = preview_digest(app, world.people["bob"], "daily", at(9, 13))
    assert raw is not None
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text, _ = parts(message)
    assert ids(world, "pricing") <= conversations(text)
    assert preview_digest(app, world.people["bob"], "daily", at(1, 0, month=6)) is None
    assert not digests(app)  # a preview queues nothing


def test_a_reply_to_the_digest_is_explained_once(app: App) -> None:
    build(app)
    handler = DigestReplies(app)
    mail = IncomingMail(
        inbox_id=1, route=Route(RouteKind.POST, "digest@lists.example.org"),
        envelope_sender="bob@example.com", sender="bob@example.com", sender_name="Bob",
        subject="Re: Daily digest", message_id="r1@example.com", in_reply_to="",
        references=(), text="thanks!", language="en", kind="post")
    with app.session() as session:
        assert handler(session, mail).status == "discarded"
        assert handler(session, mail).status == "discarded"
    with app.engine.connect() as connection:
        rows = connection.execute(select(_delivery.c.raw, _delivery.c.address)
                                  .where(_delivery.c.kind == "notice")).all()
    assert len(rows) == 1 and rows[0].address == "bob@example.com"
    notice = email.message_from_bytes(rows[0].raw, policy=policy.default)
    assert notice["Auto-Submitted"] == "auto-replied"
    assert "Reply by email" in notice.get_body().get_content()  # type: ignore[union-attr]


def test_a_long_digest_is_cut_fairly_with_more_on_the_web(app: App) -> None:
    """At most [digest] max_items_per_email items in one email, shared between communities
    and sections; each community says how many more are on the web."""
    from tests.test_digest_fixtures import post

    world = build(app)
    with app.session() as session:
        for n in range(30):
            post(session, world, "sales", "erin", f"Sales topic {n}", at(9, 10, n), key=f"s{n}")
            post(session, world, "rnd", "erin", f"Lab topic {n}", at(9, 11, n), key=f"r{n}")
    run_digests(app, "daily", NOW)
    text, html = parts(digests(app)[world.people["alice"]][0])
    shown = conversations(text)
    assert shown == conversations(html)
    assert len(shown) == app.settings.digest.max_items_per_email == 30
    # sales: 31 new (14 shown), old (active), help (unanswered); rnd: 31 new (14 shown)
    assert ids(world, "old", "help", "proto") <= shown
    assert ids(world, *(f"s{n}" for n in range(16, 30))) <= shown   # the newest first
    assert not ids(world, "pricing", *(f"s{n}" for n in range(16))) & shown
    assert text.count("17 autres sur le web") == 2 and html.count("17 autres sur le web") == 2
    assert "https://causerie.example.com/c/sales" in text
