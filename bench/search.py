"""Search at archive scale: index rate, index size and query latency on the real archives.

    .venv/bin/python bench/search.py [--url URL] [--limit N] [--json]
    .venv/bin/python bench/search.py --url URL --no-load    # measure a database loaded before

Reads ../shared/corpora/archives/*.mbox.xz (about 104,000 messages), writes them with
SQLAlchemy Core straight into `message` (one conversation per normalised subject, batches of
1,000 in one transaction each, as the processor writes them) so that the triggers index them,
then times 50 fixed queries (words, phrases, operators) five times each, as the administrator
and as a reader with a private community hidden. This measures the search part alone; the whole
import path (parse, thread, store, index) is measured by the import bench.

Each search is timed by the clock and by the CPU time of its thread: on a machine shared with
other work the clock's tail is mostly waiting for a core, which the CPU time leaves out.
"""

from __future__ import annotations

import argparse
import email
import email.utils
import json
import lzma
import os
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, insert, text

from archive.search import Reader, search, sqlite_functions
from bridge.db import make_engine, upgrade
from bridge.models import Community, Conversation, Message

ARCHIVES = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "archives"
QUERIES = [
    "package", "memory leak", '"memory leak"', "segfault", "cran", "windows", "error",
    "install.packages", "R CMD check", '"R CMD check"', "lapply", "bug report", "macos",
    "xcode", "fortran compiler", "gcc", "locale", "encoding utf-8", '"unicode characters"',
    "vignette", "namespace", "s4 methods", "data.frame", "matrix multiplication",
    "profiling", "performance", "tcltk", "quartz", "apple silicon", "homebrew",
    "from:ripley", "from:murdoch", "from:simon", "from:ripley windows",
    "community:r-sig-mac", "community:r-sig-mac gfortran", "has:attachment",
    "before:2005-01-01 memory", "after:2020-01-01 cran", "after:2015-01-01 before:2016-01-01",
    "windows -linux", "mac OR macos", "compile OR compiling OR compiler", "in:subject segfault",
    "in:subject \"R CMD check\"", "documentation -vignette", "plot device",
    "random number generator", "bioconductor", "the",
]


