"""IMAP ingestion: N messages read from a real Dovecot on loopback into the durable inbox.

    .venv/bin/python bench/imap.py [--messages 2000] [--rounds 3] [--batch 100] [--url URL]

In each round, against the same Dovecot and the same messages:

1. **plain loop** (the limit): one imapclient connection that logs in, selects the folder,
   searches and fetches every message with `BODY.PEEK[]` in batches, and keeps nothing;
2. **Causerie, after = "seen"**: the `serve` poller of a fresh mailbox (fresh database):
   the same fetches, routing by To/Cc, one transaction per batch for the inbox rows, their
   UIDs and the mailbox position, then `+FLAGS \\Seen` on the batch;
3. **Causerie, after = "move"**: the same on a copy of the messages in another account,
   each batch moved to the processed folder (RFC 6851 MOVE) after its commit.

A Causerie run is timed from the poller's start (connection and login included, as in the
plain loop) to the commit that makes the N-th message durable. The processor (parse to
conversations) is not part of it: `bench/ingest.py` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imapclient import IMAPClient  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from bridge.app import App  # noqa: E402
from bridge.db import make_engine, upgrade  # noqa: E402
from bridge.directory import create_community  # noqa: E402
from bridge.models import ImapSeen  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from inbound.imap import PollerOptions, poller  # noqa: E402
from inbound.store import InboxWriter  # noqa: E402
from tests.dovecot import Dovecot, available  # noqa: E402

DOMAIN = "lists.example.org"
PARAGRAPHS = (
    "Bonjour à tous, voici le compte rendu de la réunion de jeudi : budget, recrutement, "
    "feuille de route du deuxième semestre.",
    "Hi all, the customer asked whether the new release supports single sign-on; I said "
    "we would check with R&D and come back to them before Friday.",
    "Merci pour vos retours. Je propose de décaler la revue au 12 et d'inviter l'équipe "
    "support, qui a des remarques sur la documentation.",
    "Attached are the figures for the quarter. Revenue is up 8 %, margins flat; the two "
    "big deals slipped to next quarter.",
)


def make_messages(count: int, seed: int = 6) -> list[bytes]:
    """A mix like a team mailbox: mostly 2-6 KB text, some HTML, 10% with an attachment."""
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        message = EmailMessage()
        message["From"] = f"Person {n % 37} <person{n % 37}@example.com>"
        message["To"] = f"bench@{DOMAIN}"
        if n % 5 == 0:
            message["Cc"] = f"Someone <someone{n % 11}@example.com>"
        message["Subject"] = f"Re: Point d'avancement n°{n // 4}"
        message["Message-ID"] = f"<bench-{n}-{uuid.uuid4().hex[:8]}@example.com>"
        message["Date"] = "Tue, 24 Nov 2026 10:00:00 +0100"
        body = "\n\n".join(rng.choice(PARAGRAPHS) for _ in range(rng.randint(8, 30)))
        message.set_content(body + "\n\n-- \nPerson\n")
        if n % 3 == 0:
            message.add_alternative("<html><body>" + "".join(
                f"<p>{p}</p>" for p in body.split("\n\n")) + "</body></html>", subtype="html")
        if n % 10 == 0:
            message.add_attachment(rng.randbytes(24_000), maintype="application",
                                   subtype="pdf", filename=f"rapport-{n}.pdf")
        messages.append(bytes(message).replace(b"\n", b"\r\n"))
    return messages


def load(server: Dovecot, user: str, password: str, messages: list[bytes]) -> None:
    """APPEND the messages (MULTIAPPEND, in chunks): not timed."""
    with server.client(user, password) as client:
        for start in range(0, len(messages), 200):
            client.multiappend("INBOX", messages[start:start + 200])


def plain_loop(server: Dovecot, user: str, password: str, batch: int) -> tuple[float, int]:
    """Fetch every message of INBOX by UID in batches, keep nothing: (seconds, bytes)."""
    started = time.perf_counter()
    client = IMAPClient("127.0.0.1", server.port, ssl=False, timeout=60)
    client.login(user, password)
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["UID", "1:*"])
    size = 0
    for start in range(0, len(uids), batch):
        data = client.fetch(uids[start:start + batch], ["BODY.PEEK[]"])
        size += sum(len(item[b"BODY[]"]) for item in data.values())
    client.logout()
    return time.perf_counter() - started, size


class Database:
    """A fresh, migrated database for each Causerie run."""

    def __init__(self, url: str, folder: Path) -> None:
        self.admin_url = url
        self.folder = folder
        self.template: Path | None = None
        self.pg_name = ""
        if not url:
            self.template = folder / "template.db"
            engine = make_engine(f"sqlite:///{self.template}")
            upgrade(engine)
            engine.dispose()
        else:
            self.pg_name = f"causerie_bench_imap_{uuid.uuid4().hex[:8]}"
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.pg_name}"'))
            admin.dispose()
            engine = make_engine(self.pg_url)
            upgrade(engine)
            engine.dispose()

    @property
    def pg_url(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + self.pg_name

    def fresh(self, name: str) -> str:
        if self.template is not None:
            path = self.folder / f"{name}.db"
            shutil.copy(self.template, path)
            return f"sqlite:///{path}"
        import bridge.models  # noqa: F401

        engine = create_engine(self.pg_url)
        names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return self.pg_url

    def close(self) -> None:
        if self.pg_name:
            admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_name}" '
                                        "WITH (FORCE)"))
            admin.dispose()


async def causerie(folder: Path, url: str, server: Dovecot, user: str, password: str,
                   after: str, count: int, batch: int) -> float:
    """Seconds from the poller's start to the commit of the `count`-th message."""
    (folder / f"{user}.pw").write_text(password)
    settings_path = folder / f"{user}-{after}.toml"
    settings_path.write_text(f"""
[instance]
domains = ["{DOMAIN}"]
data_dir = "{folder / ('var-' + user + '-' + after)}"
[database]
url = "{url}"
[[imap.mailbox]]
name = "bench"
host = "127.0.0.1"
port = {server.port}
tls = "none"
user = "{user}"
password_file = "{folder / (user + '.pw')}"
after = "{after}"
""", encoding="utf-8")
    app = App(Settings.load(settings_path, environ={}))
    with app.session() as session:
        create_community(session, "bench", "Bench", policy="open")
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    arrived = asyncio.Event()
    reader = poller(app, writer, app.settings.imap[0], environ={}, arrived=arrived,
                    options=PollerOptions(batch_size=batch, tick=0.2))
    seen = ImapSeen.__table__  # type: ignore[attr-defined]

    def ingested() -> int:
        with app.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(seen)).scalar_one())

    started = time.perf_counter()
    await reader.start()
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            if await asyncio.to_thread(ingested) >= count:
                elapsed = time.perf_counter() - started
                break
    finally:
        await reader.stop()
        app.dispose()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=PollerOptions.batch_size,
                        help="UIDs per FETCH and commit (default: the poller's)")
    parser.add_argument("--url", default="",
                        help="PostgreSQL admin URL (a throwaway database is created); "
                             "default: SQLite files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if available():
        sys.exit(f"bench/imap.py: {available()}")

    messages = make_messages(args.messages)
    work = Path(tempfile.mkdtemp(prefix="causerie-bench-imap-"))
    server = Dovecot(work / "dovecot")
    users = ["plain"] + [f"move{r}" for r in range(args.rounds)]
    for user in users:
        server.add_user(user, f"pw-{user}")
    server.start()
    database = Database(args.url, work)
    results: dict[str, list[float]] = {"plain": [], "seen": [], "move": []}
    size = 0
    try:
        for user in users:
            load(server, user, f"pw-{user}", messages)
        for round_ in range(args.rounds):
            seconds, size = plain_loop(server, "plain", "pw-plain", args.batch)
            results["plain"].append(args.messages / seconds)
            seconds = await causerie(work, database.fresh(f"seen{round_}"), server, "plain",
                                     "pw-plain", "seen", args.messages, args.batch)
            results["seen"].append(args.messages / seconds)
            user = f"move{round_}"
            seconds = await causerie(work, database.fresh(f"move{round_}"), server, user,
                                     f"pw-{user}", "move", args.messages, args.batch)
            results["move"].append(args.messages / seconds)
            print(f"round {round_ + 1}: plain {results['plain'][-1]:,.0f} msg/s, seen "
                  f"{results['seen'][-1]:,.0f} msg/s, move {results['move'][-1]:,.0f} msg/s",
                  file=sys.stderr)
    finally:
        server.close()
        database.close()
        shutil.rmtree(work, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "database": "postgresql" if args.url else "sqlite",
        "messages": args.messages, "batch": args.batch, "rounds": args.rounds,
        "average_size": size // args.messages if args.messages else 0,
        "plain_loop": round(median["plain"]),
        "causerie_seen": round(median["seen"]),
        "causerie_move": round(median["move"]),
        "ratio_seen": round(median["seen"] / median["plain"], 2),
        "ratio_move": round(median["move"] / median["plain"], 2),
        "all_rounds": {name: [round(v) for v in values] for name, values in results.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.messages} messages of {report['average_size']:,} bytes on average, "
          f"batches of {args.batch}, {report['database']}, median of {args.rounds} rounds")
    print(f"  plain imapclient loop (fetch only)   {report['plain_loop']:>7,} msg/s")
    print(f"  Causerie, after = seen               {report['causerie_seen']:>7,} msg/s  "
          f"({report['ratio_seen']:.2f}x)")
    print(f"  Causerie, after = move               {report['causerie_move']:>7,} msg/s  "
          f"({report['ratio_move']:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
