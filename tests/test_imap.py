"""The IMAP poller against a real Dovecot: ingestion, IDLE, moves, drops, UIDVALIDITY, leases.

One Dovecot serves the module (each test gets users of its own); tests that stop the server
or need an older server's capabilities start their own. Pollers run on short timings
(`PollerOptions`) so that the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.imap4 import IMAP4WithTimeout
from sqlalchemy import func, select
from sqlmodel import Session

from bridge import wiring
from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import Conversation, ImapSeen, ImapState, InboxItem, Message
from bridge.settings import ImapMailbox, Settings
from inbound.imap import ImapPoller, PollerOptions, poller
from inbound.store import InboxWriter
from tests import dovecot as dovecot_module
from tests.conftest import DOMAIN, STAFF_DOMAIN, free_port, write_settings
from tests.dovecot import Dovecot
from tests.servers import serving, wait_for

pytestmark = pytest.mark.skipif(bool(dovecot_module.available()),
                                reason=dovecot_module.available() or "dovecot available")

FAST = PollerOptions(idle_refresh=60, batch_size=10, lease=3.0, backoff_first=0.1,
                     backoff_max=0.5, tick=0.1, timeout=10, stop_grace=3)
ALICE = f"Alice <alice@{STAFF_DOMAIN}>"
BOB = f"Bob <bob@{STAFF_DOMAIN}>"
RD = f"rd@{DOMAIN}"
SALES = f"sales@{DOMAIN}"
PROCESSED = "Causerie.Processed"   # "Causerie/Processed" as Dovecot's Maildir spells it


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    instance = Dovecot(tmp_path_factory.mktemp("dovecot"))
    for n in range(80):  # Dovecot rereads its passwd-file at most once a second: add them now
        instance.add_user(f"user{n}", f"secret-{n}")
    instance.start()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def users() -> Iterator[int]:
    return iter(range(80))


@dataclasses.dataclass
class Account:
    server: Dovecot
    user: str
    password: str
    password_file: Path

    def append(self, *messages: bytes, folder: str = "INBOX",
               flags: tuple[bytes, ...] = ()) -> list[int]:
        return self.server.append(self.user, self.password, messages, folder, flags)

    def counts(self) -> dict[str, int]:
        return self.server.counts(self.user, self.password)

    def client(self) -> Any:
        return self.server.client(self.user, self.password)


def new_account(server: Dovecot, tmp_path: Path, number: int | None = None) -> Account:
    """A user of `server`: one of its pool when `number` is given, else added now (before
    `server.start()`)."""
    if number is None:
        number = 1000
        server.add_user(f"user{number}", f"secret-{number}")
    user, password = f"user{number}", f"secret-{number}"
    path = tmp_path / f"{user}.password"
    path.write_text(password + "\n", encoding="utf-8")
    return Account(server, user, password, path)


@pytest.fixture
def account(server: Dovecot, users: Iterator[int], tmp_path: Path) -> Account:
    return new_account(server, tmp_path, next(users))


def mailbox_toml(account: Account, **keys: object) -> str:
    values: dict[str, object] = {"name": "team", "host": "127.0.0.1",
                                 "port": account.server.port, "tls": "none",
                                 "user": account.user,
                                 "password_file": str(account.password_file)}
    values.update(keys)
    values = {key: value for key, value in values.items() if value is not None}
    lines = [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
             for key, value in values.items()]
    return "\n[[imap.mailbox]]\n" + "\n".join(lines).replace("'", '"') + "\n"


def make_app(tmp_path: Path, db_url: str, extra: str = "") -> App:
    ports = f"\n[smtp]\nport = {free_port()}\n[web]\nport = {free_port()}\n"
    app = App(Settings.load(write_settings(tmp_path, db_url, ports + extra), environ={}))
    with app.session() as session:
        for slug in ("rd", "sales"):
            community = create_community(session, slug, slug.upper(), policy="members")
            add_member(session, community, f"alice@{STAFF_DOMAIN}", name="Alice")
            add_member(session, community, f"bob@{STAFF_DOMAIN}", name="Bob")
    return app


@pytest.fixture
def made_apps() -> Iterator[list[App]]:
    apps: list[App] = []
    yield apps
    for app in apps:
        app.dispose()


def mail(subject: str, *, to: str = RD, sender: str = ALICE, message_id: str = "",
         body: str = "", **headers: str) -> bytes:
    message = EmailMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id or uuid.uuid4().hex + '@example.com'}>"
    message["Date"] = "Tue, 24 Nov 2026 10:00:00 +0100"
    message.set_content(body or f"About {subject}.\n")
    return bytes(message)


def rows(app: App, model: Any) -> list[Any]:
    with Session(app.engine) as session:
        return list(session.exec(select(model)).scalars())  # type: ignore[call-overload]


def count(app: App, model: Any) -> int:
    with Session(app.engine) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def make_poller(app: App, box: ImapMailbox | None = None, options: PollerOptions = FAST,
                **kwargs: Any) -> ImapPoller:
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    return poller(app, writer, box or app.settings.imap[0], environ={}, options=options,
                  **kwargs)


async def until(predicate: Callable[[], object], timeout: float = 20) -> None:
    """Wait (without blocking the loop) until `predicate()` is truthy."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(0.05)


