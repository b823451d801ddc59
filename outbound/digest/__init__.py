"""Digests: scheduled summaries of each person's communities, and the managers' vitality view.

- `schedule`: which period is due for a person (their time zone, time and weekday);
- `content`: what happened in a community over a period, and its ranking for one reader;
- `render`: the multipart/alternative mail (HTML with inline CSS and a plain-text part);
- `run`: `run_digests(app, cadence, now)`, exactly once per person, cadence and period;
- `service`: the APScheduler job that calls it every quarter of an hour in `serve`;
- `replies`: the answer to a plain reply sent to a digest's own address.

`outbound` does not import `archive`: the vitality figures (and, later, the people finder)
come in as functions in `DigestFunctions`, given by the wiring.
"""

from outbound.digest.content import DigestFunctions
from outbound.digest.run import RunReport, preview_digest, run_digests

__all__ = ["DigestFunctions", "RunReport", "preview_digest", "run_digests"]
