"""Outbound fan-out: one post to N members into a sink SMTP server on loopback.

    .venv/bin/python bench/fanout.py [--members 10000] [--url DATABASE_URL] [--sink auto]

In one run, against the same sink:

1. **plain loop** (the limit): one aiosmtplib connection sending N copies of one
   pre-composed message, composing nothing, recording nothing;
2. **Causerie, DKIM off**: the fan-out's N delivery rows claimed, composed per recipient
   (footers in the recipient's language, tokens, list headers), sent in batches of
   `send_batch_size` per connection, and recorded, by the `Sender` of `serve`;
3. **Causerie, DKIM on**: the same rows again, each copy signed (RSA-2048).

The sink is Postfix's `smtp-sink` when installed (it keeps nothing and costs little CPU),
else an aiosmtpd sink in a separate process. RSS is sampled every 0.2 s during each run:
"memory flat" means the resident size does not grow with the number of copies sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from sqlalchemy import insert, update  # noqa: E402

from bridge.app import App  # noqa: E402
from bridge.db import make_engine, upgrade  # noqa: E402
from bridge.fanout import fan_out  # noqa: E402
from bridge.models import (  # noqa: E402
    Address,
    Community,
    Conversation,
    Delivery,
    InboxItem,
    Membership,
    Message,
    Person,
)
from bridge.settings import Settings  # noqa: E402
from outbound.dkim import generate_key  # noqa: E402
from outbound.dmarc import StaticTxtResolver  # noqa: E402
from outbound.sender import Sender  # noqa: E402

DOMAIN = "lists.example.org"
BODY_TEXT = ("Bonjour à tous,\n\nVoici le compte rendu de la réunion de jeudi : "
             "budget, recrutement, feuille de route.\n" + "Ligne de contenu du message. " * 60)
BODY_HTML = "<html><body><p>" + BODY_TEXT.replace("\n", "<br>") + "</p></body></html>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


class RssSampler:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb())
            time.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "-"
        n = len(self.samples)
        quarter = [self.samples[min(n - 1, int(n * f))] for f in (0.1, 0.5, 0.9)]
        return (f"RSS MiB at 10%/50%/90% of the run: {quarter[0]:.0f}/{quarter[1]:.0f}/"
                f"{quarter[2]:.0f}, peak {max(self.samples):.0f}")


def start_sink(kind: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    if kind in ("auto", "smtp-sink") and shutil.which("smtp-sink"):
        args = ["smtp-sink"]
        if os.geteuid() == 0:
            args += ["-u", "postfix"]
        process = subprocess.Popen([*args, "-c", f"127.0.0.1:{port}", "1000"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "postfix smtp-sink"
    else:
        code = textwrap.dedent(f"""
            import time
            from aiosmtpd.controller import Controller
            class Sink:
                async def handle_DATA(self, server, session, envelope):
                    return "250 OK"
            c = Controller(Sink(), hostname="127.0.0.1", port={port})
            c.start()
            time.sleep(10**6)
        """)
        process = subprocess.Popen([sys.executable, "-c", code])
        name = "aiosmtpd sink (separate process)"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, name
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the sink did not start")


def settings_file(folder: Path, url: str, port: int, dkim: Path | None) -> Path:
    path = folder / ("settings-dkim.toml" if dkim else "settings.toml")
    dkim_lines = f'dkim_selector = "bench"\ndkim_key_file = "{dkim}"\n' if dkim else ""
    path.write_text(f"""
[instance]
name = "Bench"
domains = ["{DOMAIN}"]
staff_domains = ["example.com"]
base_url = "https://causerie.example.com"
data_dir = "{folder / 'var'}"

[database]
url = "{url}"

