"""Who knows about X: people ranked by how much, how recently and how helpfully they wrote
on a subject, each with the threads that show it.

The subject is a search query (the same language as `archive.search`), run through the same
index and the same permission constraint: the reader's invisible communities are excluded
inside the index, and the matching messages are read back with the permission checked again
in SQL, so nothing a reader cannot see is ever counted. The index gives a window of the
newest `WINDOW` matching messages with their relevance (see `archive.search.sqlite`): for a
subject found in tens of thousands of messages, the recent ones decide, as they should.

Each matching message adds to its author's score:

    relevance (normalised to the best match, at least 0.2)
    × recency (0.4 + 0.6 × a half every `HALF_LIFE_DAYS`)
    × helpfulness

where helpfulness rewards answers over questions: the message that started a conversation
counts 0.5 (asking shows the need, not the knowledge), a reply 1, the first reply to a
question `FIRST_REPLY` and the reply that closed it `CLOSING` (the last message of a
conversation, written by someone other than its starter: the starter did not need to write
again). Summing the contributions rewards how much a person wrote on the subject.

Forgotten people (erasure) are never listed. Staff and guests are told apart by the
person's `kind`, else by the domain of their address (`staff_domains`, as
`bridge.directory.derived_kind` does).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from archive.search import Reader, backend_for, visible_communities
from archive.search.core import visible_only
from archive.search.plan import Plan, scope
from archive.search.query import AnyOf, InCommunity, Query, parse
from bridge.addresses import domain_of
from bridge.models import Address, Community, Conversation, Message, Person
from bridge.stopwords import ENGLISH, FRENCH

WINDOW = 3000
HALF_LIFE_DAYS = 730.0
STARTER, REPLY, FIRST_REPLY, CLOSING = 0.5, 1.0, 1.5, 2.0

_message = Message.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]
_address = Address.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ThreadRef:
    """A conversation that shows what a person knows."""

    conversation: int
    community: str
    subject: str
    messages: int          # the person's matching messages in it
    helpful: bool          # one of them was a first or a closing reply
    last_date: datetime

    def as_json(self) -> dict[str, Any]:
        return {"conversation": self.conversation, "community": self.community,
                "subject": self.subject, "messages": self.messages, "helpful": self.helpful,
                "last_date": self.last_date.isoformat()}


@dataclass(frozen=True)
class PersonHit:
    person_id: int
    name: str
    address: str
    kind: str              # staff or guest
    score: float
    messages: int          # matching messages written
    answers: int           # replies to someone else's conversation
    first_replies: int
    closing_replies: int
    last_date: datetime
    threads: tuple[ThreadRef, ...] = field(default_factory=tuple)

    @property
    def staff(self) -> bool:
        return self.kind == "staff"

    def as_json(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "name": self.name, "address": self.address,
                "kind": self.kind, "staff": self.staff, "guest": not self.staff,
                "score": round(self.score, 4), "messages": self.messages,
                "answers": self.answers, "first_replies": self.first_replies,
                "closing_replies": self.closing_replies,
                "last_date": self.last_date.isoformat(),
                "threads": [t.as_json() for t in self.threads]}


@dataclass
class _Tally:
    score: float = 0.0
    messages: int = 0
    answers: int = 0
    first: int = 0
    closing: int = 0
    last: datetime | None = None
    name: str = ""
    by_thread: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    helpful_threads: set[int] = field(default_factory=set)


def _aware(day: datetime) -> datetime:
    return day if day.tzinfo is not None else day.replace(tzinfo=UTC)


def _slugs(query: Query) -> set[str]:
    found: set[str] = set()
    for node in (*query.include, *query.exclude):
        for leaf in node.items if isinstance(node, AnyOf) else (node,):
            if isinstance(leaf, InCommunity):
                found.add(leaf.slug)
    return found


def _chunks(values: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def matching_messages(connection: Connection, text: str, reader: Reader | None, *,
                      community: str | None = None) -> list[tuple[int, float]]:
    """(message id, relevance) of the newest `WINDOW` messages matching `text` that
    `reader` may see (None: the administrator)."""
    query = parse(text)
    if community:
        query = replace(query, include=(*query.include, InCommunity(community.lower())))
    if query.empty:
        return []
    backend = backend_for(connection)
    slugs = _slugs(query)
    communities = {str(row.slug): int(row.id) for row in connection.execute(
        select(_community.c.id, _community.c.slug).where(
            _community.c.slug.in_(sorted(slugs))))} if slugs else {}
    visible = visible_communities(connection, reader)
    plan = backend.plan(connection, query, communities)
    if not plan.include and not plan.exclude:
        return []
    if visible is not None:
        if not visible:
            return []
        every = connection.execute(select(_community.c.id)).scalars()
        required, hidden = scope(visible, (int(i) for i in every))
        plan = Plan(plan.include + ((required,) if required else ()),
                    plan.exclude + ((hidden,) if hidden else ()), plan.highlight)
    return backend.candidates(connection, plan, window=WINDOW, pool=WINDOW)


def rank_people(connection: Connection, query: str, reader: Reader | None, *,
                limit: int = 10, threads: int = 3, community: str | None = None,
                staff_domains: Collection[str] = (), now: datetime | None = None
                ) -> list[PersonHit]:
    """The people who know most about `query`, best first, as `reader` may see them."""
    now = now or datetime.now(UTC)
    pool = matching_messages(connection, query, reader, community=community)
    if not pool or limit <= 0:
        return []
    relevance = dict(pool)
    best = max(relevance.values()) or 1.0
    visible = visible_communities(connection, reader)
    matched: list[Any] = []
    for chunk in _chunks(sorted(relevance)):
        statement = select(_message.c.id, _message.c.conversation_id, _message.c.author_id,
                           _message.c.date, _message.c.from_name).where(
            _message.c.id.in_(chunk), _message.c.status == "published",
            _message.c.author_id.is_not(None))
        if visible is not None:
            statement = statement.where(visible_only(_message.c.community_id, visible))
        matched.extend(connection.execute(statement))
    if not matched:
        return []
    roles = _roles(connection, sorted({int(m.conversation_id) for m in matched}))
    tallies: dict[int, _Tally] = defaultdict(_Tally)
    for m in matched:
        role = roles.get(int(m.id), STARTER)
        rel = max(relevance[m.id] / best if best > 0 else 1.0, 0.2)
        date = _aware(m.date)
        age = max(0.0, (now - date).total_seconds() / 86400.0)
        recency = 0.4 + 0.6 * math.pow(0.5, age / HALF_LIFE_DAYS)
        contribution = rel * recency * role
        tally = tallies[int(m.author_id)]
        tally.score += contribution
        tally.messages += 1
        tally.answers += role != STARTER
        tally.first += role in (FIRST_REPLY, FIRST_REPLY + CLOSING - REPLY)
        tally.closing += role in (CLOSING, FIRST_REPLY + CLOSING - REPLY)
        tally.by_thread[int(m.conversation_id)].append(contribution)
        if role > REPLY:
            tally.helpful_threads.add(int(m.conversation_id))
        if tally.last is None or date > tally.last:
            tally.last, tally.name = date, m.from_name or tally.name
    people = _people(connection, sorted(tallies))
    ranked = sorted(((pid, t) for pid, t in tallies.items() if pid in people),
                    key=lambda item: (item[1].score, item[1].last or now, -item[0]),
                    reverse=True)[:limit]
    wanted = {cid for _, t in ranked for cid in _best_threads(t, threads)}
    subjects = _subjects(connection, sorted(wanted))
    last_dates = _last_dates(matched)
    hits = []
    for person_id, tally in ranked:
        display_name, address, kind = people[person_id]
        refs = tuple(ThreadRef(cid, subjects[cid][0], subjects[cid][1],
                               len(tally.by_thread[cid]), cid in tally.helpful_threads,
                               last_dates[(person_id, cid)])
                     for cid in _best_threads(tally, threads) if cid in subjects)
        hits.append(PersonHit(
            person_id=person_id, name=display_name or tally.name or address, address=address,
            kind=kind or _derived_kind(address, staff_domains), score=tally.score,
            messages=tally.messages, answers=tally.answers, first_replies=tally.first,
            closing_replies=tally.closing, last_date=tally.last or now, threads=refs))
    return hits


def _best_threads(tally: _Tally, count: int) -> list[int]:
    return [cid for cid, _ in sorted(tally.by_thread.items(),
                                     key=lambda item: (sum(item[1]), item[0]),
                                     reverse=True)[:count]]


def _roles(connection: Connection, conversations: list[int]) -> dict[int, float]:
    """Each message of these conversations: starter's, reply, first reply or closing.

    The database orders each conversation's messages (by its (conversation, date) index) and
    only ids and authors come back: thousands of rows per query, where converting dates and
    sorting in Python cost three times the reading.
    """
    roles: dict[int, float] = {}
    for chunk in _chunks(conversations):
        rows = connection.execute(
            select(_message.c.conversation_id, _message.c.id, _message.c.author_id)
            .where(_message.c.conversation_id.in_(chunk), _message.c.status == "published")
            .order_by(_message.c.conversation_id, _message.c.date, _message.c.id)).all()
        start = 0
        while start < len(rows):
            end = start
            while end < len(rows) and rows[end][0] == rows[start][0]:
                end += 1
            _conversation_roles(rows[start:end], roles)
            start = end
    return roles


def _conversation_roles(rows: Sequence[Any], roles: dict[int, float]) -> None:
    """The roles of one conversation's (conversation, id, author) rows, in date order."""
    starter = rows[0][2]
    first_reply = next((row[1] for row in rows if row[2] != starter), None)
    last = rows[-1][1]
    for _, message, author in rows:
        if author == starter:
            roles[int(message)] = STARTER
            continue
        role = REPLY
        if message == first_reply:
            role = FIRST_REPLY
        if message == last:
            role = role + CLOSING - REPLY
        roles[int(message)] = role


