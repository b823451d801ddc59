"""Load: sustained SMTP from several concurrent clients, web searches and fan-out at once.

For a fixed short duration Postfix's `smtp-source` keeps several sessions sending into the
running `serve`, a client searches the web view all the while, and every post fans out to
the community's members (delivery "each"; no relay, so into the outbox Maildir). Nothing
may be lost: every message acknowledged is archived once and delivered to every member.
The figures (accepted msg/s, processing and delivery lag, search p95, RSS samples) are
printed in the run's summary; only sanity is asserted on them, since CI machines vary.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    FIGURES,
    Instance,
    RssSampler,
    Searcher,
    have_smtp_source,
    percentile,
    smtp_source,
    summary,
)

DURATION = 12.0  # seconds of sending
SESSIONS = 5     # concurrent SMTP clients
BATCH = 100      # messages per smtp-source run


@pytest.mark.slow
def test_sustained_smtp_with_searches_and_fan_out_loses_nothing(
        instance_factory: list[Instance], tmp_path: Path) -> None:
    """On SQLite only, to keep the folder short: the PostgreSQL path is loaded by the kill
    test (both backends) and by `bench/soak --url`."""
    if have_smtp_source():
        pytest.skip(have_smtp_source())
    (tmp_path / "var").mkdir()
    db_url = f"sqlite:///{tmp_path / 'var' / 'causerie.db'}"
    instance = Instance(tmp_path, db_url)
    instance_factory.append(instance)
    instance.server.start()
    sent = 0
    with RssSampler(instance) as rss, Searcher(instance.web_port) as searcher:
        started = time.monotonic()
        while time.monotonic() - started < DURATION:
            result = smtp_source(instance.smtp_port, BATCH, SESSIONS)
            assert result.returncode == 0, (result.stdout, result.stderr,
                                            instance.log_tail())
            sent += BATCH
        elapsed = time.monotonic() - started
        instance.wait_until_drained(120)
    ids = instance.archived_ids()
    assert len(ids) == len(set(ids)), "a message was archived twice"
    assert len(ids) == sent, f"{sent} acknowledged, {len(ids)} archived"
    statuses = instance.delivery_statuses()
    assert statuses == {"sent": sent * instance.members}, statuses
    assert instance.outbox_files() == sent * instance.members
    processing, delivery = instance.lags()
    assert searcher.latencies, f"no search answered: {searcher.errors[:5]}"
    assert not searcher.errors, searcher.errors[:5]
    assert rss.samples and max(kib for _, kib in rss.samples) < 2 * 1024 * 1024
    backend = db_url.split(":", 1)[0]
    samples = rss.text(every=max(1, len(rss.samples) // 8))
    p95 = percentile(searcher.latencies, .95) * 1000
    FIGURES.extend([
        f"load [{backend}]: {sent} messages from {SESSIONS} clients in {elapsed:.1f} s = "
        f"{sent / elapsed:.0f} msg/s accepted; {sent * instance.members} deliveries",
        f"  processing lag {summary(processing)}; delivery lag {summary(delivery)}",
        f"  {len(searcher.latencies)} searches, p95 {p95:.0f} ms; RSS {samples}",
    ])
    print("\n".join(FIGURES[-3:]))