[outbound]
relay_host = "127.0.0.1"
relay_port = {port}
{dkim_lines}""", encoding="utf-8")
    return path


def raw_post() -> bytes:
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Alice Martin <alice@example.com>"
    message["To"] = f"all@{DOMAIN}"
    message["Subject"] = "Compte rendu de la réunion"
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<bench-1@example.com>"
    message.set_content(BODY_TEXT)
    message.add_alternative(BODY_HTML, subtype="html")
    return message.as_bytes()


def populate(app: App, members: int) -> int:
    """A community with `members` members and one post fanned out to them."""
    now = datetime.now(UTC)
    engine = app.engine
    raw = raw_post()
    with engine.begin() as connection:
        community = connection.execute(insert(Community.__table__).values(  # type: ignore[attr-defined]
            slug="all", name="Tout le monde", description="", language="fr",
            visibility="internal", posting_policy="members", admits_guests=False,
            subject_tag="all", reply_to="personal", goals={}, created_at=now)
        ).inserted_primary_key[0]
        people = [{"display_name": f"Member {i}", "language": "fr" if i % 2 else "en",
                   "timezone": "", "kind": None, "digest_time": "", "digest_weekday": "",
                   "own_copies": False, "created_at": now} for i in range(members + 1)]
        connection.execute(insert(Person.__table__), people)  # type: ignore[attr-defined]
        ids = [row[0] for row in connection.exec_driver_sql(
            "SELECT id FROM person ORDER BY id")]
        connection.execute(insert(Address.__table__), [  # type: ignore[attr-defined]
            {"email": "alice@example.com" if n == 0 else f"member{n}@example.com",
             "person_id": pid, "primary": True} for n, pid in enumerate(ids)])
        connection.execute(insert(Membership.__table__), [  # type: ignore[attr-defined]
            {"community_id": community, "person_id": pid, "role": "member",
             "delivery_mode": "each", "duplicate_copies": False, "bounce_score": 0.0,
             "disabled_reason": "", "joined_at": now} for pid in ids])
        inbox = connection.execute(insert(InboxItem.__table__).values(  # type: ignore[attr-defined]
            received_at=now, source="smtp", peer="", helo="", mail_from="alice@example.com",
            rcpt_to=[f"all@{DOMAIN}"], size=len(raw), sha256="0" * 64, raw=raw,
            header_message_id="bench-1@example.com", status="done", kind="post", reason="",
            attempts=0, next_attempt_at=now)).inserted_primary_key[0]
        conversation = connection.execute(insert(Conversation.__table__).values(  # type: ignore[attr-defined]
            community_id=community, subject="Compte rendu", normalized_subject="compte rendu",
            started_at=now, last_activity=now, message_count=1, author_id=ids[0])
        ).inserted_primary_key[0]
        message = connection.execute(insert(Message.__table__).values(  # type: ignore[attr-defined]
            community_id=community, conversation_id=conversation,
            message_id="bench-1@example.com", in_reply_to="", references=[],
            author_id=ids[0], from_address="alice@example.com", from_name="Alice Martin",
            date=now, received_at=now, subject="Compte rendu de la réunion", text=BODY_TEXT,
            quoted="", signature="", html="", language="fr", to_cc=[], inbox_id=inbox,
            status="published", has_attachments=False, redacted_reason="")
        ).inserted_primary_key[0]
        count = fan_out(connection, message_pk=message, community_id=community,
                        conversation_id=conversation, author_id=ids[0], to_cc=[], now=now)
    return count


async def plain_loop(port: int, count: int, data: bytes) -> float:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    started = time.perf_counter()
    for n in range(count):
        await smtp.sendmail(f"bounces@{DOMAIN}", [f"member{n}@example.com"], data)
    elapsed = time.perf_counter() - started
    await smtp.quit()
    return count / elapsed


async def causerie(app: App, count: int) -> float:
    sender = Sender(app, resolver=StaticTxtResolver(), rng=random.Random(1))
    started = time.perf_counter()
    sent = await sender.drain()
    elapsed = time.perf_counter() - started
    if sender.sent != count:
        raise RuntimeError(f"sent {sender.sent} of {count} ({sent} claimed)")
    return count / elapsed


def reset(app: App) -> None:
    table = Delivery.__table__  # type: ignore[attr-defined]
    with app.engine.begin() as connection:
        connection.execute(update(table).values(status="pending", attempts=0,
                                                next_attempt_at=datetime.now(UTC)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--url", default="", help="database URL (default: a SQLite file)")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the three measurements this many times (median)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="causerie-bench-fanout-"))
    url = args.url or f"sqlite:///{folder / 'var' / 'causerie.db'}"
    (folder / "var").mkdir()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    key = folder / "dkim.pem"
    key.write_bytes(generate_key(2048)[0])
    sink, port, sink_name = start_sink(args.sink)
    try:
        app = App(Settings.load(settings_file(folder, url, port, None), environ={}))
        count = populate(app, args.members)
        print(f"{count} deliveries of one post; sink: {sink_name}; database: "
              f"{app.engine.dialect.name}; python {sys.version.split()[0]}; "
              f"{os.cpu_count()} CPUs")
        # One real copy, so the plain loop sends what Causerie sends, minus the work.
        sample = Sender(app, resolver=StaticTxtResolver())
        first = sample.claim()[:1]
        outgoing, _, _ = sample.compose_slice(first)
        data = outgoing[0].data
        reset(app)
        print(f"copy size: {len(data)} bytes; load average before: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        signed = App(Settings.load(settings_file(folder, url, port, key), environ={}))
        backend = Sender(signed, resolver=StaticTxtResolver()).composer.sign
        figures: dict[str, list[float]] = {"loop": [], "off": [], "on": []}
        for round_number in range(1, args.rounds + 1):
            with RssSampler() as rss:
                figures["loop"].append(asyncio.run(plain_loop(port, count, data)))
            print(f"round {round_number}: plain aiosmtplib loop {figures['loop'][-1]:8.0f} "
                  f"messages/s   ({rss.summary()})")
            reset(app)
            with RssSampler() as rss:
                figures["off"].append(asyncio.run(causerie(app, count)))
            print(f"round {round_number}: Causerie, DKIM off    {figures['off'][-1]:8.0f} "
                  f"deliveries/s ({rss.summary()})")
            reset(app)
            with RssSampler() as rss:
                figures["on"].append(asyncio.run(causerie(signed, count)))
            print(f"round {round_number}: Causerie, DKIM on     {figures['on'][-1]:8.0f} "
                  f"deliveries/s (RSA by {getattr(backend, 'backend', '?')}; "
                  f"{rss.summary()})")
        loop, off, on = (statistics.median(figures[k]) for k in ("loop", "off", "on"))
        print(f"median of {args.rounds} rounds: loop {loop:.0f}/s; DKIM off {off:.0f}/s "
              f"= {off / loop:.2f}x the loop (target >= 0.5x); DKIM on {on:.0f}/s "
              f"(target >= 300/s); peak RSS of the process "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        app.dispose()
        signed.dispose()
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
