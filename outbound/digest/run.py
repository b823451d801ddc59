"""`run_digests(app, cadence, now)`: every digest due at `now`, each sent exactly once.

For each person with at least one membership on `cadence` (and delivery not disabled by
bounces), the due period is computed in their time zone (`schedule`). A `DigestRun` row,
unique on (person, cadence, period start), is what makes a digest exactly-once: it is
inserted with ON CONFLICT DO NOTHING in the same transaction as the digest's `Delivery`
rows (kind "digest", composed bytes in `raw`, dedupe key `digest:<run id>[:<community>]`).
Persons are written in groups (`GROUP_PERSONS`, or `GROUP_BYTES` of mail), one
transaction per group: each commit forces the disk, and one per person was most of a
large run's time. A group commits whole or not at all, so:

- a run killed half-way has committed whole groups only; the next run skips their
  persons (their rows exist) and does the others, the lost group included;
- two instances on PostgreSQL may compose the same digest, but only one insert of its run
  row succeeds: the other waits on the row lock of the first transaction, then finds the
  conflict and sends nothing (both take persons in the same order, so neither waits for
  a row the other holds while holding one it needs: no deadlock);
- a second run for the same period (`causerie digest run` by hand, or the scheduler after
  a restart) sends nothing.

A period with nothing new records the run as "empty" and sends nothing. The sender then
sends the delivery rows as they are (with no relay: into `<data_dir>/outbox`).

Work is read first, outside the write transactions (the archive once per run, then one
composition per person), so a write transaction holds the database for one group's inserts
only (a few megabytes, tens of milliseconds).
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

from bridge.app import App
from bridge.i18n import Catalogues, catalogues, normalise_language
from bridge.models import (
    Address,
    Community,
    Delivery,
    DigestRun,
    Membership,
    Mute,
    Person,
    Role,
)
from bridge.tokens import make_token
from outbound.digest.content import (
    Archive,
    CommunityContent,
    DigestFunctions,
    GoalLike,
    Item,
    rank,
    share,
)
from outbound.digest.render import Reader, Renderer, SectionView, Site, goal_views
from outbound.digest.schedule import CADENCES, Period, person_period, preview_period, zone

log = logging.getLogger("causerie.digest")

_membership = Membership.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_run = DigestRun.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]
_delivery = Delivery.__table__  # type: ignore[attr-defined]

MANAGERS = frozenset({Role.OWNER.value, Role.MODERATOR.value})
DOMAINS = ("digest", "email")
SECTIONS = ("new", "active", "unanswered")
GROUP_PERSONS = 200          # persons per write transaction
GROUP_BYTES = 8 * 2**20      # ... or fewer, when their mail reaches this size


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
    writing: float = 0.0    # of `seconds`, in write transactions (the disk's share)
    bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"cadence": self.cadence, "now": self.now.isoformat(), "persons": self.persons,
                "queued": self.queued, "deliveries": self.deliveries, "empty": self.empty,
                "already": self.already, "seconds": round(self.seconds, 3),
                "writing_seconds": round(self.writing, 3), "bytes": self.bytes}


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
        addresses = select(a.person_id, a.email).order_by(a.person_id, a.primary.desc(), a.id)
        if person_id is not None:
            addresses = addresses.where(a.person_id == person_id)
        for row in connection.execute(addresses):
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
class _Chosen:
    """One community's items for one reader, ranked, before the email's length cap."""

    info: CommunityInfo
    role: str
    content: CommunityContent
    ranked: dict[str, list[Item]]


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
    renderer: Renderer = field(init=False)
    _goals: dict[tuple[int, datetime], Sequence[GoalLike]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.renderer = Renderer(self.catalogue, self.site)

    def reader(self, person: Recipient) -> Reader:
        instance = self.app.settings.instance
        return Reader(person.person_id, person.name, person.address,
                      normalise_language(person.language or instance.language),
                      zone(person.timezone, instance.timezone))

    def ranked(self, reader: Reader, content: CommunityContent) -> dict[str, list[Item]]:
        """Each section's items in the reader's order (muted conversations left out)."""
        words = self.archive.person_words(reader.person_id)
        muted = self.muted.get(reader.person_id, set())
        could: set[int] = set()
        if self.functions.people_finder is not None and content.unanswered:
            could = set(self.functions.people_finder(
                reader.person_id, [i.conversation_id for i in content.unanswered]))
        return {name: rank(getattr(content, name), reader.person_id, words, could, muted)
                for name in SECTIONS}

    def goals(self, community_id: int, end: datetime) -> Sequence[GoalLike]:
        """The vitality figures, measured once per community and period end in a run."""
        assert self.functions.vitality is not None
        key = (community_id, end)
        if key not in self._goals:
            self._goals[key] = self.functions.vitality(community_id, "week", end)
        return self._goals[key]

    def section(self, reader: Reader, chosen: _Chosen, quotas: Sequence[int],
                period: Period) -> SectionView:
        info = chosen.info
        lists = self.site.lists(info.slug, info.name)
        token = make_token(self.site.secret, "unsubscribe", reader.person_id, info.id)
        section = SectionView(community_id=info.id, slug=info.slug, name=info.name,
                              url=lists.archive_url, unsubscribe_token=token,
                              unsubscribe_url=lists.unsubscribe_url(token))
        for name, quota in zip(SECTIONS, quotas, strict=True):
            items = chosen.ranked[name]
            section.more += len(items) - quota
            setattr(section, name, items[:quota])
        section.contributors = [(who, str(n)) for who, n in chosen.content.contributors]
        if chosen.role in MANAGERS and self.functions.vitality is not None:
            section.goals = goal_views(self.catalogue, reader.language,
                                       self.goals(info.id, period.end))
        return section

    def compose(self, person: Recipient, period: Period, now: datetime
                ) -> list[tuple[int | None, bytes]]:
        """[(community id or None for a combined digest, bytes)]; [] when nothing is new."""
        reader = self.reader(person)
        chosen: list[_Chosen] = []
        for community_id, role in person.communities:
            info = self.communities.get(community_id)
            if info is None:
                continue
            content = self.archive.community(community_id, period)
            if content.empty:
                continue
            ranked = self.ranked(reader, content)
            if any(ranked.values()):
                chosen.append(_Chosen(info, role, content, ranked))
        if not chosen:
            return []
        settings = self.app.settings.digest
        groups = [chosen] if settings.one_email_per_cadence else [[c] for c in chosen]
        mails: list[tuple[int | None, bytes]] = []
        for group in groups:
            sizes = [min(len(c.ranked[name]), settings.max_items)
                     for c in group for name in SECTIONS]
            quotas = share(sizes, self.app.settings.digest.max_items_per_email)
            sections = [self.section(reader, c, quotas[k * len(SECTIONS):(k + 1) * len(SECTIONS)],
                                     period) for k, c in enumerate(group)]
            subject, text, html = self.renderer.render(reader, self.cadence,
                                                       (period.start, period.end), sections)
            raw = self.renderer.mail(reader, subject, text, html, now, sections)
            mails.append((group[0].info.id if len(groups) > 1 else None, raw))
        return mails


@dataclass(frozen=True)
class _Composed:
    person: Recipient
    period: Period
    mails: list[tuple[int | None, bytes]]


def _insert_runs(connection: Connection, cadence: str, group: Sequence[_Composed],
                 now: datetime) -> dict[int, int]:
    """Insert the group's run rows in one statement; {person id: new run id} for the rows
    that were not there yet (a conflicting row, done before or by another instance, is
    left alone and absent from the answer). Persons go in in the order of their ids, as
    in every instance, so concurrent groups wait on each other's rows in one order."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    rows = [{"person_id": c.person.person_id, "cadence": cadence,
             "period_start": c.period.start, "period_end": c.period.end,
             "status": "queued" if c.mails else "empty", "created_at": now}
            for c in sorted(group, key=lambda c: c.person.person_id)]
    statement = (dialect.insert(_run).values(rows)
                 .on_conflict_do_nothing(index_elements=["person_id", "cadence",
                                                         "period_start"])
                 .returning(_run.c.person_id, _run.c.id))
    return {row.person_id: row.id for row in connection.execute(statement)}


