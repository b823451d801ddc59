"""The sender against real SMTP peers: an aiosmtpd sink told to answer 451 or 550, a relay
that is down, a crash between sending and recording, and a real Postfix as the relay."""

from __future__ import annotations

import asyncio
import email
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlmodel import Session

from bridge.app import App
from bridge.clock import FixedClock
from bridge.models import Delivery, Membership
from bridge.settings import Settings
from outbound.dmarc import StaticTxtResolver
from outbound.sender import LEASE, Sender, backoff
from tests.conftest import DOMAIN, free_port, write_settings
from tests.test_outbound_support import Sink, make_world, simple_post, store_post, wait_for

START = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
MEMBERS = ("bob@example.com", "claire@example.com", "dan@partner.example.net")


def relay_app(tmp_path: Path, db_url: str, port: int, clock: FixedClock,
              extra: str = "", batch: int = 2) -> App:
    settings = Settings.load(write_settings(tmp_path, db_url, f"""
[outbound]
relay_host = "127.0.0.1"
relay_port = {port}
send_batch_size = {batch}
{extra}
"""), environ={})
    return App(settings, clock=clock)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


def make_sender(app: App) -> Sender:
    return Sender(app, resolver=StaticTxtResolver(), rng=random.Random(7))


def deliveries(app: App) -> dict[str, Delivery]:
    with Session(app.engine) as session:
        return {d.address: d for d in session.exec(select(Delivery)).scalars()}  # type: ignore[call-overload]


def score(app: App, person_id: int) -> tuple[float, str]:
    with Session(app.engine) as session:
        row = session.execute(select(Membership.bounce_score, Membership.disabled_reason)
                              .where(Membership.person_id == person_id)).one()
        return row[0], row[1]