def _people(connection: Connection, person_ids: list[int]) -> dict[int, tuple[str, str, str]]:
    """(display name, primary address, explicit kind) of the people not forgotten."""
    found: dict[int, tuple[str, str, str]] = {}
    addresses: dict[int, str] = {}
    for chunk in _chunks(person_ids):
        for row in connection.execute(
                select(_address.c.person_id, _address.c.email, _address.c.primary)
                .where(_address.c.person_id.in_(chunk))
                .order_by(_address.c.primary.desc(), _address.c.id.desc())):
            addresses[int(row.person_id)] = row.email
        for row in connection.execute(
                select(_person.c.id, _person.c.display_name, _person.c.kind)
                .where(_person.c.id.in_(chunk), _person.c.forgotten_at.is_(None))):
            found[int(row.id)] = (row.display_name or "", "", row.kind or "")
    return {pid: (name, addresses.get(pid, ""), kind)
            for pid, (name, _, kind) in found.items()}


def _derived_kind(address: str, staff_domains: Collection[str]) -> str:
    domain = domain_of(address)
    for staff in staff_domains:
        if domain == staff or domain.endswith("." + staff):
            return "staff"
    return "guest"


def _subjects(connection: Connection, conversations: list[int]) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(conversations):
        for row in connection.execute(
                select(_conversation.c.id, _conversation.c.subject, _community.c.slug)
                .join(_community, _community.c.id == _conversation.c.community_id)
                .where(_conversation.c.id.in_(chunk))):
            found[int(row.id)] = (row.slug, row.subject)
    return found


