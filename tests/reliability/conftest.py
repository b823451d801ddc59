"""Shared pieces of the reliability tests (issue 9) and of `bench/soak`.

An `Instance` is one configured Causerie (settings file, a public community "rd" whose
members take every post by email, no relay: deliveries land in the outbox Maildir) run as
a child process (`tests.servers.ServeProcess`) so that it can be SIGKILLed. The load
drivers (`smtp-source`, web searches, RSS samples) run beside it and only measure; the
assertions read the database, which is the truth a crash must not corrupt.

Every process, mount and database cluster started here is stopped by the fixture or the
context manager that started it, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import smtplib
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from bridge.app import App
from bridge.cli import main
from bridge.models import Delivery, InboxItem, Message
from bridge.settings import Settings
from outbound.sender import LEASE
from tests.conftest import DOMAIN, STAFF_DOMAIN, free_port, write_settings
from tests.servers import ServeProcess, wait_for
from tests.test_inbound_crash import _burst

SENDER = f"alice@{STAFF_DOMAIN}"
LIST = f"rd@{DOMAIN}"
MEMBERS = 3  # besides the sender, each taking every post ("each")
SEARCH_WORDS = ("lorem", "burst", "message", "quarter", "budget", "number")

# Figures printed in the terminal summary of the test run (see pytest_terminal_summary).
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The measured figures, shown even when the tests pass (the point is to read them)."""
    if FIGURES:
        terminalreporter.section("reliability figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


# --- one instance -----------------------------------------------------------------------------

class Instance:
    """A Causerie configured in `root`, served by a child process (see module docstring)."""

    def __init__(self, root: Path, db_url: str, extra: str = "", members: int = MEMBERS,
                 data_dir: Path | None = None) -> None:
        self.root = root
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.settings_path = write_settings(
            root, db_url, f"[smtp]\nport = {self.smtp_port}\n[web]\nport = {self.web_port}\n"
                          + extra)
        if data_dir is not None:  # a separate filesystem (the disk-full test)
            text = self.settings_path.read_text(encoding="utf-8")
            self.settings_path.write_text(
                text.replace('data_dir = "var"', f'data_dir = "{data_dir}"'), encoding="utf-8")
        config = ["--config", str(self.settings_path)]
        assert main([*config, "init"]) == 0  # idempotent: data dir, secret, schema
        assert main([*config, "community", "create", "rd", "--name", "R&D",
                     "--visibility", "public"]) == 0
        assert main([*config, "member", "add", "rd", SENDER, "--delivery", "none"]) == 0
        for number in range(members):
            assert main([*config, "member", "add", "rd", f"m{number}@{STAFF_DOMAIN}",
                         "--delivery", "each"]) == 0
        self.members = members
        self.server = ServeProcess(self.settings_path, root / "serve.log")
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(Settings.load(self.settings_path, environ={}))
        return self._app

    @property
    def pid(self) -> int | None:
        process = self.server.process
        return process.pid if process is not None and process.poll() is None else None

    def close(self) -> None:
        self.server.stop()
        if self._app is not None:
            self._app.dispose()
            self._app = None

    def log_tail(self, size: int = 4000) -> str:
        path = self.root / "serve.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    # --- what the database says ---------------------------------------------------------------

    def archived_ids(self) -> list[str]:
        """Message-IDs of archived messages, one entry per row (duplicates show twice)."""
        with self.app.engine.connect() as connection:
            return list(connection.execute(select(Message.__table__.c.message_id)).scalars())

    def inbox_waiting(self) -> int:
        with self.app.engine.connect() as connection:
            table = InboxItem.__table__
            return int(connection.execute(select(func.count()).select_from(table).where(
                table.c.status.in_(("pending", "failed")))).scalar_one())

    def delivery_statuses(self) -> dict[str, int]:
        with self.app.engine.connect() as connection:
            table = Delivery.__table__
            rows = connection.execute(select(table.c.status, func.count())
                                      .group_by(table.c.status)).all()
        return {str(status): int(count) for status, count in rows}

    def post_deliveries(self) -> int:
        with self.app.engine.connect() as connection:
            table = Delivery.__table__
            return int(connection.execute(select(func.count()).select_from(table)
                                          .where(table.c.kind == "post")).scalar_one())

    def lags(self) -> tuple[list[float], list[float]]:
        """Seconds from acceptance to processing, and from acceptance to the delivery's send."""
        inbox, message, delivery = InboxItem.__table__, Message.__table__, Delivery.__table__
        with self.app.engine.connect() as connection:
            processed = connection.execute(select(inbox.c.received_at, inbox.c.processed_at)
                                           .where(inbox.c.processed_at.is_not(None))).all()
            sent = connection.execute(
                select(inbox.c.received_at, delivery.c.sent_at)
                .join(message, message.c.inbox_id == inbox.c.id)
                .join(delivery, delivery.c.message_id == message.c.id)
                .where(delivery.c.sent_at.is_not(None))).all()
        return ([_seconds(a, b) for a, b in processed], [_seconds(a, b) for a, b in sent])

    def deliveries_waiting(self, since: datetime | None = None) -> int:
        """Pending deliveries that the running sender still owes.

        Without `since`, every pending row. With `since` (when the last serve was started),
        rows leased by a serve killed before then are left out: the sender leases what it
        claims for ten minutes (`outbound.sender.LEASE`), so a row claimed and not recorded
        by a killed process is due again only ten minutes later. Such a row is pending, not
        lost; it is sent when its lease expires.
        """
        table = Delivery.__table__
        query = select(func.count()).select_from(table).where(table.c.status == "pending")
        if since is not None:
            soon = self.app.clock.now() + timedelta(minutes=1)
            query = query.where((table.c.next_attempt_at < soon)
                                | (table.c.next_attempt_at >= since + LEASE))
        with self.app.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def outbox_files(self) -> int:
        folder = self.app.settings.instance.data_dir / "outbox" / "new"
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def wait_until_drained(self, timeout: float = 120, since: datetime | None = None) -> None:
        """Every inbox row processed and every delivery sent (no relay: the Maildir), except
        those still leased by a sender killed before `since` (see `deliveries_waiting`)."""
        def drained() -> bool:
            return self.inbox_waiting() == 0 and self.deliveries_waiting(since) == 0
        try:
            wait_for(drained, timeout, 0.2)
        except AssertionError:
            raise AssertionError(f"not drained: {self.delivery_statuses()}, "
                                 f"{self.inbox_waiting()} inbox rows waiting\n"
                                 + self.log_tail()) from None


def _seconds(start: datetime, end: datetime) -> float:
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return (end - start).total_seconds()


@pytest.fixture
def instance_factory(tmp_path: Path) -> Iterator[list[Instance]]:
    """Instances made by a test, stopped (processes) and disposed (engines) after it."""
    made: list[Instance] = []
    yield made
    for instance in made:
        instance.close()


# --- load drivers -----------------------------------------------------------------------------

class Feeder:
    """Numbered messages (`tests.test_inbound_crash._message`) at about `rate` a second from
    five SMTP clients, each recording which numbers got their "250", while `up` is set.

    While `serve` is down the test clears `up` and the clients wait, as an MTA's queue does,
    instead of burning through numbers that would all be retried at the end.
    """

    chunk = 50

    def __init__(self, instance: Instance, rate: float) -> None:
        self.instance = instance
        self.rate = rate
        self.acknowledged: set[int] = set()
        self.attempted = 0
        self.up = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self.up.set()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.up.wait(0.2):
                continue
            numbers = list(range(self.attempted, self.attempted + self.chunk))
            self.attempted += self.chunk
            started = time.monotonic()
            _burst(self.instance.smtp_port, numbers, self.acknowledged)
            self.stop.wait(max(0.0, self.chunk / self.rate - (time.monotonic() - started)))

    def retry(self, also_acknowledged: int = 10) -> tuple[int, int]:
        """Resend, like an MTA, what got no "250" (and a few that did: a "250" lost on the
        wire); returns how many of each."""
        missing = [n for n in range(self.attempted) if n not in self.acknowledged]
        again = sorted(self.acknowledged)[:also_acknowledged]
        _burst(self.instance.smtp_port, missing + again, self.acknowledged)
        return len(missing), len(again)

    def expected_ids(self) -> set[str]:
        return {burst_id(n) for n in range(self.attempted)}


def burst_id(number: int) -> str:
    return f"burst-{number}@example.com"


def smtp_reply(port: int, raw: bytes, rcpt: str = LIST) -> int:
    """The SMTP code the server finally answers for one message (250, or the refusal)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(SENDER, [rcpt], raw)
    except smtplib.SMTPRecipientsRefused as exc:
        return int(exc.recipients[rcpt][0])
    except smtplib.SMTPResponseException as exc:
        return int(exc.smtp_code)
    return 250


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values):.2f} s, p95 {percentile(values, 0.95):.2f} s, "
            f"max {max(values):.2f} s")


def smtp_source(port: int, messages: int, sessions: int, size: int = 4096,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Postfix's `smtp-source`: `sessions` concurrent clients sending `messages` in all.

    It stops with a non-zero status at the first reply it did not expect (anything but
    2xx/3xx), so a zero status means every message got its "250".
    """
    return subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
         "-f", SENDER, "-t", LIST, "-M", "load.example.com", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=timeout)


