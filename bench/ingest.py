"""Inbound benchmark: acceptance over SMTP, and processing into conversations.

Measures in one run, on the same messages:
  (a) a bare aiosmtpd server that answers 250 and keeps nothing (the baseline);
  (b) Causerie's durable acceptance (recipient check, group commit to SQLite before 250);
  (c) processing stored mail into archived conversations on one core, for a realistic mix
      (plain, HTML replies, French, Outlook header blocks, attachments).

The SMTP load comes from Postfix's `smtp-source` (C, in its own process) with several
parallel sessions, one message per connection. (a) and (b) alternate for several rounds at
each session count, and the medians are compared, so that other load on the machine
touches both alike.

Group commit needs concurrency: with few sessions each one waits for its own fsync (about
2.6 ms on the reference machine's disk), so the ratio is shown for several session counts
(Postfix delivers to one destination over up to 20 parallel connections by default).

    .venv/bin/python bench/ingest.py [--messages 5000] [--sessions 8 20 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.app import App  # noqa: E402
from bridge.db import upgrade  # noqa: E402
from bridge.directory import add_member, create_community  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from inbound.processor import Processor  # noqa: E402
from inbound.smtp import ClientLimits, GatewayHandler, LimitedSMTP  # noqa: E402
from inbound.store import Envelope, InboxWriter  # noqa: E402

DOMAIN = "lists.example.org"


class BareHandler:
    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        return "250 OK"


def serve_in_thread(factory, port: int) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port))
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    return loop, thread


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    start = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", "alice@example.com", "-t", f"rd@{DOMAIN}", f"127.0.0.1:{port}"],
                   check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_app(folder: Path) -> App:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.toml"
    path.write_text(f'[instance]\ndomains = ["{DOMAIN}"]\nstaff_domains = ["example.com"]\n'
                    f'data_dir = "var"\n', encoding="utf-8")
    app = App(Settings.load(path, environ={}))
    upgrade(app.engine)
    with app.session() as session:
        community = create_community(session, "rd", "R&D", policy="open")
        for name in ("alice", "bob", "carol", "dan", "eve"):
            add_member(session, community, f"{name}@example.com", name=name.title())
    return app


def bench_bare(messages: int, sessions: int, size: int) -> float:
    port = free_port()
    loop, thread = serve_in_thread(lambda: SMTP(BareHandler(), data_size_limit=None), port)
    try:
        elapsed = smtp_source(port, messages, sessions, size)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return messages / elapsed


def bench_durable(app: App, messages: int, sessions: int, size: int) -> float:
    port = free_port()
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    handler = GatewayHandler(app.router(), writer, app.settings.smtp,
                             ClientLimits(10_000, 10_000_000))

    def factory() -> SMTP:
        server = LimitedSMTP(handler, hostname=DOMAIN, data_size_limit=10_000_000)
        server.limits = handler.limits
        server.max_size = 10_000_000
        return server

    loop, thread = serve_in_thread(factory, port)
    asyncio.run_coroutine_threadsafe(writer.start(), loop).result(10)
    try:
        elapsed = smtp_source(port, messages, sessions, size)
    finally:
        asyncio.run_coroutine_threadsafe(writer.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    with app.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*) FROM inboxitem").scalar()
    assert stored == messages, f"{stored} of {messages} stored"
    return messages / elapsed


# --- the realistic mix for processing -----------------------------------------------------

GMAIL_HTML = """<div dir="ltr">Sounds good, I'll prepare the slides for {topic}.<br><br>Best,
<br>Bob</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Nov 24,
2026 at 9:12 AM Alice &lt;alice@example.com&gt; wrote:<br></div><blockquote class="gmail_quote"
style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex">
<div dir="ltr">Can someone present {topic} on Thursday?</div></blockquote></div>"""

FRENCH = """Bonjour à tous,

Je vous propose une réunion sur {topic} jeudi prochain. Merci de me dire si le créneau
de 14 h vous convient, sinon je proposerai une autre date.

Cordialement,
Claire

Le mar. 24 nov. 2026 à 09:12, Alice <alice@example.com> a écrit :
> Qui peut présenter {topic} ?
> Merci
"""

OUTLOOK_FR = """Merci, c'est noté pour {topic}.

De : Alice Martin <alice@example.com>
Envoyé : mardi 24 novembre 2026 09:12
À : rd@lists.example.org
Objet : {topic}

Qui s'en occupe ?
"""

PLAIN = """Hi all,