def _insert_deliveries(connection: Connection, rows: Sequence[dict[str, object]]) -> None:
    """The digests' delivery rows, in one executemany (a retry's duplicate is a no-op)."""
    if rows:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        connection.execute(dialect.insert(_delivery).on_conflict_do_nothing(
            index_elements=["dedupe_key"]), list(rows))


def _write_group(app: App, cadence: str, now: datetime, group: Sequence[_Composed],
                 report: RunReport) -> None:
    """One transaction: every person's run row, and the deliveries of the new ones.

    The report is updated only once the transaction has committed.
    """
    counts = RunReport(cadence, now)
    deliveries: list[dict[str, object]] = []
    started = time.perf_counter()
    with app.engine.begin() as connection:
        runs = _insert_runs(connection, cadence, group, now)
        for composed in group:
            person = composed.person
            run_id = runs.get(person.person_id)
            if run_id is None:
                counts.already += 1
                continue
            if not composed.mails:
                counts.empty += 1
                continue
            counts.queued += 1
            for community_id, raw in composed.mails:
                key = f"digest:{run_id}" + (f":{community_id}" if community_id else "")
                deliveries.append({
                    "dedupe_key": key, "kind": "digest", "address": person.address,
                    "raw": raw, "community_id": community_id, "person_id": person.person_id,
                    "message_id": None, "status": "pending", "attempts": 0,
                    "next_attempt_at": now, "last_error": "", "created_at": now})
                counts.bytes += len(raw)
        _insert_deliveries(connection, deliveries)
    report.writing += time.perf_counter() - started
    report.already += counts.already
    report.empty += counts.empty
    report.queued += counts.queued
    report.deliveries += len(deliveries)
    report.bytes += counts.bytes


def _site(app: App) -> Site:
    instance = app.settings.instance
    return Site(name=instance.name, domain=instance.primary_domain, base_url=instance.base_url,
                secret=app.secret)


def run_digests(app: App, cadence: str, now: datetime, *,
                functions: DigestFunctions | None = None,
                catalogue: Catalogues | None = None,
                after_person: Callable[[int], None] | None = None,
                group: int = GROUP_PERSONS) -> RunReport:
    """Queue every digest of `cadence` due at `now` that is not queued yet (see module doc).

    `group` is the most persons written in one transaction. `after_person(person_id)` is
    called for each person once the transaction holding them has committed (progress
    reports; tests use it to stop a run half-way).
    """
    if cadence not in CADENCES:
        raise ValueError(f"cadence must be one of {', '.join(CADENCES)}")
    if group < 1:
        raise ValueError("group must be at least 1")
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
    pending: list[_Composed] = []
    size = 0
    for index, person_id in enumerate(todo):
        person, period = people[person_id], periods[person_id]
        mails = composer.compose(person, period, now)
        pending.append(_Composed(person, period, mails))
        size += sum(len(raw) for _, raw in mails)
        if len(pending) >= group or size >= GROUP_BYTES or index == len(todo) - 1:
            _write_group(app, cadence, now, pending, report)
            if after_person is not None:
                for composed in pending:
                    after_person(composed.person.person_id)
            pending, size = [], 0
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
    when none is on it (so a manager can preview what a digest would look like). With one
    email per community, the preview is the first community's.
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