def have_smtp_source() -> str:
    return "" if shutil.which("smtp-source") else \
        "smtp-source not installed (Postfix; scripts/install-system-deps installs it)"


@dataclass
class Searcher:
    """Web searches against the running serve, in a thread, measuring each request."""

    port: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Searcher:
        self.thread = threading.Thread(target=self._run, name="searcher", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def _run(self) -> None:
        rng = random.Random(9)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.get("/search", params={"q": rng.choice(SEARCH_WORDS)})
                except httpx.HTTPError as exc:  # the server is being killed: not measured
                    self.errors.append(type(exc).__name__)
                    self.stop.wait(0.2)
                    continue
                if response.status_code == 200:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.errors.append(str(response.status_code))
                self.stop.wait(0.05)


@dataclass
class RssSampler:
    """The resident size of the serve process, sampled every `interval` seconds."""

    instance: Instance
    interval: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, KiB)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            rss = rss_kib(self.instance.pid)
            if rss:
                self.samples.append((time.monotonic() - self.started, rss))

    def text(self, every: int = 1) -> str:
        return ", ".join(f"{t:.0f}s {kib / 1024:.0f} MiB" for t, kib in self.samples[::every])


def rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- a throwaway PostgreSQL cluster -----------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(PG_BIN.glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else ""


class ThrowawayPostgres:
    """A PostgreSQL cluster of our own (initdb into a temporary folder, its own free port).

    The database-down test stops and starts *this* cluster; the machine's PostgreSQL on
    5432, which other tests use at the same time, is never touched. The server runs as the
    `postgres` user (it refuses root), via `runuser -u postgres --`.
    """

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="causerie-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/causerie"

    @staticmethod
    def unavailable() -> str:
        """'' when a cluster can be made here, else why not (for pytest.skip)."""
        if not _pg_tool("initdb") or not _pg_tool("pg_ctl"):
            return "PostgreSQL server binaries (initdb, pg_ctl) not installed"
        if os.geteuid() != 0 or not shutil.which("runuser"):
            return "needs root and runuser to run initdb/pg_ctl as the postgres user"
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            return "no `postgres` system user"
        return ""

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, text=True, timeout=120)

    def create(self) -> None:
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")
        self.start()
        self._as_postgres(_pg_tool("createdb") or "createdb", "-h", "127.0.0.1",
                          "-p", str(self.port), "-U", "postgres", "causerie")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off")
        self._as_postgres(self.pg_ctl, "-D", str(self.data), "-l", str(self.log),
                          "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the server goes away."""
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w",
                              "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    reason = ThrowawayPostgres.unavailable()
    if reason:
        pytest.skip(reason)
    cluster = ThrowawayPostgres()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.close()


# --- a small filesystem for the data directory ------------------------------------------------

@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on a temporary folder (root only), unmounted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="causerie-full-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                             "tmpfs", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
