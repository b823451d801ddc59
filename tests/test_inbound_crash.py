"""Durable acceptance: a message that got "250" survives SIGKILL of the server at any moment.

A burst of 500 messages from several SMTP clients; `causerie serve` is killed with SIGKILL in
the middle; it is restarted and the clients, like an MTA, retry what was not acknowledged.
Every acknowledged message is archived exactly once, and so is every retried one.
"""

from __future__ import annotations

import contextlib
import smtplib
import threading
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from bridge.app import App
from bridge.cli import main
from bridge.models import InboxItem, Message
from bridge.settings import Settings
from tests.conftest import DOMAIN, STAFF_DOMAIN, free_port, write_settings
from tests.servers import ServeProcess, wait_for

TOTAL = 500
CLIENTS = 5


def _message(number: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"alice@{STAFF_DOMAIN}"
    message["To"] = f"rd@{DOMAIN}"
    message["Subject"] = f"Burst {number}"
    message["Message-ID"] = f"<burst-{number}@example.com>"
    message.set_content(f"Message number {number} of the burst.\n" + "lorem ipsum dolor\n" * 200)
    return message.as_bytes()


def _send(port: int, numbers: list[int], acknowledged: set[int], lock: threading.Lock,
          stop_after: threading.Event | None) -> None:
    client: smtplib.SMTP | None = None
    for number in numbers:
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            client.sendmail(f"alice@{STAFF_DOMAIN}", [f"rd@{DOMAIN}"], _message(number))
        except (OSError, smtplib.SMTPException):
            client = None
            if stop_after is not None:
                return  # the server is gone: the rest waits for the retry
            continue
        with lock:
            acknowledged.add(number)
    if client is not None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()


def _burst(port: int, numbers: list[int], acknowledged: set[int],
           on_progress: threading.Event | None = None) -> None:
    lock = threading.Lock()
    threads = [threading.Thread(target=_send, args=(port, numbers[i::CLIENTS], acknowledged,
                                                    lock, on_progress))
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_sigkill_during_a_burst_loses_and_duplicates_nothing(tmp_path: Path,
                                                             db_url: str) -> None:
    port = free_port()
    path = write_settings(tmp_path, db_url, f"[smtp]\nport = {port}\n"
                                            f"[web]\nport = {free_port()}\n")
    config = ["--config", str(path)]
    assert main([*config, "community", "create", "rd", "--name", "R&D"]) == 0
    assert main([*config, "member", "add", "rd", f"alice@{STAFF_DOMAIN}"]) == 0
    server = ServeProcess(path, tmp_path / "serve.log")
    server.start()
    acknowledged: set[int] = set()
    killer_done = threading.Event()

    def killer() -> None:
        wait_for(lambda: len(acknowledged) >= TOTAL // 3, 60, 0.005)
        server.kill()
        killer_done.set()

    watcher = threading.Thread(target=killer)
    watcher.start()
    _burst(port, list(range(TOTAL)), acknowledged, killer_done)
    watcher.join(60)
    assert killer_done.is_set()
    before_restart = set(acknowledged)
    assert TOTAL // 3 <= len(before_restart) < TOTAL, "the kill should land mid-burst"

    server.start()
    try:
        missing = [n for n in range(TOTAL) if n not in acknowledged]
        # An MTA retries what it had not seen acknowledged, and some of what it had
        # (a "250" lost on the wire): resend a few acknowledged ones too.
        _burst(port, missing + sorted(before_restart)[:20], acknowledged)
        assert acknowledged == set(range(TOTAL))
        app = App(Settings.load(path, environ={}))

        def all_processed() -> bool:
            with Session(app.engine) as session:
                pending = session.exec(select(func.count()).select_from(InboxItem).where(
                    InboxItem.status.in_(("pending", "failed")))).one()  # type: ignore[attr-defined]
            return pending == 0

        try:
            wait_for(all_processed, 120, 0.2)
            with Session(app.engine) as session:
                ids = session.exec(select(Message.message_id)).all()
        finally:
            app.dispose()
    finally:
        server.stop()
    expected = {f"burst-{n}@example.com" for n in range(TOTAL)}
    assert len(ids) == len(set(ids)), "a message was archived twice"
    assert set(ids) == expected, f"lost: {sorted(expected - set(ids))[:10]}"