def messages(limit: int | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(ARCHIVES.glob("*.mbox.xz")):
        with lzma.open(path) as compressed:
            data = compressed.read()
        for part in re.split(rb"\n(?=From [^\n]*\d{4}\n)", data):
            raw = part.split(b"\n", 1)[1] if part.startswith(b"From ") else part
            msg = email.message_from_bytes(raw)
            try:
                payload = msg.get_payload(decode=True) or b""
                body = payload.decode(msg.get_content_charset() or "utf-8", "replace")
                day = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
            except Exception:
                continue
            if day.tzinfo is None:
                day = day.replace(tzinfo=UTC)
            lines = body.splitlines()
            name, address = email.utils.parseaddr(str(msg.get("From", "")).replace(" at ", "@"))
            found.append({"list": path.name.split(".")[0], "raw": len(raw),
                          "subject": str(msg.get("Subject", "")), "date": day,
                          "from_name": name, "from_address": address,
                          "message_id": str(msg.get("Message-ID", "")).strip("<> ") or
                          f"bench{len(found)}",
                          "text": "\n".join(line for line in lines if not line.startswith(">")),
                          "quoted": "\n".join(line for line in lines if line.startswith(">"))})
            if limit and len(found) >= limit:
                return found
    return found


def load(engine: Engine, mails: list[dict[str, Any]]) -> float:
    communities: dict[str, int] = {}
    conversations: dict[tuple[int, str], int] = {}
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for i, name in enumerate(sorted({m["list"] for m in mails})):
            communities[name] = connection.execute(insert(Community.__table__).values(  # type: ignore[attr-defined]
                slug=name, name=name, description="", language="en",
                visibility="private" if i == 0 else "public", posting_policy="open",
                admits_guests=False, subject_tag="", reply_to="personal", goals={},
                created_at=now).returning(Community.__table__.c.id)).scalar_one()  # type: ignore[attr-defined]
    started = time.perf_counter()
    seen: set[tuple[int, str]] = set()
    for start in range(0, len(mails), 1000):
        rows = []
        with engine.begin() as connection:
            for mail in mails[start:start + 1000]:
                community = communities[mail["list"]]
                key = (community, re.sub(r"^(re|fwd?):\s*", "", mail["subject"].lower()).strip())
                if key not in conversations:
                    conversations[key] = connection.execute(insert(Conversation.__table__).values(  # type: ignore[attr-defined]
                        community_id=community, subject=mail["subject"],
                        normalized_subject=key[1], started_at=mail["date"],
                        last_activity=mail["date"], message_count=0,
                    ).returning(Conversation.__table__.c.id)).scalar_one()  # type: ignore[attr-defined]
                if (community, mail["message_id"]) in seen:
                    continue
                seen.add((community, mail["message_id"]))
                rows.append(dict(
                    community_id=community, conversation_id=conversations[key],
                    message_id=mail["message_id"], in_reply_to="", references=[],
                    from_address=mail["from_address"], from_name=mail["from_name"],
                    date=mail["date"], received_at=now, subject=mail["subject"],
                    text=mail["text"], quoted=mail["quoted"], signature="", html="",
                    language="en", to_cc=[], status="published", has_attachments=False,
                    redacted_reason=""))
            connection.execute(insert(Message.__table__), rows)  # type: ignore[attr-defined]
    return len(mails) / (time.perf_counter() - started)


def latency(engine: Engine, reader: Reader | None) -> dict[str, float]:
    timings: list[float] = []
    cpu: list[float] = []
    for _ in range(5):
        for query in QUERIES:
            started, used = time.perf_counter(), time.thread_time()
            search(engine, query, reader=reader)
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - used) * 1000)
    timings.sort()
    cpu.sort()
    return {"p50_ms": round(statistics.median(timings), 2),
            "p95_ms": round(timings[int(len(timings) * 0.95)], 2),
            "max_ms": round(timings[-1], 2),
            "cpu_p50_ms": round(statistics.median(cpu), 2),
            "cpu_p95_ms": round(cpu[int(len(cpu) * 0.95)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: a new SQLite file)")
    parser.add_argument("--limit", type=int, help="only the first N messages")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-load", action="store_true",
                        help="the database at --url already holds the archives: measure only")
    args = parser.parse_args()
    if args.no_load and not args.url:
        parser.error("--no-load needs --url")
    mails = [] if args.no_load else messages(args.limit)
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{folder}/bench.db"
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", sqlite_functions)
        upgrade(engine)
        result: dict[str, Any] = {"backend": engine.dialect.name}
        if not args.no_load:
            rate = load(engine, mails)
            result.update(messages=len(mails),
                          raw_mb=round(sum(m["raw"] for m in mails) / 1e6, 1),
                          insert_and_index_per_s=round(rate))
        reader = make_engine(url, reader=True) if engine.dialect.name == "sqlite" else engine
        with engine.connect() as connection:
            result["indexed"] = connection.execute(text(
                "SELECT count(*) FROM message WHERE status = 'published'")).scalar_one()
            if engine.dialect.name == "sqlite":
                size = connection.execute(text(
                    "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'message_search%'"
                )).scalar_one()
                total = connection.execute(text(
                    "SELECT page_count * page_size FROM pragma_page_count(), "
                    "pragma_page_size()")).scalar_one()
            else:
                size = connection.execute(text(
                    "SELECT pg_relation_size('ix_message_search') + "
                    "coalesce(sum(pg_column_size(search_vector)), 0) FROM message")).scalar_one()
                total = connection.execute(text(
                    "SELECT pg_database_size(current_database())")).scalar_one()
        result["index_mb"] = round(size / 1e6, 1)
        result["database_mb"] = round(total / 1e6, 1)
        search(reader, "warm up")
        result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
        result["admin"] = latency(reader, None)
        result["reader"] = latency(reader, Reader(1, staff=True))
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        reader.dispose()
        engine.dispose()
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