async def running(pollers: list[ImapPoller], body: Callable[[], Awaitable[None]]) -> None:
    for each in pollers:
        await each.start()
    try:
        await body()
    finally:
        for each in pollers:
            await each.stop()


# --- ingestion --------------------------------------------------------------------------------


def test_appended_mail_becomes_conversations_idle_and_moves(tmp_path: Path, db_url: str,
                                                             account: Account,
                                                             made_apps: list[App]) -> None:
    first = mail("Budget 2027", message_id="budget@example.com")
    reply = mail("Re: Budget 2027", sender=BOB, cc=SALES, message_id="re-budget@example.com",
                 In_Reply_To="<budget@example.com>", References="<budget@example.com>",
                 body="Yes, on Monday.\n")
    nowhere = mail("Lunch?", to=f"someone@{STAFF_DOMAIN}", message_id="lunch@example.com")
    account.append(first, reply, nowhere)
    app = make_app(tmp_path, db_url, mailbox_toml(account))
    made_apps.append(app)
    with serving(app):
        wait_for(lambda: count(app, Message) == 3)
        wait_for(lambda: account.counts() == {"INBOX": 0, PROCESSED: 3})
        time.sleep(0.3)  # the poller is in IDLE now
        started = time.monotonic()
        account.append(mail("Re: Budget 2027", message_id="late@example.com",
                            In_Reply_To="<re-budget@example.com>",
                            References="<budget@example.com> <re-budget@example.com>"))
        wait_for(lambda: count(app, Message) == 4, timeout=10)
        delay = time.monotonic() - started
        wait_for(lambda: account.counts() == {"INBOX": 0, PROCESSED: 4})
    assert delay < 5, f"IDLE took {delay:.1f}s to deliver"
    by_id = {m.message_id: m for m in rows(app, Message)}
    assert set(by_id) == {"budget@example.com", "re-budget@example.com", "late@example.com"}
    rd_conversations = {m.conversation_id for m in rows(app, Message)
                        if m.community_id == by_id["budget@example.com"].community_id}
    assert len(rd_conversations) == 1   # the reply and the late one joined the thread
    assert count(app, Conversation) == 2  # rd's thread, and the reply copied to sales
    items = {i.header_message_id: i for i in rows(app, InboxItem)}
    assert items["re-budget@example.com"].rcpt_to == [RD, SALES]
    assert all(i.source == "imap" for i in items.values())
    assert items["lunch@example.com"].rcpt_to == []
    assert items["lunch@example.com"].status == "rejected"   # stored, and refused with why
    assert "no community" in items["lunch@example.com"].reason
    state = rows(app, ImapState)[0]
    assert (state.mailbox, state.last_uid) == ("team", 4)
    assert count(app, ImapSeen) == 4