def test_backoff_grows_with_jitter() -> None:
    rng = random.Random(1)
    for attempts, base in ((1, 60), (2, 120), (3, 240), (20, 4 * 3600)):
        delays = [backoff(attempts, rng).total_seconds() for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jitter


async def test_451_for_a_while_then_every_delivery_arrives(tmp_path: Path, db_url: str,
                                                           clock: FixedClock,
                                                           sink: Sink) -> None:
    app = relay_app(tmp_path, db_url, sink.port, clock)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        sink.handler.data_reply = lambda: "451 4.3.0 Try again later"
        sender = make_sender(app)
        assert await sender.drain() == 3  # batches of 2: both claimed, both deferred
        rows = deliveries(app)
        assert {r.status for r in rows.values()} == {"pending"}
        assert all(r.attempts == 1 and "451" in r.last_error for r in rows.values())
        assert all(START + timedelta(seconds=30) <= r.next_attempt_at
                   <= START + timedelta(seconds=60) for r in rows.values())
        assert await sender.run_once() == 0  # nothing due yet
        clock.at = START + timedelta(minutes=5)
        assert await sender.drain() == 3  # second attempt, still 451
        assert all(r.attempts == 2 for r in deliveries(app).values())
        assert sink.handler.received == []
        sink.handler.data_reply = lambda: None  # the relay recovers
        clock.at = START + timedelta(hours=1)
        assert await sender.drain() == 3
        rows = deliveries(app)
        assert {r.status for r in rows.values()} == {"sent"}
        assert sorted(sink.addresses()) == sorted(MEMBERS)  # each exactly once
        for mail_from, _, data in sink.handler.received:
            assert mail_from.startswith("bounces+") and mail_from.endswith(f"@{DOMAIN}")
            assert email.message_from_bytes(data)["List-Id"] == f"R&D <rd.{DOMAIN}>"
    finally:
        app.dispose()


async def test_550_for_one_address_fails_it_and_raises_its_score(tmp_path: Path, db_url: str,
                                                                 clock: FixedClock,
                                                                 sink: Sink) -> None:
    app = relay_app(tmp_path, db_url, sink.port, clock)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        refusals = {"dan@partner.example.net": "550 5.1.1 <dan@partner.example.net>: no such "
                                               "user",
                    "claire@example.com": "550 5.7.1 Message rejected as spam"}
        sink.handler.rcpt_reply = lambda address: refusals.get(address)
        sender = make_sender(app)
        await sender.drain()
        rows = deliveries(app)
        assert rows["bob@example.com"].status == "sent"
        assert sink.addresses() == ["bob@example.com"]
        dan = rows["dan@partner.example.net"]
        assert dan.status == "failed" and dan.last_error.startswith("550 5.1.1")
        assert score(app, world.people["dan@partner.example.net"]) == (1.0, "")
        # A policy/spam refusal fails the copy but says nothing about the address.
        assert rows["claire@example.com"].status == "failed"
        assert score(app, world.people["claire@example.com"]) == (0.0, "")
        assert score(app, world.people["bob@example.com"]) == (0.0, "")
    finally:
        app.dispose()


async def test_temporary_failures_give_up_after_max_retry_hours(tmp_path: Path, db_url: str,
                                                                clock: FixedClock,
                                                                sink: Sink) -> None:
    app = relay_app(tmp_path, db_url, sink.port, clock, "max_retry_hours = 2")
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        sink.handler.rcpt_reply = lambda address: "452 4.2.2 Mailbox full"
        sender = make_sender(app)
        for minutes in range(0, 24 * 60, 30):
            clock.at = START + timedelta(minutes=minutes)
            await sender.drain()
        rows = deliveries(app)
        assert {r.status for r in rows.values()} == {"failed"}
        assert all(r.last_error.startswith("gave up after") and "452" in r.last_error
                   for r in rows.values())
        assert all(r.attempts >= 3 for r in rows.values())
        assert score(app, world.people["bob@example.com"]) == (0.0, "")  # 4xx never scores
    finally:
        app.dispose()


async def test_relay_down_is_a_temporary_failure(tmp_path: Path, db_url: str,
                                                 clock: FixedClock) -> None:
    app = relay_app(tmp_path, db_url, free_port(), clock)  # nothing listens there
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        await make_sender(app).drain()
        rows = deliveries(app)
        assert {r.status for r in rows.values()} == {"pending"}
        assert all("relay 127.0.0.1" in r.last_error for r in rows.values())
    finally:
        app.dispose()


async def test_crash_between_sending_and_recording_sends_twice_never_zero(
        tmp_path: Path, db_url: str, clock: FixedClock, sink: Sink) -> None:
    app = relay_app(tmp_path, db_url, sink.port, clock, batch=10)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        crashed = make_sender(app)
        claimed = crashed.claim()
        await crashed.deliver(claimed)  # sent... and the process dies before record()
        assert len(sink.handler.received) == 3
        restarted = make_sender(app)
        assert await restarted.drain() == 0  # leased: not due yet
        clock.at = START + LEASE + timedelta(seconds=1)
        assert await restarted.drain() == 3
        assert sorted(sink.addresses()) == sorted(MEMBERS * 2)
        assert {r.status for r in deliveries(app).values()} == {"sent"}
    finally:
        app.dispose()


async def test_copies_cancelled_for_people_who_left_or_muted(tmp_path: Path, db_url: str,
                                                              clock: FixedClock,
                                                              sink: Sink) -> None:
    from outbound.mutes import mute

    app = relay_app(tmp_path, db_url, sink.port, clock)
    try:
        world = make_world(app)
        _, conversation = store_post(app, world, simple_post())
        with app.session() as session:
            mute(session, world.people["bob@example.com"], conversation)
            member = session.exec(select(Membership).where(  # type: ignore[call-overload]
                Membership.person_id == world.people["claire@example.com"])).scalar_one()
            session.delete(member)
        await make_sender(app).drain()
        rows = deliveries(app)
        assert rows["bob@example.com"].last_error == "cancelled: conversation muted"
        assert rows["claire@example.com"].last_error == "cancelled: no longer a member"
        assert sink.addresses() == ["dan@partner.example.net"]
    finally:
        app.dispose()


@pytest.mark.postgres
async def test_postgres_claims_skip_locked_rows(tmp_path: Path, db_url: str,
                                                clock: FixedClock, sink: Sink) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("FOR UPDATE SKIP LOCKED is the PostgreSQL claim")
    app = relay_app(tmp_path, db_url, sink.port, clock, batch=10)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        with app.engine.connect() as other:  # another instance, in the middle of its claim
            other.begin()
            locked = other.execute(text(
                "SELECT id FROM delivery ORDER BY id LIMIT 2 FOR UPDATE")).scalars().all()
            claimed = make_sender(app).claim()
            assert len(claimed) == 1 and claimed[0].id not in locked
            other.rollback()
    finally:
        app.dispose()


# --- a real Postfix as the relay -----------------------------------------------------------

async def test_postfix_relays_to_the_sink(tmp_path: Path, db_url: str, sink: Sink) -> None:
    try:
        from tests.postfix import Postfix
    except ImportError:  # pragma: no cover - the shared helper ships with the inbound tests
        pytest.skip("tests/postfix.py (the throwaway Postfix helper) is missing")
    postfix = Postfix({
        "relayhost": f"[127.0.0.1]:{sink.port}",
        "smtp_dns_support_level": "disabled",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "message_size_limit": "52428800",
    })
    postfix.start()
    app = relay_app(tmp_path, db_url, postfix.port, FixedClock(datetime.now(UTC)))
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        assert await make_sender(app).drain() == 3
        assert {r.status for r in deliveries(app).values()} == {"sent"}
        arrived = await asyncio.to_thread(wait_for, lambda: len(sink.handler.received) >= 3,
                                          60.0)
        assert arrived, postfix.read_log()[-3000:]
        assert sorted(sink.addresses()) == sorted(MEMBERS)
        for mail_from, _, data in sink.handler.received:
            assert mail_from.startswith("bounces+")  # VERP kept through Postfix
            message = email.message_from_bytes(data)
            assert message["Received"] and "mx.test.localhost" in message["Received"]
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    finally:
        app.dispose()
        postfix.stop()


async def test_relay_auth_with_password_from_the_environment(
        tmp_path: Path, db_url: str, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from tests.test_outbound_support import SinkHandler

    seen: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, data):  # type: ignore[no-untyped-def]
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"causerie", b"s3cret")
        if isinstance(data, LoginPassword):
            seen.append((data.login, data.password))
        return AuthResult(success=ok)

    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            authenticator=authenticator, auth_require_tls=False,
                            auth_required=False)
    controller.start()
    monkeypatch.setenv("RELAY_PASSWORD", "s3cret")
    app = relay_app(tmp_path, db_url, port, clock,
                    'relay_user = "causerie"\nrelay_password_env = "RELAY_PASSWORD"')
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        await make_sender(app).drain()
        assert {r.status for r in deliveries(app).values()} == {"sent"}
        assert seen and seen[0] == (b"causerie", b"s3cret")
        assert len(handler.received) == 3
    finally:
        controller.stop()
        app.dispose()


