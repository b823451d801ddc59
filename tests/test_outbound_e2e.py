"""End to end with a real mail client: `causerie serve` runs (SMTP gateway, processor,
sender writing the Maildir outbox, web view); a post goes in by SMTP; mutt opens the
member's copy from a Maildir and answers with its ordinary reply command (`r`, then `y`
to send) through Causerie's SMTP port; the answer lands in the same conversation under the
right person, quotes stripped. The one-click unsubscribe URL of another copy is POSTed to
the running web view."""

from __future__ import annotations

import contextlib
import email
import email.policy
import importlib.util
import os
import pty
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, col
from sqlmodel import select as sql_select

from bridge.app import App
from bridge.models import Membership, Message
from bridge.settings import Settings
from tests.conftest import DOMAIN, free_port, write_settings
from tests.test_outbound_support import make_world, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("inbound.smtp") is None,
                       reason="inbound.smtp (the SMTP gateway of `serve`) is not there yet"),
    pytest.mark.skipif(shutil.which("mutt") is None,
                       reason="mutt is not installed (scripts/install-system-deps installs it)"),
]

MUTTRC = """\
set mbox_type=Maildir
set folder="{home}"
set spoolfile="{box}"
set from="Bob Durand <bob@example.com>"
set use_from=yes
set smtp_url="smtp://127.0.0.1:{port}/"
unset ssl_force_tls
set ssl_starttls=no
set editor="{editor}"
set edit_headers=no
set autoedit=yes
set fast_reply=yes
set include=yes
set reply_to=yes
set askcc=no
set askbcc=no
set record=""
set copy=no
set move=no
set quit=yes
set signature=""
set header_cache=""
set send_charset="us-ascii:utf-8"
set crypt_autosign=no
set crypt_replysign=no
set crypt_replyencrypt=no
set wait_key=no
set beep=no
"""

EDITOR = """#!/bin/sh
# What a person does in their editor: write the answer above the quoted message.
{ printf 'Sounds good to me.\\n\\n'; cat "$1"; } > "$1.new" && mv "$1.new" "$1"
"""


def drive(argv: list[str], env: dict[str, str], steps: list[tuple[bytes, bytes]],
          timeout: float = 60.0) -> bytes:
    """Run a full-screen program on a pseudo-terminal, typing `keys` once `marker` shows."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvpe(argv[0], argv, env)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        for marker, keys in steps:
            while marker not in screen:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{marker!r} never showed: {screen[-1500:]!r}")
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    try:
                        screen += os.read(fd, 65536)
                    except OSError:
                        break
            time.sleep(0.2)
            os.write(fd, keys)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    screen += os.read(fd, 65536)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    return screen


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def running(tmp_path: Path, db_url: str) -> Iterator[tuple[App, int, int, Path]]:
    smtp_port, web_port = free_port(), free_port()
    path = write_settings(tmp_path, db_url, f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}

[web]
host = "127.0.0.1"
port = {web_port}
""")
    env = dict(os.environ, CAUSERIE_INSTANCE__BASE_URL=f"http://127.0.0.1:{web_port}")
    env = {k: v for k, v in env.items() if k != "CAUSERIE_CONFIG"}
    settings = Settings.load(path, environ={"CAUSERIE_INSTANCE__BASE_URL":
                                            f"http://127.0.0.1:{web_port}"})
    subprocess.run([sys.executable, "-m", "bridge", "--config", str(path), "init"],
                   check=True, capture_output=True, env=env, timeout=120)
    app = App(settings)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(path), "serve"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_for(lambda: port_open(smtp_port) and port_open(web_port), 30):
            raise RuntimeError((tmp_path / "serve.log").read_text())
        yield app, smtp_port, web_port, tmp_path
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            if server.poll() is None:
                server.kill()
            log.close()
            app.dispose()


def outbox_copies(app: App) -> dict[str, Path]:
    new = app.settings.outbox_dir / "new"
    if not new.is_dir():
        return {}
    found = {}
    for path in sorted(new.iterdir()):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        found.setdefault(str(message["Delivered-To"]).strip(), path)
    return found