def test_message_for_no_community_is_refused_with_a_reason(app: App) -> None:
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    from inbound.store import Envelope

    writer.accept_sync(mail("Lunch?", to=f"someone@{STAFF_DOMAIN}"),
                       Envelope(f"alice@{STAFF_DOMAIN}", [], source="imap"))
    wiring.processor(app).run_until_idle()
    item = rows(app, InboxItem)[0]
    assert item.status == "rejected" and item.reason


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only, for the tests whose subject is the IMAP side (kept fast)."""
    path = tmp_path / "var" / "causerie.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def recording(calls: list[str], before: Callable[[str, int], None] | None = None
              ) -> type[IMAPClient]:
    """An IMAPClient that notes its FETCH (of bodies), MOVE and IDLE calls, and can act just
    before one."""

    class Recording(IMAPClient):
        def _note(self, name: str) -> None:
            calls.append(name)
            if before is not None:
                before(name, calls.count(name))

        def fetch(self, messages: Any, data: Any, modifiers: Any = None) -> Any:
            if "BODY.PEEK[]" in data:   # not the RFC822.SIZE of large messages
                self._note("fetch")
                calls.append("uids " + ",".join(str(uid) for uid in messages))
            return super().fetch(messages, data, modifiers)

        def move(self, messages: Any, folder: Any) -> Any:
            self._note("move")
            return super().move(messages, folder)

        def idle(self) -> Any:
            self._note("idle")
            return super().idle()

    return Recording


async def test_restart_resumes_where_it_stopped(tmp_path: Path, db_url: str, account: Account,
                                                made_apps: list[App]) -> None:
    account.append(mail("One", to=f"someone@{STAFF_DOMAIN}"), mail("Two"))
    app = make_app(tmp_path, db_url, mailbox_toml(account, after="seen", community="sales"))
    made_apps.append(app)
    await running([make_poller(app)], lambda: until(lambda: count(app, InboxItem) == 2))
    account.append(mail("Three"))
    calls: list[str] = []
    second = make_poller(app, factory=recording(calls))
    await running([second], lambda: until(lambda: count(app, InboxItem) == 3))
    assert [c for c in calls if c.startswith("uids")] == ["uids 3"]
    assert {tuple(i.rcpt_to) for i in rows(app, InboxItem)} == {(SALES,)}
    with account.client() as client:
        client.select_folder("INBOX")
        flags = client.get_flags(client.search("ALL"))
    assert len(flags) == 3 and all(b"\\Seen" in f for f in flags.values())
    assert account.counts() == {"INBOX": 3}   # "seen": left in place
    assert rows(app, ImapState)[0].last_uid == 3


async def test_idle_is_reissued_and_still_delivers(tmp_path: Path, sqlite_url: str,
                                                   account: Account,
                                                   made_apps: list[App]) -> None:
    app = make_app(tmp_path, sqlite_url, mailbox_toml(account))
    made_apps.append(app)
    calls: list[str] = []
    watcher = make_poller(app, options=dataclasses.replace(FAST, idle_refresh=0.2),
                          factory=recording(calls))

    async def body() -> None:
        await until(lambda: calls.count("idle") >= 4, timeout=10)
        started = time.monotonic()
        account.append(mail("Fresh news"))
        await until(lambda: count(app, InboxItem) == 1, timeout=10)
        assert time.monotonic() - started < 3

    await running([watcher], body)
    assert watcher.connections == 1   # re-issuing IDLE does not reconnect


async def test_batches_are_bounded_in_messages_and_bytes(tmp_path: Path, sqlite_url: str,
                                                         account: Account,
                                                         made_apps: list[App]) -> None:
    small, large = (m.replace(b"\n", b"\r\n")   # as the server counts sizes
                    for m in (mail("Small"), mail("Large", body="x" * 3000 + "\n")))
    account.append(small, small, small, small, large, small, large)  # UIDs 1..7
    app = make_app(tmp_path, sqlite_url, mailbox_toml(account))
    made_apps.append(app)
    calls: list[str] = []
    bounded = make_poller(app, options=dataclasses.replace(FAST, batch_size=3,
                                                           batch_bytes=len(small) * 3 + 10),
                          factory=recording(calls))
    await running([bounded], lambda: until(lambda: count(app, ImapSeen) == 7))
    assert [c for c in calls if c.startswith("uids")] == [
        "uids 1,2,3", "uids 4", "uids 5", "uids 6", "uids 7"]


async def test_dovecot_stopped_mid_batch_every_message_once(
        tmp_path: Path, sqlite_url: str, made_apps: list[App],
        caplog: pytest.LogCaptureFixture) -> None:
    own = Dovecot(tmp_path / "dovecot")
    box = new_account(own, tmp_path)
    own.start()
    try:
        box.append(*[mail(f"Item {n}") for n in range(60)])
        app = make_app(tmp_path, sqlite_url, mailbox_toml(box, community="rd"))
        made_apps.append(app)

        def stop_dovecot(name: str, nth: int) -> None:
            # The 3rd FETCH finds the server gone (nothing of that batch is committed);
            # before the 4th MOVE it goes away again (that batch is committed, not moved).
            if (name, nth) in {("fetch", 3), ("move", 4)}:
                own.stop()

        calls: list[str] = []
        flaky = make_poller(app, factory=recording(calls, stop_dovecot))

        async def body() -> None:
            for _ in range(2):
                await until(lambda: not own.running)
                await until(lambda: flaky.failures >= 2)   # refused reconnections
                await asyncio.to_thread(own.start)
            await until(lambda: box.counts() == {"INBOX": 0, PROCESSED: 60}, timeout=30)

        caplog.set_level(logging.INFO, logger="causerie.inbound.imap")
        await running([flaky], body)
    finally:
        own.close()
    items = rows(app, InboxItem)
    assert len(items) == 60
    assert len({i.header_message_id for i in items}) == 60
    assert count(app, ImapSeen) == 60
    assert "connection lost" in caplog.text
    assert "moving 10 message(s) stored before the last disconnection" in caplog.text
    assert "connected again after 3 failed attempt(s)" in caplog.text


@pytest.mark.parametrize("after", ["seen", "move"])
async def test_uidvalidity_change_resyncs_without_duplicates(
        tmp_path: Path, sqlite_url: str, account: Account, after: str, made_apps: list[App],
        caplog: pytest.LogCaptureFixture) -> None:
    originals = [mail(f"Topic {n}") for n in range(4)]
    account.append(*originals, folder="Team")
    app = make_app(tmp_path, sqlite_url,
                   mailbox_toml(account, folder="Team", after=after, community="rd"))
    made_apps.append(app)
    await running([make_poller(app)], lambda: until(lambda: count(app, ImapSeen) == 4))
    old_validity = rows(app, ImapState)[0].uidvalidity
    # The folder is deleted and recreated with the same messages, as a migration does; the
    # migration tool rewrote one of them (same Message-ID, other bytes); one is new.
    with account.client() as client:
        client.delete_folder("Team")
        client.create_folder("Team")
    account.append(b"X-Migrated: yes\n" + originals[0], *originals[1:], mail("Brand new"),
                   folder="Team")
    caplog.set_level(logging.WARNING, logger="causerie.inbound.imap")
    await running([make_poller(app)], lambda: until(lambda: count(app, ImapSeen) == 9))
    state = rows(app, ImapState)[0]
    assert state.uidvalidity != old_validity and state.last_uid == 5
    assert count(app, InboxItem) == 5
    assert f"UIDVALIDITY of 'Team' changed from {old_validity}" in caplog.text
    if after == "seen":
        assert account.counts() == {"INBOX": 0, "Team": 5}
    else:   # nothing deleted: the first copies and the recreated ones are all kept
        await until(lambda: account.counts() == {"INBOX": 0, "Team": 0, PROCESSED: 9})


# --- failures: one clear line, retries, recovery ----------------------------------------------


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("causerie.inbound.imap")]


def from_new_addresses() -> type[IMAPClient]:
    """An IMAPClient that connects from another loopback address each time.

    Dovecot delays logins from an address that failed recently (its auth penalty, up to
    15 s): right for a server, and the poller's backoff copes with it, but it would make
    the bad-password test slow.
    """
    numbers = itertools.count(2)

    class Client(IMAPClient):
        def _create_IMAP4(self) -> Any:
            source = (f"127.0.0.{next(numbers)}", 0)

            class Bound(IMAP4WithTimeout):
                def _create_socket(self, timeout: float | None = None) -> socket.socket:
                    return socket.create_connection((self.host, self.port), timeout,
                                                    source_address=source)

            return Bound(self.host, self.port, self._timeout.connect)

    return Client


async def test_bad_password_one_line_retries_then_recovers(
        tmp_path: Path, sqlite_url: str, account: Account, made_apps: list[App],
        caplog: pytest.LogCaptureFixture) -> None:
    account.append(mail("Hello"))
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    app = make_app(tmp_path, sqlite_url, mailbox_toml(account, password_file=str(wrong)))
    made_apps.append(app)
    caplog.set_level(logging.DEBUG, logger="causerie.inbound.imap")
    stubborn = make_poller(app, factory=from_new_addresses())

    async def body() -> None:
        await until(lambda: stubborn.failures >= 4)
        assert stubborn._task is not None and not stubborn._task.done()
        [line] = errors(caplog)
        assert f"login refused by 127.0.0.1:{account.server.port} for user '{account.user}'" \
               in line
        assert "AUTHENTICATIONFAILED" in line and "retrying in" in line
        assert "\n" not in line
        wrong.write_text(account.password)   # fixed, no restart needed
        await until(lambda: count(app, InboxItem) == 1)

    await running([stubborn], body)
    assert "connected again after" in caplog.text
    assert len(errors(caplog)) == 1


async def test_unreachable_server_one_line_then_connects(
        tmp_path: Path, sqlite_url: str, made_apps: list[App],
        caplog: pytest.LogCaptureFixture) -> None:
    late = Dovecot(tmp_path / "dovecot", port=free_port())
    try:
        box = new_account(late, tmp_path)
        app = make_app(tmp_path, sqlite_url, mailbox_toml(box))
        made_apps.append(app)
        caplog.set_level(logging.DEBUG, logger="causerie.inbound.imap")
        patient = make_poller(app)

        async def body() -> None:
            await until(lambda: patient.failures >= 3)
            [line] = errors(caplog)
            assert f"cannot connect to 127.0.0.1:{late.port}: connection refused" in line
            await asyncio.to_thread(late.start)
            box.append(mail("At last"))
            await until(lambda: count(app, InboxItem) == 1)

        await running([patient], body)
    finally:
        late.close()
    assert len(errors(caplog)) == 1


def test_serve_survives_a_mailbox_it_cannot_read(tmp_path: Path, sqlite_url: str,
                                                 account: Account,
                                                 made_apps: list[App]) -> None:
    import smtplib

    app = make_app(tmp_path, sqlite_url, mailbox_toml(account, port=free_port()))
    made_apps.append(app)
    with serving(app):
        time.sleep(0.5)
        with smtplib.SMTP("127.0.0.1", app.settings.smtp.port, timeout=10) as client:
            client.sendmail(f"alice@{STAFF_DOMAIN}", [RD], mail("By SMTP meanwhile"))
        wait_for(lambda: count(app, InboxItem) == 1)


# --- older servers, TLS, leases ---------------------------------------------------------------


async def test_server_without_idle_or_move_polls_and_expunges_only_its_own(
        tmp_path: Path, sqlite_url: str, made_apps: list[App],
        caplog: pytest.LogCaptureFixture) -> None:
    old = Dovecot(tmp_path / "dovecot", capability="IMAP4rev1 LITERAL+ UIDPLUS")
    box = new_account(old, tmp_path)
    old.start()
    try:
        # Someone flagged this one \Deleted and never expunged it; it predates Causerie.
        [theirs] = box.append(mail("Not ours to expunge"), flags=(b"\\Deleted",))
        box.append(mail("First"))
        app = make_app(tmp_path, sqlite_url, mailbox_toml(box, community="rd"))
        made_apps.append(app)
        with box.client() as client:
            validity = int(client.select_folder("INBOX")[b"UIDVALIDITY"])
        with app.session() as session:
            session.add(ImapState(mailbox="team", uidvalidity=validity, last_uid=theirs))
        caplog.set_level(logging.INFO, logger="causerie.inbound.imap")
        polling = make_poller(app, options=dataclasses.replace(FAST, poll_interval=0.3))

        async def body() -> None:
            await until(lambda: box.counts() == {"INBOX": 1, PROCESSED: 1})
            box.append(mail("Second"))
            await until(lambda: box.counts() == {"INBOX": 1, PROCESSED: 2}, timeout=5)

        await running([polling], body)
        with box.client() as client:
            client.select_folder("INBOX")
            assert client.search("ALL") == [theirs]
    finally:
        old.close()
    assert "polling every 0.3s" in caplog.text and "then expunged (no MOVE)" in caplog.text
    assert count(app, InboxItem) == 2


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls(tmp_path: Path, sqlite_url: str, account: Account, tls: str,
                   made_apps: list[App]) -> None:
    port = account.server.tls_port if tls == "implicit" else account.server.port
    account.append(mail("Over TLS"))
    app = make_app(tmp_path, sqlite_url, mailbox_toml(account, tls=tls, port=port,
                                                       host="localhost"))
    made_apps.append(app)
    secure = make_poller(app, ssl_context=account.server.ssl_context())
    await running([secure], lambda: until(lambda: count(app, InboxItem) == 1))


@pytest.fixture
def pg_only(pg_url: str) -> Iterator[str]:
    from tests.conftest import _empty_pg

    yield pg_url
    _empty_pg(pg_url)


@pytest.mark.postgres
async def test_two_instances_one_poller_at_a_time(tmp_path: Path, pg_only: str,
                                                  account: Account,
                                                  made_apps: list[App]) -> None:
    account.append(*[mail(f"Batch one, {n}") for n in range(20)])
    first_app = make_app(tmp_path, pg_only, mailbox_toml(account, community="rd"))
    second_app = App(first_app.settings)   # another instance on the same database
    made_apps.extend([first_app, second_app])
    quick = dataclasses.replace(FAST, lease=1.5)
    one = make_poller(first_app, options=quick, owner="instance-one")
    two = make_poller(second_app, options=quick, owner="instance-two")
    await one.start()
    await two.start()
    try:
        await until(lambda: count(first_app, ImapSeen) == 20)
        await until(lambda: one.connections + two.connections == 1)
        holder, standby = (one, two) if one.connections else (two, one)
        assert (holder.connections, standby.connections) == (1, 0)
        assert rows(first_app, ImapState)[0].lease_owner == holder.store.owner
        # The holder dies without giving its lease back: the other takes over on expiry.
        holder.store.release = lambda: None  # type: ignore[method-assign]
        await holder.stop()
        account.append(*[mail(f"Batch two, {n}") for n in range(5)])
        await until(lambda: count(first_app, ImapSeen) == 25, timeout=20)
        await until(lambda: standby.connections == 1)
        assert rows(first_app, ImapState)[0].lease_owner == standby.store.owner
    finally:
        await one.stop()
        await two.stop()
    items = rows(first_app, InboxItem)
    assert len(items) == 25 and len({i.header_message_id for i in items}) == 25
    assert account.counts() == {"INBOX": 0, PROCESSED: 25}


# --- causerie imap test / status ------------------------------------------------------------


def test_cli_imap_test(tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.cli import main

    # A server of its own: after the wrong password, Dovecot delays every login from this
    # address for a while (its auth penalty), which would slow the other tests down.
    own = Dovecot(tmp_path / "dovecot")
    account = new_account(own, tmp_path)
    own.start()
    try:
        _cli_imap_test(tmp_path, sqlite_url, account, capsys, monkeypatch, main)
    finally:
        own.close()


def _cli_imap_test(tmp_path: Path, sqlite_url: str, account: Account,
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                   main: Callable[[list[str]], int]) -> None:
    account.append(mail("One"), mail("Two"))
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    token = tmp_path / "token"
    token.write_text(account.password + "\n")
    boxes = (mailbox_toml(account)
             + mailbox_toml(account, name="wrong", password_file=str(wrong))
             + mailbox_toml(account, name="nofolder", folder="Shared/Nope")
             + mailbox_toml(account, name="down", port=free_port())
             + mailbox_toml(account, name="tls", tls="implicit", host="localhost",
                            port=account.server.tls_port)
             + mailbox_toml(account, name="oauth", password_file=None,
                            oauth2_token_command=f"cat {token}")
             + mailbox_toml(account, name="badtoken", password_file=None,
                            oauth2_token_command="false"))
    config = str(write_settings(tmp_path, sqlite_url, boxes))

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--config", config, "imap", *args])
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = run("test", "team")
    assert status == 0
    assert f"127.0.0.1:{account.server.port} (tls none), user '{account.user}', password login" \
           " OK" in out
    assert "'INBOX': 2 message(s)" in out and "2 (never polled)" in out
    assert "IDLE" in out and "folder 'Causerie.Processed' will be created" in out
    status, out, _ = run("test", "team", "--json")
    found = json.loads(out)
    assert (status, found["new"], found["waits"]) == (0, 2, "IDLE")
    assert "(MOVE)" in found["after"]
    assert account.counts() == {"INBOX": 2}   # the test changed nothing

    status, _, err = run("test", "nofolder")
    assert status == 1 and "folder 'Shared/Nope' does not exist" in err and "INBOX" in err
    status, _, err = run("test", "down")
    assert status == 1 and "connection refused" in err
    status, _, err = run("test", "tls")
    assert status == 1 and "TLS with localhost:" in err and "not trusted" in err
    monkeypatch.setenv("SSL_CERT_FILE", str(account.server.cert))
    status, out, _ = run("test", "tls")
    assert status == 0 and "(tls implicit)" in out
    status, out, _ = run("test", "oauth")
    assert status == 0 and "XOAUTH2 login OK" in out
    status, _, err = run("test", "badtoken")
    assert status == 1 and "oauth2_token_command 'false' failed with status 1" in err
    status, _, err = run("test", "nosuch")
    assert status == 1 and "no [[imap.mailbox]] named 'nosuch'" in err
    status, _, err = run("test", "wrong")
    assert status == 1 and err.count("\n") == 1
    assert f"imap wrong: login refused by 127.0.0.1:{account.server.port} for user " \
           f"'{account.user}' (check the password): [AUTHENTICATIONFAILED]" in err


async def test_cli_imap_status(tmp_path: Path, sqlite_url: str, account: Account,
                               capsys: pytest.CaptureFixture[str],
                               made_apps: list[App]) -> None:
    from bridge.cli import main

    account.append(mail("One"), mail("Two"))
    extra = mailbox_toml(account) + mailbox_toml(account, name="idle-one", folder="Other")
    app = make_app(tmp_path, sqlite_url, extra)
    made_apps.append(app)
    config = str(tmp_path / "settings.toml")
    watcher = make_poller(app, owner="host-a:42:abc")

    async def body() -> None:
        await until(lambda: count(app, ImapSeen) == 2)
        status = await asyncio.to_thread(main, ["--config", config, "imap", "status", "--json"])
        assert status == 0

    await running([watcher], body)
    team, other = json.loads(capsys.readouterr().out)
    assert team["mailbox"] == "team" and team["last_uid"] == 2 and team["seen_uids"] == 2
    assert team["uidvalidity"] > 0
    assert (team["lease"], team["lease_owner"]) == ("held", "host-a:42:abc")
    assert (other["mailbox"], other["lease"], other["last_uid"]) == ("idle-one", "free", 0)
    assert main(["--config", config, "imap", "status"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["MAILBOX", "SERVER", "FOLDER"]
    assert "free" in table   # released by the clean stop


# --- the parts, without a server --------------------------------------------------------------


def test_recipients(app: App) -> None:
    from inbound.imap import Recipients

    with app.session() as session:
        create_community(session, "rd", "R&D")
    box = ImapMailbox(name="team", host="localhost", port=143, tls="none", user="u",
                      password_env="X", password_file=None, oauth2_token_command="",
                      folder="INBOX", after="move", processed_folder="P", community="",
                      poll_interval=60)
    routed = Recipients(box, app.router)
    raw = mail("Hi", to=f"Team <team@{STAFF_DOMAIN}>, RD@{DOMAIN.upper()}",
               cc=f"nosuch@{DOMAIN}, rd+subscribe@{DOMAIN}",
               Delivered_To=f"rd@{DOMAIN}", X_Original_To=f"rd+owner@{DOMAIN}",
               Return_Path="<>")
    assert routed.envelope(raw) == ((RD, f"rd+subscribe@{DOMAIN}", f"rd+owner@{DOMAIN}"), "")
    raw = mail("Hi", to=f"someone@{STAFF_DOMAIN}", Return_Path="<bounce@example.net>")
    assert routed.envelope(raw) == ((), "bounce@example.net")
    assert routed.envelope(mail("Hi", to=f"x@{STAFF_DOMAIN}"))[1] == f"alice@{STAFF_DOMAIN}"
    fixed = Recipients(dataclasses.replace(box, community="sales"), app.router)
    assert fixed.envelope(mail("Hi", to=f"team@{STAFF_DOMAIN}"))[0] == (SALES,)


class MovableClock:
    def __init__(self) -> None:
        from bridge.clock import utcnow

        self.at = utcnow()

    def now(self) -> Any:
        return self.at


def test_lease_is_exclusive_expires_and_fences_commits(app: App) -> None:
    from datetime import timedelta

    from inbound.imap_store import Fetched, LeaseLost, MailboxStore

    clock = MovableClock()
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, clock)
    one, two = (MailboxStore(app.engine, writer, clock, "team", owner, timedelta(seconds=60))
                for owner in ("one", "two"))
    assert one.acquire() == ""
    assert two.acquire() == "one"
    assert one.renew() and one.acquire() == ""
    one.ingest(7, [Fetched(1, mail("A"), (RD,), "")], 1)
    clock.at += timedelta(seconds=61)    # "one" stopped renewing
    assert two.acquire() == ""
    assert not one.renew()
    with pytest.raises(LeaseLost):
        one.ingest(7, [Fetched(2, mail("B"), (RD,), "")], 2)
    assert count(app, InboxItem) == 1 and one.position() == (7, 1)
    two.release()
    assert one.acquire() == ""


def test_ingest_recognises_known_messages_but_not_other_recipients(app: App) -> None:
    from datetime import timedelta

    from inbound.imap_store import Fetched, MailboxStore

    writer = InboxWriter(app.engine, app.blobs, 300, app.clock)   # larger mail: content store
    store = MailboxStore(app.engine, writer, app.clock, "team", "me", timedelta(seconds=60))
    store.acquire()
    big = mail("Big", message_id="big@example.com", body="x" * 2000)
    first = store.ingest(1, [Fetched(1, big, (RD,), ""),
                             Fetched(2, big, (RD,), "")], 2)   # the same message twice
    assert (len(first.stored), first.known) == (1, 1)
    # The same Message-ID delivered once per alias (Bcc to two communities): both kept.
    alias = store.ingest(1, [Fetched(3, b"Delivered-To: sales\n" + big, (SALES,), "")], 3)
    assert len(alias.stored) == 1
    # After a UIDVALIDITY change: recognised by content, and by Message-ID (rewritten).
    again = store.ingest(2, [Fetched(1, big, (RD,), ""),
                             Fetched(2, b"X-Migrated: 1\n" + big, (RD, SALES), "")], 2)
    assert (len(again.stored), again.known) == (0, 2)
    items = rows(app, InboxItem)
    assert len(items) == 2 and all(i.raw is None for i in items)   # in the content store
    assert app.raw_mail(items[0]) == big
    assert {s.inbox_id for s in rows(app, ImapSeen)} == {items[0].id, items[1].id}
    assert store.known_uids(2, [1, 2, 3]) == {1, 2}


class StubClient:
    """Just enough of IMAPClient for `plan_folders`."""

    def __init__(self, capabilities: tuple[str, ...], folders: list[str],
                 separator: bytes = b".", prefix: str = "") -> None:
        self.capabilities = capabilities
        self.folders = folders
        self.separator = separator
        self.prefix = prefix
        self.created: list[str] = []

    def has_capability(self, name: str) -> bool:
        return name in self.capabilities

    def list_folders(self, directory: str = "", pattern: str = "*") -> list[Any]:
        if pattern == "":
            return [((b"\\Noselect",), self.separator, "")]
        return [((), self.separator, name) for name in self.folders]

    def namespace(self) -> Any:
        return type("NS", (), {"personal": ((self.prefix, self.separator.decode()),)})()

    def folder_exists(self, name: str) -> bool:
        return name in self.folders

    def create_folder(self, name: str) -> None:
        self.created.append(name)
        self.folders.append(name)

    def subscribe_folder(self, name: str) -> None:
        pass


@pytest.mark.parametrize(("capabilities", "after"), [
    (("IDLE", "MOVE", "UIDPLUS"), "move"), (("UIDPLUS",), "copy"), ((), "seen")])
def test_plan_folders(capabilities: tuple[str, ...], after: str) -> None:
    from inbound.imap import plan_folders
    from inbound.imap_connect import FolderMissing

    box = ImapMailbox(name="team", host="h", port=993, tls="implicit", user="u",
                      password_env="X", password_file=None, oauth2_token_command="",
                      folder="Shared/Team", after="move",
                      processed_folder="Causerie/Processed", community="", poll_interval=60)
    client = StubClient(("NAMESPACE", *capabilities), ["INBOX", "INBOX.Shared.Team"],
                        prefix="INBOX.")
    plan = plan_folders(client, box)  # type: ignore[arg-type]
    assert (plan.folder, plan.after, plan.can_idle) == ("INBOX.Shared.Team", after,
                                                        "IDLE" in capabilities)
    if after == "seen":
        assert client.created == [] and "neither MOVE nor UIDPLUS" in plan.notes[0]
    else:
        assert client.created == ["INBOX.Causerie.Processed"]
    with pytest.raises(FolderMissing, match="folder 'Nope' does not exist on h:993"):
        plan_folders(client, dataclasses.replace(box, folder="Nope"))  # type: ignore[arg-type]


def test_read_secret(tmp_path: Path) -> None:
    from inbound.imap_connect import SecretMissing, read_secret

    box = ImapMailbox(name="team", host="h", port=993, tls="implicit", user="u",
                      password_env="", password_file=None, oauth2_token_command="",
                      folder="INBOX", after="move", processed_folder="P", community="",
                      poll_interval=60)
    env = dataclasses.replace(box, password_env="TEAM_PW")
    assert read_secret(env, {"TEAM_PW": "s3cret"}).value == "s3cret"
    with pytest.raises(SecretMissing, match="environment variable TEAM_PW"):
        read_secret(env, {})
    (tmp_path / "pw").write_text("from file\n")
    assert read_secret(dataclasses.replace(box, password_file=tmp_path / "pw"), {}).value \
        == "from file"
    with pytest.raises(SecretMissing, match="cannot be read"):
        read_secret(dataclasses.replace(box, password_file=tmp_path / "missing"), {})
    token = read_secret(dataclasses.replace(box, oauth2_token_command="echo ya29.token"), {})
    assert (token.value, token.xoauth2) == ("ya29.token", True)
    with pytest.raises(SecretMissing, match="printed no token"):
        read_secret(dataclasses.replace(box, oauth2_token_command="true"), {})
    with pytest.raises(SecretMissing, match="could not run"):
        read_secret(dataclasses.replace(box, oauth2_token_command="/nonexistent/tok"), {})
