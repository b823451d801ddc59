"""`run_digests(app, cadence, now)`: every digest due at `now`, each sent exactly once.

For each person with at least one membership on `cadence` (and delivery not disabled by
bounces), the due period is computed in their time zone (`schedule`). A `DigestRun` row,
unique on (person, cadence, period start), is what makes a digest exactly-once: it is
inserted with ON CONFLICT DO NOTHING in the same transaction as the digest's `Delivery`
rows (kind "digest", composed bytes in `raw`, dedupe key `digest:<run id>[:<community>]`),
one transaction per person. Hence:

- a run killed half-way has committed whole persons only; the next run skips them (their
  row exists) and does the others;
- two instances on PostgreSQL may compose the same digest, but only one insert of its run
  row succeeds: the other waits on the row lock of the first transaction, then finds the
  conflict and sends nothing;
- a second run for the same period (`causerie digest run` by hand, or the scheduler after
  a restart) sends nothing.

A period with nothing new records the run as "empty" and sends nothing. The sender then
sends the delivery rows as they are (with no relay: into `<data_dir>/outbox`).

Work is read first, outside the write transactions (the archive once per run, then one
composition per person), so a write transaction holds the database for one person's
inserts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session

from bridge.app import App
from bridge.i18n import Catalogues, catalogues, normalise_language
from bridge.models import (
    Address,
    Community,
    DigestRun,
    Membership,
    Mute,
    Person,
    Role,
)
from bridge.tokens import make_token
from outbound.digest.content import Archive, CommunityContent, DigestFunctions, rank
from outbound.digest.render import (
    Reader,
    SectionView,
    Site,
    digest_mail,
    goal_views,
    item_view,
    render_digest,
)
from outbound.digest.schedule import CADENCES, Period, person_period, preview_period, zone
from outbound.notices import queue

log = logging.getLogger("causerie.digest")

_membership = Membership.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_run = DigestRun.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]

MANAGERS = frozenset({Role.OWNER.value, Role.MODERATOR.value})
DOMAINS = ("digest", "email")


@dataclass
class Recipient:
    person_id: int
    name: str
    language: str
    timezone: str
    digest_time: str
    digest_weekday: str
    address: str = ""
    communities: list[tuple[int, str]] = field(default_factory=list)  # (id, role)


@dataclass(frozen=True)
class CommunityInfo:
    id: int
    slug: str
    name: str


@dataclass
class RunReport:
    cadence: str
    now: datetime
    persons: int = 0
    queued: int = 0         # digests queued (persons)
    deliveries: int = 0     # delivery rows (several per person when one per community)
    empty: int = 0
    already: int = 0        # done before (this or another instance)
    seconds: float = 0.0
    bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"cadence": self.cadence, "now": self.now.isoformat(), "persons": self.persons,
                "queued": self.queued, "deliveries": self.deliveries, "empty": self.empty,
                "already": self.already, "seconds": round(self.seconds, 3),
                "bytes": self.bytes}


def _recipients(connection: Connection, cadence: str | None,
                person_id: int | None = None) -> dict[int, Recipient]:
    m, p, a = _membership.c, _person.c, _address.c
    query = (select(m.person_id, m.community_id, m.role, p.display_name, p.language,
                    p.timezone, p.digest_time, p.digest_weekday)
             .join(_person, p.id == m.person_id)
             .where(p.forgotten_at.is_(None), m.disabled_reason == ""))
    if cadence is not None:
        query = query.where(m.delivery_mode == cadence)
    if person_id is not None:
        query = query.where(m.person_id == person_id)
    people: dict[int, Recipient] = {}
    for row in connection.execute(query.order_by(m.person_id, m.community_id)):
        person = people.get(row.person_id)
        if person is None:
            person = people[row.person_id] = Recipient(
                row.person_id, row.display_name, row.language, row.timezone,
                row.digest_time, row.digest_weekday)
        person.communities.append((row.community_id, row.role))
    if people:
        for row in connection.execute(select(a.person_id, a.email).order_by(
                a.person_id, a.primary.desc(), a.id)):
            person = people.get(row.person_id)
            if person is not None and not person.address:
                person.address = row.email
    return {k: v for k, v in people.items() if v.address}


def _communities(connection: Connection) -> dict[int, CommunityInfo]:
    c = _community.c
    return {row.id: CommunityInfo(row.id, row.slug, row.name)
            for row in connection.execute(select(c.id, c.slug, c.name))}


def _mutes(connection: Connection, conversation_ids: Sequence[int]) -> dict[int, set[int]]:
    muted: dict[int, set[int]] = {}
    ids = sorted(conversation_ids)
    for i in range(0, len(ids), 900):
        for row in connection.execute(select(_mute.c.person_id, _mute.c.conversation_id)
                                      .where(_mute.c.conversation_id.in_(ids[i:i + 900]))):
            muted.setdefault(row.person_id, set()).add(row.conversation_id)
    return muted


@dataclass
class _Composer:
    """Turns one person's communities and period into sections and mail bytes."""

    app: App
    cadence: str
    archive: Archive
    communities: dict[int, CommunityInfo]
    muted: dict[int, set[int]]
    functions: DigestFunctions
    catalogue: Catalogues
    site: Site

    def reader(self, person: Recipient) -> Reader:
        instance = self.app.settings.instance
        return Reader(person.person_id, person.name, person.address,
                      normalise_language(person.language or instance.language),
                      zone(person.timezone, instance.timezone))

    def section(self, reader: Reader, content: CommunityContent, role: str,
                period: Period) -> SectionView:
        info = self.communities[content.community_id]
        lists = self.site.lists(info.slug, info.name)
        token = make_token(self.site.secret, "unsubscribe", reader.person_id, info.id)
        section = SectionView(community_id=info.id, slug=info.slug, name=info.name,
                              url=lists.archive_url,
                              unsubscribe_url=lists.unsubscribe_url(token))
        words = self.archive.person_words(reader.person_id)
        muted = self.muted.get(reader.person_id, set())
        could: set[int] = set()
        if self.functions.people_finder is not None and content.unanswered:
            could = set(self.functions.people_finder(
                reader.person_id, [i.conversation_id for i in content.unanswered]))
        limit = self.app.settings.digest.max_items
        for name in ("new", "active", "unanswered"):
            ranked = rank(getattr(content, name), reader.person_id, words, could, muted)
            if len(ranked) > limit:
                section.more = True
            setattr(section, name, [item_view(self.site, reader, i) for i in ranked[:limit]])
        section.contributors = [(who, str(n)) for who, n in content.contributors]
        if role in MANAGERS and self.functions.vitality is not None:
            goals = self.functions.vitality(info.id, "week", period.end)
            section.goals = goal_views(self.catalogue, reader.language, goals)
        return section

    def compose(self, person: Recipient, period: Period, now: datetime
                ) -> list[tuple[int | None, bytes]]:
        """[(community id or None for a combined digest, bytes)]; [] when nothing is new."""
        reader = self.reader(person)
        sections = []
        for community_id, role in person.communities:
            if community_id not in self.communities:
                continue
            content = self.archive.community(community_id, period)
            if content.empty:
                continue
            section = self.section(reader, content, role, period)
            if section.items:
                sections.append(section)
        if not sections:
            return []
        groups = [sections] if self.app.settings.digest.one_email_per_cadence \
            else [[s] for s in sections]
        mails: list[tuple[int | None, bytes]] = []
        for group in groups:
            subject, text, html = render_digest(self.catalogue, self.site, reader,
                                                self.cadence, (period.start, period.end),
                                                group)
            raw = digest_mail(self.site, reader, subject, text, html, now, group)
            mails.append((group[0].community_id if len(groups) > 1 else None, raw))
        return mails