def test_copies_are_composed_in_slices_bounded_by_bytes(tmp_path: Path, db_url: str,
                                                        clock: FixedClock,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No batch of whole copies sits in memory: a slice stops at SLICE_BYTES."""
    import outbound.sender

    app = relay_app(tmp_path, db_url, free_port(), clock, batch=10)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        sender = make_sender(app)
        claimed = sender.claim()
        assert len(claimed) == 3
        monkeypatch.setattr(outbound.sender, "SLICE_BYTES", 1)
        outgoing, done, rest = sender.compose_slice(claimed)
        assert (len(outgoing), done, len(rest)) == (1, [], 2)
        monkeypatch.setattr(outbound.sender, "SLICE_BYTES", 10 * 1024 * 1024)
        outgoing, done, rest = sender.compose_slice(claimed)
        assert (len(outgoing), rest) == (3, [])
        assert len(sender._contexts) == 1  # the original was parsed once for all copies
    finally:
        app.dispose()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_relay_over_tls(tmp_path: Path, db_url: str, clock: FixedClock,
                              monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """[outbound] relay_tls: STARTTLS, or TLS from the first byte, with the relay's
    certificate checked against the trust store (here the test CA, via SSL_CERT_FILE)."""
    import shutil
    import ssl

    from aiosmtpd.controller import Controller

    from tests.dovecot import make_certificate
    from tests.test_outbound_support import SinkHandler

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no test certificate")
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    handler = SinkHandler()
    port = free_port()
    if mode == "starttls":
        controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=context,
                                require_starttls=True)
    else:
        controller = Controller(handler, hostname="127.0.0.1", port=port,
                                ssl_context=context)
    controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    app = relay_app(tmp_path, db_url, port, clock, f'relay_tls = "{mode}"')
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        await make_sender(app).drain()
        assert {r.status for r in deliveries(app).values()} == {"sent"}
        assert len(handler.received) == 3
    finally:
        controller.stop()
        app.dispose()
