"""Digests at the command line, as an administrator drives them, down to the outbox.

`causerie digest preview`, `causerie digest run` (then the sender, once, into the Maildir
outbox that stands in for a relay) and `causerie community stats --json`, on the fixture
archive of tests/test_digest_fixtures.py and the vitality fixture of tests/test_vitality.py
(both with known answers); and the one-email-per-community mode, end to end.
"""

from __future__ import annotations

import asyncio
import email
import json
import re
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge.app import App
from bridge.cli import main
from bridge.models import Delivery
from bridge.settings import Settings
from outbound.dmarc import StaticTxtResolver
from outbound.sender import Sender
from tests.conftest import write_settings
from tests.test_digest_fixtures import NOW, World, at, build
from tests.test_vitality import fixture as vitality_fixture

_delivery = Delivery.__table__  # type: ignore[attr-defined]


def cli(capsys: pytest.CaptureFixture[str], settings_path: Path, *argv: str
        ) -> tuple[int, str, str]:
    code = main(["--config", str(settings_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def conversations(body: str) -> set[int]:
    return {int(n) for n in re.findall(r"/t/(\d+)", body)}


def ids(world: World, *keys: str) -> set[int]:
    return {world.conversations[k] for k in keys}


def send_once(settings_path: Path) -> list[EmailMessage]:
    """Run the sender once, as `serve` would, and read what landed in the outbox."""
    app = App(Settings.load(settings_path, environ={}))
    try:
        asyncio.run(Sender(app, resolver=StaticTxtResolver()).drain())
        new = app.settings.outbox_dir / "new"
        paths = sorted(new.iterdir()) if new.is_dir() else []
    finally:
        app.dispose()
    messages = []
    for path in paths:
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()  # type: ignore[attr-defined]


def to(message: EmailMessage) -> str:
    return str(message["To"].addresses[0].addr_spec)


def test_preview_prints_the_digest_or_one_part(
        app: App, settings_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = build(app)
    when = at(9, 13).isoformat()
    code, out, _ = cli(capsys, settings_path, "digest", "preview", "--person",
                       "bob@example.com", "--cadence", "daily", "--now", when)
    assert code == 0
    assert out.startswith("From: ") and "Content-Type: multipart/alternative" in out
    assert "Auto-Submitted: auto-generated" in out
    code, text, _ = cli(capsys, settings_path, "digest", "preview", "--person",
                        "bob@example.com", "--cadence", "daily", "--now", when, "--text")
    assert code == 0 and "<" not in text.split("\n", 1)[0]
    assert "Pricing question" in text and "New conversations" in text
    assert conversations(text) == ids(world, "pricing", "help")
    code, html, _ = cli(capsys, settings_path, "digest", "preview", "--person",
                        "bob@example.com", "--cadence", "daily", "--now", when, "--html")
    assert code == 0 and html.lstrip().startswith("<!DOCTYPE html>")
    assert conversations(html) == conversations(text)
    # French for Alice, and nothing in a month with no activity
    code, text, _ = cli(capsys, settings_path, "digest", "preview", "--person",
                        "alice@example.com", "--cadence", "weekly", "--now", when, "--text")
    assert code == 0 and "Nouvelles conversations" in text
    code, out, _ = cli(capsys, settings_path, "digest", "preview", "--person",
                       "bob@example.com", "--cadence", "daily",
                       "--now", at(1, 0, month=6).isoformat())
    assert code == 0 and "nothing new" in out
    code, _, err = cli(capsys, settings_path, "digest", "preview", "--person",
                       "nobody@example.com", "--cadence", "daily")
    assert code == 1 and "nobody@example.com" in err
    with app.engine.connect() as connection:  # a preview queues nothing
        assert connection.execute(select(_delivery.c.id)).first() is None


def test_run_queues_once_and_the_sender_delivers_to_the_outbox(
        app: App, settings_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = build(app)
    code, out, _ = cli(capsys, settings_path, "digest", "run", "--cadence", "daily",
                       "--now", NOW.isoformat(), "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["persons"], report["queued"], report["deliveries"], report["already"]) \
        == (2, 2, 2, 0)
    code, out, _ = cli(capsys, settings_path, "digest", "run", "--cadence", "daily",
                       "--now", NOW.isoformat(), "--json")
    again = json.loads(out)
    assert code == 0 and (again["queued"], again["already"]) == (0, 2)
    # the human form of the report, for the weekly cadence (Carol)
    code, out, _ = cli(capsys, settings_path, "digest", "run", "--cadence", "weekly",
                       "--now", NOW.isoformat())
    assert code == 0 and "1 queued (1 emails)" in out

    sent = send_once(settings_path)
    assert sorted(to(m) for m in sent) == ["alice@example.com", "bob@example.com",
                                           "carol@example.com"]
    by_address = {to(m): m for m in sent}
    text, html = parts(by_address["alice@example.com"])
    assert conversations(text) == conversations(html) == ids(world, "pricing", "old", "help",
                                                              "proto")
    text, html = parts(by_address["bob@example.com"])
    assert conversations(text) == conversations(html) == ids(world, "pricing", "help")
    assert "Vitality" in parts(by_address["carol@example.com"])[0]
    with app.engine.connect() as connection:
        statuses = connection.execute(select(_delivery.c.status).where(
            _delivery.c.kind == "digest")).scalars().all()
    assert statuses == ["sent"] * 3
    # a third run, after sending: still nothing new to queue, nothing more in the outbox
    code, out, _ = cli(capsys, settings_path, "digest", "run", "--cadence", "daily",
                       "--now", NOW.isoformat(), "--json")
    assert json.loads(out)["queued"] == 0
    assert len(send_once(settings_path)) == 3


def test_community_stats_json_has_the_known_answers(
        app: App, settings_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vitality_fixture(app)  # 3 of 4 questions answered within 48 h in the week to 03-10
    now = at(10, 0).isoformat()
    code, out, _ = cli(capsys, settings_path, "community", "stats", "care", "--now", now,
                       "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["community"] == "care"
    current, previous = stats["current"], stats["previous"]
    assert (current["questions"], current["answered_in_time"], current["answered_share"]) \
        == (4, 3, 0.75)
    assert (current["new_conversations"], current["messages"],
            current["active_contributors"]) == (4, 8, 2)
    assert previous["answered_share"] == 1.0
    goals = {g["key"]: g for g in stats["goals"]}
    assert (goals["answered_within_48h"]["value"], goals["answered_within_48h"]["met"]) \
        == (0.75, False)
    assert goals["active_contributors_per_week"]["met"] is True
    code, out, _ = cli(capsys, settings_path, "community", "stats", "care", "--now", now)
    assert code == 0 and "75%" in out and "answered_within_48h" in out
    code, _, err = cli(capsys, settings_path, "community", "stats", "nope", "--json")
    assert code == 1 and "nope" in err


def test_one_email_per_community_carries_that_communitys_items(
        app: App, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = build(app)
    folder = tmp_path / "split"
    folder.mkdir()
    split = write_settings(folder, db_url, "[digest]\none_email_per_cadence = false\n")
    code, out, _ = cli(capsys, split, "digest", "run", "--cadence", "daily",
                       "--now", NOW.isoformat(), "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["queued"], report["deliveries"]) == (2, 3)  # alice: sales + rnd; bob: sales
    sent = send_once(split)
    alice = [m for m in sent if to(m) == "alice@example.com"]
    assert len(alice) == 2 and len([m for m in sent if to(m) == "bob@example.com"]) == 1
    by_list = {str(m["List-Id"]): m for m in alice}
    assert set(by_list) == {"Sales <sales.lists.example.org>", "RND <rnd.lists.example.org>"}
    sales, rnd = by_list["Sales <sales.lists.example.org>"], by_list["RND <rnd.lists.example.org>"]
    text, html = parts(sales)
    assert conversations(text) == conversations(html) == ids(world, "pricing", "old", "help")
    assert "RND" not in text and "Sales" in str(sales["From"])
    text, html = parts(rnd)
    assert conversations(text) == conversations(html) == ids(world, "proto")
    assert "Sales" not in text and "RND" in str(rnd["From"])
    for message in alice:  # each names its own community's one-click unsubscribe
        assert message["List-Unsubscribe"].count("https://causerie.example.com/u/") == 1
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
