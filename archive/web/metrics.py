"""`/metrics` in the Prometheus text format.

Counts of messages and deliveries are read from the database when scraped (the database
is the bus, so it knows them exactly, across restarts and instances); the search latency
histogram is kept by the web view object that serves the searches (per process, as
Prometheus expects of a histogram).
"""

from __future__ import annotations

import bisect
import threading

from sqlalchemy import Engine, func, select

from bridge.models import Delivery, InboxItem

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]


class Histogram:
    """A cumulative histogram (thread-safe: handlers run in a thread pool)."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self.total += seconds

    def lines(self, name: str, help_text: str) -> list[str]:
        with self.lock:
            counts, total = list(self.counts), self.total
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        running += counts[-1]
        out += [f'{name}_bucket{{le="+Inf"}} {running}', f"{name}_sum {total:.6f}",
                f"{name}_count {running}"]
        return out


def render(engine: Engine, search_latency: Histogram) -> str:
    with engine.connect() as connection:
        inbox = dict(connection.execute(
            select(_inbox.c.status, func.count()).group_by(_inbox.c.status)).all())
        deliveries = dict(connection.execute(
            select(_delivery.c.status, func.count()).group_by(_delivery.c.status)).all())
    lines = ["# HELP causerie_messages_received_total Messages accepted into the inbox.",
             "# TYPE causerie_messages_received_total counter",
             f"causerie_messages_received_total {sum(inbox.values())}",
             "# HELP causerie_messages Messages in the inbox by processing state.",
             "# TYPE causerie_messages gauge"]
    for state in ("processed", "pending", "held", "failed", "rejected", "discarded"):
        key = "done" if state == "processed" else state
        lines.append(f'causerie_messages{{state="{state}"}} {inbox.get(key, 0)}')
    lines += ["# HELP causerie_deliveries Outgoing deliveries by state.",
              "# TYPE causerie_deliveries gauge"]
    for state in ("sent", "failed", "pending"):
        lines.append(f'causerie_deliveries{{state="{state}"}} {deliveries.get(state, 0)}')
    lines += search_latency.lines("causerie_search_seconds",
                                  "Web search latency in seconds.")
    return "\n".join(lines) + "\n"
