"""Weekly digests for 10,000 members across 20 communities over 5,000 messages.

    .venv/bin/python bench/digest.py [--members 10000] [--communities 20] [--messages 5000]
                                     [--url DATABASE_URL]

Builds a fresh database (SQLite in a temporary folder unless --url names an empty
PostgreSQL database), with members spread over four time zones and two languages, each in
one to three communities on the weekly cadence, three of them managers (vitality section),
and 5,000 messages of the week before the run in conversations of one to eight messages.
Then times one `run_digests(app, "weekly", now)` (archive read, ranking, rendering of both
parts, and the write transactions — persons in groups — inserting the run rows and their
delivery rows), and reports total and per-digest time (wall and CPU), the wall time spent
in write transactions, and the peak resident size (getrusage), as well as the Python heap
peak measured by tracemalloc in a second run with nothing new. The machine's load average
is printed next to the figures: on a shared machine, wall time is mostly waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from archive.vitality import vitality_for  # noqa: E402
from bridge.app import App  # noqa: E402
from bridge.db import make_engine, upgrade  # noqa: E402
from bridge.models import (  # noqa: E402
    Address,
    Community,
    Conversation,
    Membership,
    Message,
    Person,
)
from bridge.settings import Settings  # noqa: E402
from outbound.digest import DigestFunctions, run_digests  # noqa: E402

NOW = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)  # Monday, after every zone's 07:30
ZONES = ("UTC", "Europe/Paris", "Europe/London", "Asia/Kolkata")
WORDS = ["invoice", "pricing", "roadmap", "prototype", "release", "customer", "contract",
         "support", "budget", "hiring", "travel", "security", "backup", "network",
         "printer", "training", "planning"]


def populate(app: App, members: int, communities: int, messages: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    t = {m.__name__: m.__table__ for m in (Community, Person, Address, Membership,  # type: ignore[attr-defined,union-attr]
                                           Conversation, Message)}
    start = NOW - timedelta(days=7)
    with app.engine.begin() as c:
        c.execute(insert(t["Community"]), [
            {"id": i + 1, "slug": f"community-{i + 1}", "name": f"Community {i + 1}",
             "description": "", "language": "en", "visibility": "internal",
             "posting_policy": "members", "admits_guests": False, "subject_tag": "",
             "reply_to": "personal", "created_at": start,
             "goals": {"answered_within_48h": 0.8, "new_conversations_per_week": 20}}
            for i in range(communities)])
        c.execute(insert(t["Person"]), [
            {"id": i + 1, "display_name": f"Member {i + 1}", "language": ("en", "fr")[i % 2],
             "timezone": ZONES[i % len(ZONES)], "kind": None, "organisation_id": None,
             "digest_time": "", "digest_weekday": "", "own_copies": False,
             "forgotten_at": None, "created_at": start} for i in range(members)])
        c.execute(insert(t["Address"]), [
            {"email": f"member{i + 1}@example.com", "person_id": i + 1, "primary": True}
            for i in range(members)])
        rows = []
        for i in range(members):
            for cid in rng.sample(range(1, communities + 1), rng.randint(1, 3)):
                rows.append({"community_id": cid, "person_id": i + 1,
                             "role": "owner" if i < 3 else "member", "delivery_mode": "weekly",
                             "duplicate_copies": False, "bounce_score": 0.0,
                             "bounce_updated_at": None, "disabled_reason": "",
                             "joined_at": start})
        c.execute(insert(t["Membership"]), rows)
        convs, msgs = [], []
        conv_id = msg_id = 0
        while msg_id < messages:
            conv_id += 1
            cid = rng.randint(1, communities)
            size = min(rng.randint(1, 8), messages - msg_id)
            when = start + timedelta(seconds=rng.randint(0, 6 * 86400))
            subject = " ".join(rng.sample(WORDS, 3)).capitalize()
            dates = sorted(when + timedelta(minutes=rng.randint(0, 2000)) for _ in range(size))
            dates[0] = when
            for k, date in enumerate(dates):
                msg_id += 1
                author = rng.randint(1, members)
                msgs.append({
                    "id": msg_id, "community_id": cid, "conversation_id": conv_id,
                    "message_id": f"{msg_id}@bench", "parent_id": msg_id - 1 if k else None,
                    "in_reply_to": "", "references": [], "author_id": author,
                    "from_address": f"member{author}@example.com",
                    "from_name": f"Member {author}", "date": date, "received_at": date,
                    "subject": subject, "text": f"{subject}: a paragraph of words. " * 6,
                    "quoted": "", "signature": "", "html": "", "language": "en",
                    "to_cc": [], "inbox_id": None, "status": "published",
                    "has_attachments": False, "redacted_reason": "", "redacted_at": None})
            convs.append({"id": conv_id, "community_id": cid, "subject": subject,
                          "normalized_subject": subject.lower(), "started_at": dates[0],
                          "last_activity": dates[-1], "message_count": size,
                          "author_id": msgs[-size]["author_id"],
                          "first_reply_at": dates[1] if size > 1 else None})
        c.execute(insert(t["Conversation"]), convs)
        for i in range(0, len(msgs), 1000):
            c.execute(insert(t["Message"]), msgs[i:i + 1000])


def make_app(url: str | None, folder: Path) -> App:
    url = url or f"sqlite:///{folder / 'bench.db'}"
    upgrade(make_engine(url))
    (folder / "settings.toml").write_text(f"""
[instance]
domains = ["lists.example.org"]
base_url = "https://causerie.example.com"
data_dir = "{folder}"
[database]
url = "{url}"
""")
    return App(Settings.load(folder / "settings.toml", environ={}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--communities", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--url", default=None, help="an empty PostgreSQL database URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(args.url, Path(tmp))
        t0 = time.perf_counter()
        populate(app, args.members, args.communities, args.messages)
        print(f"populated in {time.perf_counter() - t0:.1f} s ({app.engine.dialect.name})")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu0 = time.process_time()
        report = run_digests(app, "weekly", NOW,
                             functions=DigestFunctions(vitality=vitality_for(app.reader)))
        cpu = time.process_time() - cpu0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"weekly run: {report.queued} digests queued ({report.empty} empty) for "
              f"{report.persons} members in {report.seconds:.1f} s wall, {cpu:.1f} s CPU; "
              f"{report.seconds / max(report.queued, 1) * 1000:.2f} ms per digest; "
              f"{report.bytes / max(report.deliveries, 1) / 1024:.1f} KB per digest; "
              f"{report.writing:.1f} s wall in write transactions")
        print(f"peak RSS {rss:.0f} MiB (before the run: {rss_before:.0f} MiB); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        # tracemalloc slows Python down: measure the heap on a second period, same data
        tracemalloc.start()
        again = run_digests(app, "weekly", NOW + timedelta(days=7))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"python heap peak (tracemalloc, a run with {again.persons} members and "
              f"nothing new): {peak / 2**20:.1f} MiB")
        app.dispose()


if __name__ == "__main__":
    main()