Here are my notes on {topic}. The measurements are in the shared folder; the
regression shows up only with the large data set, so please run the full suite
before merging anything that touches the parser.

Thanks,
Dan
--
Dan Smith, R&D
"""


def realistic_mix(count: int) -> list[bytes]:
    topics = ["the parser", "Q3 budget", "the new CI", "customer visit", "the release"]
    messages = []
    for number in range(count):
        topic = topics[number % len(topics)]
        message = EmailMessage()
        message["From"] = ["alice@example.com", "bob@example.com", "carol@example.com",
                           "dan@example.com"][number % 4]
        message["To"] = f"rd@{DOMAIN}"
        message["Message-ID"] = f"<mix-{number}@example.com>"
        kind = number % 5
        if kind == 0:
            message["Subject"] = f"Notes on {topic}"
            message.set_content(PLAIN.format(topic=topic))
        elif kind == 1:
            message["Subject"] = f"Re: {topic}"
            message["In-Reply-To"] = f"<mix-{number - 1}@example.com>"
            message.set_content(f"Sounds good, I'll prepare the slides for {topic}.")
            message.add_alternative(GMAIL_HTML.format(topic=topic), subtype="html")
        elif kind == 2:
            message["Subject"] = f"Réunion : {topic}"
            message.set_content(FRENCH.format(topic=topic))
        elif kind == 3:
            message["Subject"] = f"RE: {topic}"
            message.set_content(OUTLOOK_FR.format(topic=topic))
        else:
            message["Subject"] = f"Report on {topic}"
            message.set_content(PLAIN.format(topic=topic))
            message.add_attachment(bytes(range(256)) * 120, maintype="application",
                                   subtype="pdf", filename=f"report-{number}.pdf")
        messages.append(message.as_bytes())
    return messages


def bench_processing(app: App, count: int) -> float:
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    envelope = Envelope(mail_from="alice@example.com", rcpt_to=[f"rd@{DOMAIN}"])
    rows = [writer.row(raw, envelope) for raw in realistic_mix(count)]
    for start in range(0, len(rows), 500):
        writer.write_rows(rows[start:start + 500])
    processor = Processor(app)
    began = time.process_time()
    wall = time.perf_counter()
    processor.run_until_idle()
    cpu = time.process_time() - began
    wall = time.perf_counter() - wall
    with app.engine.connect() as connection:
        archived = connection.exec_driver_sql("SELECT count(*) FROM message").scalar()
    assert archived == count, f"{archived} of {count} archived"
    print(f"  processing: {count} messages in {wall:.2f} s wall, {cpu:.2f} s CPU")
    return count / wall


def compare_acceptance(folder: Path, messages: int, sessions: int, size: int,
                       rounds: int) -> tuple[float, float]:
    """Medians of (a) and (b), alternating, each (b) round on a new database."""
    bare, durable = [], []
    for number in range(rounds):
        bare.append(bench_bare(messages, sessions, size))
        app = make_app(folder / f"accept-{sessions}-{number}")
        durable.append(bench_durable(app, messages, sessions, size))
        app.dispose()
        print(f"  {sessions} sessions, round {number + 1}: (a) {bare[-1]:.0f}/s, "
              f"(b) {durable[-1]:.0f}/s = {durable[-1] / bare[-1]:.2f} x")
    return statistics.median(bare), statistics.median(durable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, nargs="+", default=[8, 20, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--mix", type=int, default=3000, help="messages processed in (c)")
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        sys.exit("smtp-source is missing: apt-get install postfix")
    print(f"{args.messages} messages of {args.size} bytes, sessions {args.sessions}, "
          f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory() as folder:
        results = {sessions: compare_acceptance(Path(folder), args.messages, sessions,
                                                args.size, args.rounds)
                   for sessions in args.sessions}
        app = make_app(Path(folder) / "process")
        processing = bench_processing(app, args.mix)
        app.dispose()
    for sessions, (bare, durable) in results.items():
        print(f"{sessions:3d} sessions: (a) bare aiosmtpd, keeps nothing {bare:6.0f} msg/s; "
              f"(b) durable acceptance (SQLite) {durable:6.0f} msg/s = {durable / bare:.2f} x "
              f"(a)   target >= 0.80 x")
    print(f"(c) processing, realistic mix:      {processing:8.0f} messages/s   "
          f"target >= 500/s on one core")


if __name__ == "__main__":
    main()