def _insert_run(connection: Connection, person_id: int, cadence: str, period: Period,
                status: str, now: datetime) -> int | None:
    """The new run's id, or None when this (person, cadence, period) was done already."""
    values = {"person_id": person_id, "cadence": cadence, "period_start": period.start,
              "period_end": period.end, "status": status, "created_at": now}
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(_run).values(**values)
                 .on_conflict_do_nothing(index_elements=["person_id", "cadence",
                                                         "period_start"])
                 .returning(_run.c.id))
    return connection.execute(statement).scalar_one_or_none()


def _site(app: App) -> Site:
    instance = app.settings.instance
    return Site(name=instance.name, domain=instance.primary_domain, base_url=instance.base_url,
                secret=app.secret)


def run_digests(app: App, cadence: str, now: datetime, *,
                functions: DigestFunctions | None = None,
                catalogue: Catalogues | None = None,
                after_person: Callable[[int], None] | None = None) -> RunReport:
    """Queue every digest of `cadence` due at `now` that is not queued yet (see module doc).

    `after_person(person_id)` is called after each person's transaction has committed
    (progress reports; tests use it to stop a run half-way).
    """
    if cadence not in CADENCES:
        raise ValueError(f"cadence must be one of {', '.join(CADENCES)}")
    started = time.perf_counter()
    report = RunReport(cadence, now)
    functions = functions or DigestFunctions()
    settings = app.settings
    with app.reader.connect() as connection:
        people = _recipients(connection, cadence)
        report.persons = len(people)
        if not people:
            return report
        periods = {pid: person_period(cadence, now, settings.digest, settings.instance.timezone,
                                      p.timezone, p.digest_time, p.digest_weekday)
                   for pid, p in people.items()}
        since = min(p.start for p in periods.values())
        done = {(row.person_id, _aware(row.period_start)) for row in connection.execute(
            select(_run.c.person_id, _run.c.period_start).where(
                _run.c.cadence == cadence, _run.c.period_start >= since))}
        todo = [pid for pid in sorted(people) if (pid, periods[pid].start) not in done]
        report.already = len(people) - len(todo)
        if not todo:
            report.seconds = time.perf_counter() - started
            return report
        community_ids = sorted({cid for pid in todo for cid, _ in people[pid].communities})
        archive = Archive(connection, community_ids,
                          since=min(periods[pid].start for pid in todo),
                          until=max(periods[pid].end for pid in todo),
                          unanswered_after=timedelta(
                              hours=settings.digest.unanswered_after_hours))
        composer = _Composer(app, cadence, archive, _communities(connection),
                             _mutes(connection, list(archive.conversations)), functions,
                             catalogue or catalogues(DOMAINS), _site(app))
    for person_id in todo:
        person, period = people[person_id], periods[person_id]
        mails = composer.compose(person, period, now)
        with app.engine.begin() as connection:
            run_id = _insert_run(connection, person_id, cadence, period,
                                 "queued" if mails else "empty", now)
            if run_id is None:
                report.already += 1
            elif not mails:
                report.empty += 1
            else:
                with Session(bind=connection) as session:
                    for community_id, raw in mails:
                        key = f"digest:{run_id}" + (f":{community_id}" if community_id else "")
                        queue(session, dedupe_key=key, kind="digest", address=person.address,
                              raw=raw, now=now, community_id=community_id,
                              person_id=person_id)
                        report.deliveries += 1
                        report.bytes += len(raw)
                report.queued += 1
        if after_person is not None:
            after_person(person_id)
    report.seconds = time.perf_counter() - started
    log.info("%s digests at %s: %d queued, %d empty, %d already done (%.1f s)", cadence,
             now.isoformat(), report.queued, report.empty, report.already, report.seconds)
    return report


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def preview_digest(app: App, person_id: int, cadence: str, now: datetime, *,
                   functions: DigestFunctions | None = None,
                   catalogue: Catalogues | None = None) -> bytes | None:
    """The digest `person_id` would get for the period ending `now`, or None when empty.

    The communities are the person's memberships on `cadence`, or all their memberships
    when none is on it (so a manager can preview what a digest would look like).
    """
    period = preview_period(cadence, now)
    with app.reader.connect() as connection:
        people = _recipients(connection, cadence, person_id) \
            or _recipients(connection, None, person_id)
        person = people.get(person_id)
        if person is None:
            return None
        ids = [cid for cid, _ in person.communities]
        archive = Archive(connection, ids, since=period.start, until=period.end,
                          unanswered_after=timedelta(
                              hours=app.settings.digest.unanswered_after_hours))
        composer = _Composer(app, cadence, archive, _communities(connection),
                             _mutes(connection, list(archive.conversations)),
                             functions or DigestFunctions(), catalogue or catalogues(DOMAINS),
                             _site(app))
        mails = composer.compose(person, period, now)
    return mails[0][1] if mails else None


__all__ = ["RunReport", "preview_digest", "run_digests"]
