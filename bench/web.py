"""Web view: thread page latency, over real HTTP (uvicorn on loopback, httpx keep-alive).

    .venv/bin/python bench/web.py [--conversations N] [--messages M] [--requests R] [--json]

Builds a SQLite archive (a temporary directory) with N conversations of M messages each in
one public community plus a private one, written with SQLAlchemy Core as the processor
writes them (the search triggers index them), then serves the whole web view
(`bridge.webwiring.web_app`) with `bridge.webserver.WebServer` and requests thread pages
of random conversations R times, as an anonymous reader and as a signed-in member (whose
page adds the membership lookups and the personal reply address). Reports p50/p95/p99 in
milliseconds, measured by the client: routing, session, permissions, queries, templates
and HTTP included. Target (issue 8): p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from archive.web.sessions import COOKIE, SessionCodec, new_session
from bridge.app import App
from bridge.db import upgrade
from bridge.models import Address, Community, Conversation, Membership, Message, Person
from bridge.settings import Settings
from bridge.webwiring import web_service

BODY = ("Hello team,\n\nHere are the figures for the quarter; the meeting is on Thursday "
        "and the budget review follows. Please send your comments before Friday.\n") * 3
QUOTED = "> On Monday someone wrote:\n> the previous message, quoted in full.\n" * 5


def build(app: App, conversations: int, messages: int) -> tuple[list[int], int]:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with app.engine.begin() as connection:
        pub = connection.execute(insert(Community.__table__).values(  # type: ignore[attr-defined]
            slug="pub", name="Public", visibility="public", goals={}).returning(
            Community.__table__.c.id)).scalar_one()  # type: ignore[attr-defined]
        person = connection.execute(insert(Person.__table__).values(  # type: ignore[attr-defined]
            display_name="Bench Reader").returning(Person.__table__.c.id)).scalar_one()  # type: ignore[attr-defined]
        connection.execute(insert(Address.__table__).values(  # type: ignore[attr-defined]
            email="reader@example.com", person_id=person))
        connection.execute(insert(Membership.__table__).values(  # type: ignore[attr-defined]
            community_id=pub, person_id=person))
        ids = []
        for c in range(conversations):
            conversation = connection.execute(insert(Conversation.__table__).values(  # type: ignore[attr-defined]
                community_id=pub, subject=f"Quarter figures {c}",
                normalized_subject=f"quarter figures {c}", started_at=now, last_activity=now,
                message_count=messages).returning(Conversation.__table__.c.id)).scalar_one()  # type: ignore[attr-defined]
            ids.append(conversation)
            connection.execute(insert(Message.__table__), [dict(  # type: ignore[attr-defined]
                community_id=pub, conversation_id=conversation,
                message_id=f"c{c}-m{m}@example.com", references=[], to_cc=[],
                from_address=f"author{m}@example.com", from_name=f"Author {m}",
                date=now + timedelta(minutes=m), received_at=now, subject=f"Quarter figures {c}",
                text=BODY, quoted=QUOTED if m else "", signature="--\nAuthor", html="",
                language="en") for m in range(messages)])
    return ids, person


def measure(base: str, ids: list[int], requests: int, cookies: dict[str, str]) -> list[float]:
    rng = random.Random(8)
    times = []
    with httpx.Client(base_url=base, cookies=cookies) as client:
        for _ in range(20):  # warm-up
            client.get(f"/t/{rng.choice(ids)}")
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(f"/t/{rng.choice(ids)}")
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(pick(0.95), 2),
            "p99_ms": round(pick(0.99), 2), "requests": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "settings.toml").write_text(f"""
[instance]
name = "Bench"
domains = ["lists.example.org"]
staff_domains = ["example.com"]
base_url = "http://127.0.0.1:18080"
data_dir = "{root}/var"
[web]
host = "127.0.0.1"
port = 18080
""", encoding="utf-8")
        from tests.conftest import free_port

        port = free_port()
        settings = Settings.load(root / "settings.toml",
                                 environ={"CAUSERIE_WEB__PORT": str(port)})
        app = App(settings)
        upgrade(app.engine)
        started = time.perf_counter()
        ids, person = build(app, args.conversations, args.messages)
        built = time.perf_counter() - started
        service = web_service(app, port=port)
        loop = asyncio.new_event_loop()
        ready, stop = threading.Event(), asyncio.Event()

        async def serve() -> None:
            await service.start()
            ready.set()
            await stop.wait()
            await service.stop()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
        thread.start()
        ready.wait(20)
        base = f"http://127.0.0.1:{port}"
        try:
            cookie = SessionCodec(app.secret, secure=False).dump(new_session(person))
            result: dict[str, Any] = {
                "conversations": args.conversations, "messages_per_thread": args.messages,
                "build_seconds": round(built, 1),
                "anonymous": summary(measure(base, ids, args.requests, {})),
                "member": summary(measure(base, ids, args.requests, {COOKIE: cookie})),
            }
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(20)
            app.dispose()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for who in ("anonymous", "member"):
            figures = result[who]
            print(f"thread page ({args.messages} messages, {args.conversations} conversations)"
                  f", {who}: p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
                  f"p99 {figures['p99_ms']} ms over {figures['requests']} requests")


if __name__ == "__main__":
    main()
