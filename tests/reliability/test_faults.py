"""Faults: what happens to accepted mail when the pieces around `serve` fail.

- SIGKILL of `serve` at random moments during load: every message that got "250" is
  archived exactly once (also after the MTA-like retry of what got no answer), and every
  delivery row is sent or pending (pending only under the lease of a killed sender).
- The database unavailable (a throwaway PostgreSQL cluster of this test, stopped and
  started; never the machine's own server): SMTP answers 451 while it is down, and
  everything resumes after.
- The relay down (a closed port), then a sink appears there: every delivery arrives.
- The disk of the data directory full (a small tmpfs): 452/451, nothing half-written.
- The IMAP server drops (the throwaway Dovecot stopped and started while it is polled):
  each message is ingested once.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import random
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from bridge.models import Delivery, InboxItem
from tests import dovecot
from tests.conftest import STAFF_DOMAIN
from tests.reliability.conftest import (
    FIGURES,
    LIST,
    SENDER,
    Feeder,
    Instance,
    Searcher,
    ThrowawayPostgres,
    burst_id,
    small_filesystem,
    smtp_reply,
)
from tests.servers import wait_for
from tests.test_inbound_crash import _message
from tests.test_outbound_support import Sink

KILLS = 3


def _sqlite(tmp_path: Path) -> str:
    (tmp_path / "var").mkdir(exist_ok=True)
    return f"sqlite:///{tmp_path / 'var' / 'causerie.db'}"


def _exactly_once(instance: Instance, expected: set[str]) -> None:
    ids = instance.archived_ids()
    duplicated = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not duplicated, f"archived more than once: {duplicated[:10]}"
    assert set(ids) == expected, (f"lost: {sorted(expected - set(ids))[:10]}, "
                                  f"unexpected: {sorted(set(ids) - expected)[:10]}")


def _retry_due_now(instance: Instance) -> None:
    """Make what failed temporarily due now, as if its backoff (a minute and more) had
    passed: the tests do not wait for real backoffs. Rows leased by a running sender
    (no error recorded) are left alone."""
    now = instance.app.clock.now()
    delivery, inbox = Delivery.__table__, InboxItem.__table__
    with instance.app.engine.begin() as connection:
        connection.execute(update(delivery).where(delivery.c.status == "pending",
                                                  delivery.c.last_error != "")
                           .values(next_attempt_at=now))
        connection.execute(update(inbox).where(inbox.c.status == "failed")
                           .values(next_attempt_at=now))


# --- SIGKILL ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_random_moments_during_load_loses_and_duplicates_nothing(
        instance_factory: list[Instance], tmp_path: Path, db_url: str) -> None:
    seed = int(os.environ.get("CAUSERIE_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    instance = Instance(tmp_path, db_url)
    instance_factory.append(instance)
    instance.server.start()
    since = instance.app.clock.now()
    with Searcher(instance.web_port), Feeder(instance, rate=40) as feeder:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 3.5))
            instance.server.kill()
            feeder.up.clear()
            time.sleep(rng.uniform(0, 0.5))
            since = instance.app.clock.now()
            instance.server.start()
            feeder.up.set()
        time.sleep(1)
    acknowledged = set(feeder.acknowledged)
    missing, again = feeder.retry()
    instance.wait_until_drained(180, since=since)
    assert feeder.acknowledged == set(range(feeder.attempted))
    _exactly_once(instance, feeder.expected_ids())
    statuses = instance.delivery_statuses()
    assert set(statuses) <= {"sent", "pending"}, statuses
    assert instance.post_deliveries() == feeder.attempted * instance.members
    FIGURES.append(f"kills [{db_url.split(':', 1)[0]}]: {KILLS} SIGKILLs (seed {seed}), "
                   f"{feeder.attempted} messages, {len(acknowledged)} acknowledged before the "
                   f"retry, {missing} resent unacknowledged + {again} acknowledged: 0 lost, "
                   f"0 duplicated; deliveries {statuses} (pending = leased by a killed "
                   f"sender), {instance.outbox_files()} files in the outbox")


# --- the database down --------------------------------------------------------------------------

@pytest.mark.slow
def test_database_down_smtp_answers_451_and_everything_resumes(
        throwaway_postgres: ThrowawayPostgres, instance_factory: list[Instance],
        tmp_path: Path) -> None:
    instance = Instance(tmp_path, throwaway_postgres.url)
    instance_factory.append(instance)
    instance.server.start()
    assert smtp_reply(instance.smtp_port, _message(0)) == 250
    wait_for(lambda: instance.archived_ids() == [burst_id(0)], 30)

    throwaway_postgres.stop()
    instance.app.engine.dispose()
    codes = [smtp_reply(instance.smtp_port, _message(n)) for n in (1, 2, 3)]
    assert codes == [451, 451, 451], codes
    time.sleep(2)  # the processor, sender and scheduler meet the outage too
    assert instance.pid is not None, "serve died while the database was down\n" \
        + instance.log_tail()

    throwaway_postgres.start()
    # Its pooled connections are dead: the first attempt after the restart may still be
    # refused (451 again, never accepted and lost); the MTA retries.
    wait_for(lambda: smtp_reply(instance.smtp_port, _message(1)) == 250, 60, 1.0)
    assert [smtp_reply(instance.smtp_port, _message(n)) for n in (2, 3)] == [250, 250]
    instance.wait_until_drained(60)
    _exactly_once(instance, {burst_id(n) for n in range(4)})
    assert instance.delivery_statuses() == {"sent": 4 * instance.members}
    FIGURES.append("database down: SMTP answered 451 x3 while PostgreSQL was stopped; "
                   "after its restart all 4 messages archived once, 12 deliveries sent")


# --- the relay down -----------------------------------------------------------------------------

@pytest.mark.slow
def test_relay_down_then_back_every_delivery_arrives(instance_factory: list[Instance],
                                                     tmp_path: Path) -> None:
    sink = Sink()  # its port is chosen now; nothing listens there until `with sink`
    instance = Instance(tmp_path, _sqlite(tmp_path),
                        f'[outbound]\nrelay_host = "127.0.0.1"\nrelay_port = {sink.port}\n')
    instance_factory.append(instance)
    instance.server.start()
    total = 10
    assert [smtp_reply(instance.smtp_port, _message(n)) for n in range(total)] == [250] * total

    def all_tried() -> bool:
        delivery = Delivery.__table__
        with instance.app.engine.connect() as connection:
            rows = connection.execute(select(delivery.c.status, delivery.c.last_error)).all()
        return len(rows) == total * instance.members and all(
            status == "pending" and error for status, error in rows)

    wait_for(all_tried, 60, 0.2)
    with sink:
        _retry_due_now(instance)
        wait_for(lambda: instance.delivery_statuses() == {"sent": total * instance.members},
                 60, 0.2)
    addresses = collections.Counter(sink.addresses())
    assert addresses == {f"m{n}@{STAFF_DOMAIN}": total for n in range(instance.members)}
    FIGURES.append(f"relay down: {total * instance.members} deliveries kept pending while the "
                   "relay port was closed; all arrived once when the sink came up")


# --- the disk full ------------------------------------------------------------------------------

def _large(number: int) -> bytes:
    """A message above `inline_raw_limit` (256 KiB): its raw bytes go to the content store."""
    message = EmailMessage()
    message["From"], message["To"] = SENDER, LIST
    message["Subject"], message["Message-ID"] = f"Large {number}", f"<{burst_id(number)}>"
    message.set_content("A large report.\n" + "0123456789abcdef" * 20000)
    return message.as_bytes(policy=SMTP)  # CRLF: smtplib sends bytes as they are


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError), filler.open("ab") as handle:  # the last few bytes
        while True:
            handle.write(b"\0")
            handle.flush()
    return filler


@pytest.mark.slow
def test_disk_full_answers_452_or_451_and_leaves_nothing_half_written(
        instance_factory: list[Instance], tmp_path: Path) -> None:
    with small_filesystem("32m") as data:
        instance = Instance(tmp_path, f"sqlite:///{data / 'causerie.db'}", data_dir=data)
        instance_factory.append(instance)
        try:
            instance.server.start()
            assert smtp_reply(instance.smtp_port, _message(0)) == 250
            assert smtp_reply(instance.smtp_port, _large(1)) == 250
            instance.wait_until_drained(60)

            filler = _fill(data)
            large, small = (smtp_reply(instance.smtp_port, _large(2)),
                            smtp_reply(instance.smtp_port, _message(3)))
            assert large == 452, large      # the content store meets ENOSPC
            assert small in (451, 452), small  # SQLite: "database or disk is full"
            assert instance.pid is not None, instance.log_tail()
            leftovers = [p for p in data.rglob(".tmp-*")]
            assert not leftovers, f"half-written blobs: {leftovers}"

            filler.unlink()
            wait_for(lambda: smtp_reply(instance.smtp_port, _large(2)) == 250, 30, 0.5)
            assert smtp_reply(instance.smtp_port, _message(3)) == 250
            _retry_due_now(instance)
            instance.wait_until_drained(60)
            _exactly_once(instance, {burst_id(n) for n in range(4)})
            with instance.app.engine.connect() as connection:
                assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
                rows = connection.execute(select(InboxItem.__table__.c.sha256,
                                                 InboxItem.__table__.c.raw)).all()
            for digest, raw in rows:  # every row's bytes whole, inline or in the store
                stored = raw if raw is not None else instance.app.blobs.get(digest)
                assert hashlib.sha256(stored).hexdigest() == digest
            assert not list(data.rglob(".tmp-*"))
        finally:
            instance.close()  # before the tmpfs is unmounted
    FIGURES.append(f"disk full: {large} for a large message (content store), {small} for a "
                   "small one (SQLite); after space came back all 4 archived once, integrity "
                   "ok, no temporary file left")


# --- the IMAP server drops ----------------------------------------------------------------------

@pytest.mark.slow
def test_imap_server_drops_each_message_ingested_once(instance_factory: list[Instance],
                                                      tmp_path: Path) -> None:
    reason = dovecot.available()
    if reason:
        pytest.skip(reason)
    server = dovecot.Dovecot(tmp_path / "dovecot")
    server.add_user("team", "secret-team")
    password = tmp_path / "team.password"
    password.write_text("secret-team\n", encoding="utf-8")
    rng = random.Random(7)
    try:
        server.start()
        instance = Instance(tmp_path, _sqlite(tmp_path), (
            f'[[imap.mailbox]]\nname = "team"\nhost = "127.0.0.1"\nport = {server.port}\n'
            f'tls = "none"\nuser = "team"\npassword_file = "{password}"\n'
            f'poll_interval = 5\nafter = "seen"\n'))
        instance_factory.append(instance)
        instance.server.start()
        rounds, per_round = 3, 10
        for round_ in range(rounds):
            numbers = range(round_ * per_round, (round_ + 1) * per_round)
            server.append("team", "secret-team", [_message(n) for n in numbers])
            time.sleep(rng.uniform(0.0, 0.6))  # the poller is fetching, or about to
            server.stop()
            time.sleep(1.5)
            server.start()
        expected = {burst_id(n) for n in range(rounds * per_round)}
        wait_for(lambda: set(instance.archived_ids()) == expected, 90, 0.5)
        instance.wait_until_drained(60)
        _exactly_once(instance, expected)
        with instance.app.engine.connect() as connection:
            sources = connection.execute(select(InboxItem.__table__.c.source)).scalars().all()
        assert len(sources) == len(expected) and set(sources) == {"imap"}, sources
    except BaseException:
        print(server.log()[-3000:])
        raise
    finally:
        server.close()
    FIGURES.append(f"IMAP drops: Dovecot stopped {rounds} times while polled; "
                   f"{len(expected)} messages ingested once each")