def _last_dates(matched: list[Any]) -> dict[tuple[int, int], datetime]:
    last: dict[tuple[int, int], datetime] = {}
    for m in matched:
        key = (int(m.author_id), int(m.conversation_id))
        date = _aware(m.date)
        if key not in last or date > last[key]:
            last[key] = date
    return last


def question_experts(connection: Connection, conversation_ids: Sequence[int], *,
                     limit: int = 10, staff_domains: Collection[str] = ()
                     ) -> dict[int, set[int]]:
    """For each conversation, the people who know most about its subject (the digest's
    "questions you could answer"). The subject is the query; the conversation's own
    messages do not count, so that asking does not make anyone an expert."""
    table = Conversation.__table__  # type: ignore[attr-defined]
    subjects = {int(row.id): row.subject for row in connection.execute(
        select(table.c.id, table.c.subject).where(table.c.id.in_(list(conversation_ids))))}
    experts: dict[int, set[int]] = {}
    for conversation_id, subject in subjects.items():
        words = [w for w in re.findall(r"\w{3,}", subject)
                 if w.lower() not in ENGLISH and w.lower() not in FRENCH][:8]
        if not words:
            experts[conversation_id] = set()
            continue
        hits = rank_people(connection, " OR ".join(words), None, limit=limit,
                           staff_domains=staff_domains)
        experts[conversation_id] = {hit.person_id for hit in hits
                                    if any(t.conversation != conversation_id
                                           for t in hit.threads)}
    return experts


class CouldAnswer:
    """The digest's people finder: (person, unanswered conversations) → the ones this
    person could answer. Experts are found once per conversation and kept for the run
    (a digest run asks for the same questions once per reader)."""

    def __init__(self, engine: Any, staff_domains: Collection[str] = (),
                 keep: int = 5_000) -> None:
        self.engine = engine
        self.staff_domains = tuple(staff_domains)
        self.keep = keep
        self.experts: dict[int, set[int]] = {}

    def __call__(self, person_id: int, conversation_ids: Sequence[int]) -> set[int]:
        missing = [c for c in conversation_ids if c not in self.experts]
        if missing:
            if len(self.experts) + len(missing) > self.keep:
                self.experts.clear()
            with self.engine.connect() as connection:
                self.experts.update(question_experts(connection, missing,
                                                     staff_domains=self.staff_domains))
        return {c for c in conversation_ids if person_id in self.experts.get(c, set())}