def test_mutt_replies_to_a_delivered_copy_through_causerie(
        running: tuple[App, int, int, Path]) -> None:
    app, smtp_port, web_port, tmp_path = running
    world = make_world(app)
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
        client.sendmail("alice@example.com", [f"rd@{DOMAIN}"], (
            f"From: Alice Martin <alice@example.com>\r\nTo: rd@{DOMAIN}\r\n"
            "Subject: Budget 2027\r\nMessage-ID: <budget-e2e@example.com>\r\n"
            "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n"
            "Hello team,\r\n\r\nThe budget is attached.\r\n").encode())
    assert wait_for(lambda: {"bob@example.com", "claire@example.com"} <= set(
        outbox_copies(app)), 60), (tmp_path / "serve.log").read_text()[-3000:]
    copies = outbox_copies(app)

    # Bob's mailbox: a Maildir holding his copy, as his MDA would have delivered it.
    home = tmp_path / "bob"
    box = home / "Mail"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    shutil.copy(copies["bob@example.com"], box / "new" / copies["bob@example.com"].name)
    editor = home / "editor.sh"
    editor.write_text(EDITOR)
    editor.chmod(0o755)
    muttrc = home / "muttrc"
    muttrc.write_text(MUTTRC.format(home=home, box=box, port=smtp_port, editor=editor))
    env = {"HOME": str(home), "TERM": "xterm", "PATH": os.environ.get("PATH", "/usr/bin"),
           "LANG": "C.UTF-8"}
    screen = drive(["mutt", "-n", "-F", str(muttrc), "-f", str(box)], env,
                   [(b"Budget 2027", b"r"),      # the index shows the copy: reply
                    (b"Compose", b"y"),          # the compose menu: send
                    (b"Mail sent", b"q")])       # back in the index: quit
    assert b"Mail sent" in screen

    def reply() -> Message | None:
        with Session(app.engine) as session:
            rows = session.exec(sql_select(Message).order_by(col(Message.id))).all()
            return rows[1] if len(rows) > 1 else None

    assert wait_for(lambda: reply() is not None, 60), (tmp_path / "serve.log").read_text()[-3000:]
    answer = reply()
    with Session(app.engine) as session:
        original = session.exec(sql_select(Message).order_by(col(Message.id))).first()
    assert answer is not None and original is not None
    assert answer.conversation_id == original.conversation_id
    assert answer.author_id == world.people["bob@example.com"]
    assert answer.in_reply_to == "budget-e2e@example.com"
    assert answer.text.strip() == "Sounds good to me."
    assert "Hello team" not in answer.text and ">" not in answer.text
    assert "Unsubscribe" not in answer.text  # our footer was quoted: stripped too

    # The reply is delivered to the others as a copy threaded under the original.
    def reply_copies() -> list[email.message.Message]:
        new = app.settings.outbox_dir / "new"
        found = []
        for path in new.iterdir():
            message = email.message_from_bytes(path.read_bytes())
            if message["In-Reply-To"] == "<budget-e2e@example.com>":
                found.append(message)
        return found

    assert wait_for(lambda: len(reply_copies()) >= 2, 60)
    assert {m["Delivered-To"] for m in reply_copies()} >= {"alice@example.com",
                                                           "claire@example.com"}

    # One-click unsubscribe against the running web view, from Claire's copy.
    claire_copy = email.message_from_bytes(copies["claire@example.com"].read_bytes())
    url = next(part.strip(" <>") for part in claire_copy["List-Unsubscribe"].split(",")
               if "http" in part)
    assert url.startswith(f"http://127.0.0.1:{web_port}/u/")
    response = httpx.post(url, content="List-Unsubscribe=One-Click", timeout=30,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    with Session(app.engine) as session:
        remaining = {m.person_id for m in session.exec(sql_select(Membership)).all()}
    assert world.people["claire@example.com"] not in remaining
    assert world.people["bob@example.com"] in remaining
