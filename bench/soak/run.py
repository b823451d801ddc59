"""The soak: load and repeated SIGKILLs of `causerie serve` for ten minutes, by hand.

    .venv/bin/python -m bench.soak.run [--minutes 10] [--kills 20] [--clients 5]
                                       [--rate 40] [--url DATABASE_URL] [--seed N]
                                       [--json PATH]

The same pieces as `tests/reliability/` (an `Instance` served by a child process, searches
against its web view, fan-out to members taking every post, RSS samples), for longer:

1. **kill phase** (the first 70 % of the time): `--clients` SMTP clients send numbered
   messages without pause, the web view is searched, and `serve` is SIGKILLed at random
   moments (at least `--kills` times) and restarted. Each client records which messages got
   their "250" (`tests.test_inbound_crash._send`).
2. **steady phase** (the rest; all of it with `--kills 0`): the same load without kills,
   to read RSS over time in one long-lived process: after warm-up it must not grow.
3. **retry and drain**: like an MTA, the clients resend every message that did not get its
   "250" (and a few that did: a "250" lost on the wire); then the processor and the sender
   finish. Every message is then archived exactly once: `lost` and `duplicated` must be 0;
   every delivery row is sent, or pending under the lease of a killed sender (due again
   ten minutes after its claim), never failed.

Prints the figures (and writes them as JSON with `--json`); exits 1 if anything was lost or
duplicated. Default database: a fresh SQLite file in a temporary folder. With `--url`, an
empty PostgreSQL database of your own (it is migrated; its tables are not emptied).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.reliability.conftest import (  # noqa: E402
    Feeder,
    Instance,
    RssSampler,
    Searcher,
    percentile,
    summary,
)


def run(minutes: float, kills: int, url: str | None, seed: int, rate: float) -> dict[str, Any]:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="causerie-soak-"))
    (root / "var").mkdir()
    instance = Instance(root, url or f"sqlite:///{root}/var/causerie.db")
    duration = minutes * 60
    kill_phase = duration * 0.7 if kills else 0.0  # --kills 0: all steady (RSS)
    gap = kill_phase / (kills + 1)
    killed = 0
    feeder = Feeder(instance, rate)
    rss_lives: list[list[tuple[float, int]]] = []
    try:
        instance.server.start()
        last_start = instance.app.clock.now()
        feeder.up.set()
        feeder.thread.start()
        started = time.monotonic()
        with Searcher(instance.web_port) as searcher:
            sampler = RssSampler(instance).__enter__()
            # 1. kills at random moments
            while time.monotonic() - started < kill_phase:
                time.sleep(rng.uniform(0.4 * gap, 0.95 * gap))
                instance.server.kill()
                feeder.up.clear()
                killed += 1
                sampler.__exit__()
                rss_lives.append(sampler.samples)
                time.sleep(rng.uniform(0, 1.0))  # clients meet a closed port meanwhile
                instance.server.start()
                feeder.up.set()
                last_start = instance.app.clock.now()
                sampler = RssSampler(instance).__enter__()
                print(f"  kill {killed} at {time.monotonic() - started:.0f} s; "
                      f"{len(feeder.acknowledged)} acknowledged so far", flush=True)
            # 2. steady phase: one long-lived process
            steady = RssSampler(instance, interval=5.0).__enter__()
            sampler.__exit__()
            time.sleep(max(0.0, duration - (time.monotonic() - started)))
            steady.__exit__()
            feeder.stop.set()
            feeder.thread.join(120)
            load_seconds = time.monotonic() - started
        accepted_during_load = len(feeder.acknowledged)
        # 3. retry what was not acknowledged (and a few that were), then drain
        missing, resent_acknowledged = feeder.retry(20)
        instance.wait_until_drained(600, since=last_start)
        ids = instance.archived_ids()
        expected = feeder.expected_ids()
        statuses = instance.delivery_statuses()
        processing, delivery = instance.lags()
        steady_rss = [kib for _, kib in steady.samples]
        quarter = max(1, len(steady_rss) // 4)
        figures: dict[str, Any] = {
            "minutes": round(load_seconds / 60, 1),
            "offered_msg_per_s": rate,
            "database": instance.app.engine.dialect.name,
            "kills": killed,
            "messages": feeder.attempted,
            "acknowledged_during_load": accepted_during_load,
            "not_acknowledged_then_resent": missing,
            "acknowledged_resent": resent_acknowledged,
            "accepted_msg_per_s": round(accepted_during_load / load_seconds, 1),
            "archived": len(set(ids)),
            "lost": len(expected - set(ids)),
            "duplicated": len(ids) - len(set(ids)),
            "unexpected": len(set(ids) - expected),
            "deliveries": statuses,
            "deliveries_expected": len(set(ids)) * instance.members,
            "post_deliveries": instance.post_deliveries(),
            "outbox_files": instance.outbox_files(),
            "processing_lag": summary(processing),
            "delivery_lag": summary(delivery),
            "searches": len(searcher.latencies),
            "search_errors_during_kills": len(searcher.errors),
            "search_p50_ms": round(statistics.median(searcher.latencies) * 1000, 1)
            if searcher.latencies else None,
            "search_p95_ms": round(percentile(searcher.latencies, 0.95) * 1000, 1),
            "rss_peak_per_life_mib": [round(max((k for _, k in life), default=0) / 1024)
                                      for life in rss_lives],
            "rss_steady_mib": [round(k / 1024) for k in steady_rss],
            "rss_steady_growth_mib": round(
                (statistics.mean(steady_rss[-quarter:]) - statistics.mean(
                    steady_rss[quarter:2 * quarter] or steady_rss[:quarter])) / 1024, 1)
            if steady_rss else None,
            "seed": seed,
        }
        return figures
    finally:
        feeder.stop.set()
        instance.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=20, help="at least this many SIGKILLs")
    parser.add_argument("--url", default=None, help="an empty database (default: SQLite)")
    parser.add_argument("--rate", type=float, default=40.0,
                        help="messages a second offered (each fans out to 3 members)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per search otherwise
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"soak: {args.minutes} minutes, at least {args.kills} kills, seed {seed}", flush=True)
    figures = run(args.minutes, args.kills, args.url, seed, args.rate)
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    bad = figures["lost"] or figures["duplicated"] or figures["unexpected"] \
        or figures["deliveries"].get("failed", 0) \
        or figures["post_deliveries"] != figures["deliveries_expected"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
