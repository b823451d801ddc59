"""Archive benchmark (issue 8): import the real archives, measure sizes and search latency.

    .venv/bin/python bench/import_archive.py [--url URL] [--limit N] [--profile] [--json]
        [--workers N] [--keep DIR] [--no-search]

Imports ../shared/corpora/archives/*.mbox.xz (about 104,000 messages, one community each)
with `causerie import`'s code: the durable inbox, then the live processor (parse → classify →
authorise → thread → store, the search index kept by the triggers), without fan-out or
notices. Then measures:

- the import rate (messages read per second, end to end, decompression included) and the
  CPU seconds of the main process and of the prepare workers (which, unlike the rate, do not
  depend on what else the machine runs);
- the database size on disk, the whole data directory (database, raw store) and the raw
  mail size (the bytes of the imported messages);
- search latency p50/p95 over bench/search.py's 50 fixed queries (words, phrases, every
  operator), five rounds, as the administrator and as a signed-in staff reader;
- "who knows about X" latency over a few of those queries.

With `--profile` the import runs under cProfile and the top functions are printed (by
cumulative and by own time), to say where the time goes (of the main process only: the
workers are other processes). Reasons for messages not archived are counted by kind.

The communities are created with the posting policy "open" and admitting guests, because the
processor does not yet treat imported mail as pre-approved (see the report of issue 8).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archive.people import rank_people  # noqa: E402
from archive.search import Reader, search  # noqa: E402
from bridge import wiring  # noqa: E402
from bridge.app import App  # noqa: E402
from bridge.db import upgrade  # noqa: E402
from bridge.directory import create_community  # noqa: E402
from bridge.models import Conversation, InboxItem, Message  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from inbound.importer import import_path  # noqa: E402

ARCHIVES = ROOT.parent / "shared" / "corpora" / "archives"
DOMAIN = "lists.example.org"
PEOPLE_QUERIES = ["memory leak", "gfortran", "R CMD check", "xcode", "encoding utf-8",
                  "namespace", "tcltk", "bioconductor", "windows -linux", "vignette"]


def _search_bench() -> Any:
    """bench/search.py, for its fixed query list and its latency loop (not duplicated)."""
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_app(folder: Path, url: str | None) -> App:
    database = f'\n[database]\nurl = "{url}"\n' if url else ""
    path = folder / "settings.toml"
    path.write_text(f'[instance]\ndomains = ["{DOMAIN}"]\nstaff_domains = ["r-project.org"]\n'
                    f'data_dir = "var"\n{database}', encoding="utf-8")
    app = App(Settings.load(path, environ={}))
    upgrade(app.engine)
    return app


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _reason_key(reason: str) -> str:
    """A reason without its particulars (community, numbers, addresses), to count by kind:
    "discarded: r-devel: already archived as message #12" -> "discarded: already archived
    as message #N"."""
    status, _, rest = reason.partition(": ")
    if status not in ("rejected", "failed", "held", "discarded"):
        return reason[:80]
    rest = re.sub(r"^[a-z0-9-]+: ", "", rest)
    rest = re.sub(r"\S+@\S+", "ADDRESS", rest)
    rest = re.sub(r"\d+", "N", rest)
    return f"{status}: {rest}"[:100]


