"""The digest schedule in `serve`: APScheduler 3's AsyncIOScheduler, jobs kept in the database.

One job per cadence (`causerie-digest-daily`, `causerie-digest-weekly`) fires every
`INTERVAL` and calls `run_digests(app, cadence, now)`, which decides who is due (each
person's own time zone and time) and what was sent already. The schedule itself carries no
state a crash could lose: `DigestRun` rows do.

- The job store is APScheduler's `SQLAlchemyJobStore` on the same database (table
  `apscheduler_jobs`), so the next run time survives restarts; `coalesce=True` turns the
  runs missed during downtime into one, and `misfire_grace_time` lets that one run even
  when the process comes back late. Each start also runs the jobs at once (the periods
  that ended while the process was down are due then). Several instances on PostgreSQL
  each run the job; the unique run rows make that harmless.
- A persisted job must name its function by import path and keep picklable arguments,
  but the run needs the `App` (engine, settings, clock). So the job's function is
  `scheduled_run(cadence, service=...)` and `_ContextExecutor` supplies the `service` when it
  runs the job: the context is held by the executor object, not by a module global.
- The run is blocking database work: it goes to a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.base import run_job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bridge.app import App
from bridge.clock import utcnow
from outbound.digest.content import DigestFunctions
from outbound.digest.run import RunReport, run_digests
from outbound.digest.schedule import CADENCES

log = logging.getLogger("causerie.digest")

INTERVAL = timedelta(minutes=15)
MISFIRE_GRACE = timedelta(hours=6)
JOB_TABLE = "apscheduler_jobs"


def scheduled_run(cadence: str, service: DigestService | None = None) -> RunReport:
    """What the persisted job calls (by import path); the executor passes `service`."""
    if service is None:
        raise RuntimeError("digest jobs run only under DigestService's executor")
    return service.run(cadence)


@dataclass
class _BoundJob:
    """A job with the service added to its keyword arguments, as `run_job` expects a job."""

    job: Any
    context: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {**self.job.kwargs, "service": self.context}

    def __str__(self) -> str:
        return str(self.job)


class _ContextExecutor(AsyncIOExecutor):  # type: ignore[misc]
    """Runs jobs in the loop's thread pool, giving them the service (`service=`)."""

    def __init__(self, context: Any) -> None:
        super().__init__()
        self.context = context

    def _do_submit_job(self, job: Any, run_times: list[Any]) -> None:
        def done(future: asyncio.Future[Any]) -> None:
            self._pending_futures.discard(future)
            try:
                events = future.result()
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, events)

        future = self._eventloop.run_in_executor(
            None, run_job, _BoundJob(job, self.context), job._jobstore_alias, run_times,
            self._logger.name)
        future.add_done_callback(done)
        self._pending_futures.add(future)


class DigestService:
    """The `serve` part that sends digests on schedule (see the module's docstring)."""

    name = "digests"

    def __init__(self, app: App, functions: DigestFunctions | None = None,
                 interval: timedelta = INTERVAL,
                 on_report: Callable[[RunReport], None] | None = None) -> None:
        self.app = app
        self.functions = functions or DigestFunctions()
        self.interval = interval
        self.on_report = on_report
        self.scheduler: AsyncIOScheduler | None = None

    def run(self, cadence: str) -> RunReport:
        report = run_digests(self.app, cadence, self.app.clock.now(), functions=self.functions)
        if self.on_report is not None:
            self.on_report(report)
        return report

    def make_scheduler(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.app.engine,
                                                     tablename=JOB_TABLE)},
            executors={"default": _ContextExecutor(self)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": int(MISFIRE_GRACE.total_seconds())},
            timezone="UTC")
        for cadence in CADENCES:
            scheduler.add_job(
                f"{__name__}:scheduled_run", IntervalTrigger(
                    seconds=int(self.interval.total_seconds()), timezone="UTC"),
                args=[cadence], id=f"causerie-digest-{cadence}",
                name=f"{cadence} digests", replace_existing=True,
                next_run_time=utcnow())  # wall clock: APScheduler's
        return scheduler

    async def start(self) -> None:
        self.scheduler = self.make_scheduler()
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None