def run_import(app: App, limit: int | None, workers: int | None = None) -> dict[str, Any]:
    archives = sorted(ARCHIVES.glob("*.mbox.xz"))
    if not archives:
        raise SystemExit(f"no archives under {ARCHIVES}")
    with app.session() as session:
        for i, path in enumerate(archives):
            create_community(session, path.name.split(".")[0], path.name, policy="open",
                             visibility="private" if i == 0 else "public",
                             admits_guests=True)
    reports = []
    quiet = not sys.stderr.isatty()
    cpu_before = tuple(usage.ru_utime + usage.ru_stime for usage in (
        resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    started = time.perf_counter()
    remaining = limit
    for path in archives:
        if remaining is not None and remaining <= 0:
            break
        processor = wiring.processor(app, fan_out=False, notify=False)
        report = import_path(app, path, path.name.split(".")[0], processor, limit=remaining,
                             batch_size=500, quiet=quiet, workers=workers)
        reports.append(report)
        if remaining is not None:
            remaining -= report.read
    elapsed = time.perf_counter() - started
    cpu_main = resource.getrusage(resource.RUSAGE_SELF)
    cpu_workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    read = sum(r.read for r in reports)
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for report in reports:
        for status, count in report.outcomes.items():
            outcomes[status] = outcomes.get(status, 0) + count
        for item in report.skipped + report.problems:
            key = _reason_key(item.reason)
            reasons[key] = reasons.get(key, 0) + 1
    # CPU seconds say what the import costs whatever else the machine runs (the wall-clock
    # rate does not, on a shared machine): the main process (reading, SQL, the index) and
    # the prepare workers (parse, classify, extract).
    main_s = cpu_main.ru_utime + cpu_main.ru_stime - cpu_before[0]
    workers_s = cpu_workers.ru_utime + cpu_workers.ru_stime - cpu_before[1]
    return {"messages_read": read, "seconds": round(elapsed, 1),
            "messages_per_s": round(read / elapsed, 1),
            "cpu_seconds_main": round(main_s, 1), "cpu_seconds_workers": round(workers_s, 1),
            "cpu_ms_per_message": round((main_s + workers_s) * 1000 / read, 3) if read else None,
            "outcomes": outcomes,
            "not_archived_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:25])}


def sizes(app: App) -> dict[str, Any]:
    with app.engine.connect() as connection:
        raw = connection.execute(select(func.coalesce(func.sum(
            InboxItem.__table__.c.size), 0))).scalar_one()  # type: ignore[attr-defined]
        messages = connection.execute(select(func.count()).select_from(
            Message.__table__)).scalar_one()  # type: ignore[attr-defined]
        conversations = connection.execute(select(func.count()).select_from(
            Conversation.__table__)).scalar_one()  # type: ignore[attr-defined]
        if connection.dialect.name == "sqlite":
            database = connection.execute(text(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            )).scalar_one()
            index = connection.execute(text(
                "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'message_search%'")).scalar_one()
        else:
            database = connection.execute(text(
                "SELECT pg_database_size(current_database())")).scalar_one()
            index = connection.execute(text(
                "SELECT pg_relation_size('ix_message_search') + "
                "coalesce(sum(pg_column_size(search_vector)), 0) FROM message")).scalar_one()
    data_dir = app.settings.instance.data_dir
    on_disk = folder_size(data_dir)
    if app.engine.dialect.name != "sqlite":
        on_disk += int(database)  # the data directory holds the store; the database is apart
    return {"messages_archived": messages, "conversations": conversations,
            "raw_mail_mb": round(raw / 1e6, 1), "database_mb": round(database / 1e6, 1),
            "search_index_mb": round((index or 0) / 1e6, 1),
            "data_dir_mb": round(on_disk / 1e6, 1),
            "data_dir_over_raw": round(on_disk / raw, 2) if raw else None}


def people_latency(app: App) -> dict[str, float]:
    timings = []
    for _ in range(3):
        for query in PEOPLE_QUERIES:
            started = time.perf_counter()
            with app.reader.connect() as connection:
                rank_people(connection, query, None)
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {"p50_ms": round(statistics.median(timings), 1),
            "p95_ms": round(timings[int(len(timings) * 0.95)], 1),
            "max_ms": round(timings[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--limit", type=int, help="only the first N messages")
    parser.add_argument("--profile", action="store_true", help="cProfile the import")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int,
                        help="processes for the prepare phase (default: one per core)")
    parser.add_argument("--keep", type=Path,
                        help="an empty folder to keep the data directory in (for inspection)")
    parser.add_argument("--no-search", action="store_true", help="measure the import only")
    args = parser.parse_args()
    bench_search = _search_bench()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        app = make_app(folder, args.url)
        result: dict[str, Any] = {"backend": app.engine.dialect.name,
                                  "cpus": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg()}
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            result["import"] = run_import(app, args.limit, args.workers)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(30)
            print(out.getvalue(), file=sys.stderr)
        else:
            result["import"] = run_import(app, args.limit, args.workers)
        result["load_average_after_import"] = os.getloadavg()
        result["sizes"] = sizes(app)
        if args.no_search:
            app.dispose()
            print(json.dumps(result, indent=2) if args.json else result)
            return
        search(app.reader, "warm up")
        result["search_admin"] = bench_search.latency(app.reader, None)
        result["search_staff_reader"] = bench_search.latency(app.reader, Reader(1, staff=True))
        result["people"] = people_latency(app)
        result["queries"] = len(bench_search.QUERIES)
        app.dispose()
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
