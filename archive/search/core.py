"""Search: parse, find candidates in the index, check permissions, rank, group, explain.

1. The query is parsed (`query.parse`) and planned into index terms by the backend of the
   engine's dialect (`SearchBackend`), with the reader's permission as one more index
   constraint: the communities they may not see are excluded inside the index (or the ones
   they may see required), so results and counts are computed among visible messages only.
2. The backend returns a pool of candidate messages with their relevance (bm25 on SQLite,
   ts_rank on PostgreSQL), from a bounded window of the newest matches (see sqlite.py).
3. The candidates are read from `message` with the permission checked again in SQL (visible
   communities only), and the hits of the page once more with their status (published only):
   the index narrows, the tables decide, so a stale index entry can hide a result but never
   leak one.
4. Score = relevance (normalised to the best candidate) + a recency boost that halves every
   year; one hit per conversation (its best message), with the number of messages in that
   conversation that match (counted by the index, within the reader's permission).
5. Snippets are cut from the hits' texts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, select

from archive.search.plan import Plan, scope
from archive.search.postgres import PostgresBackend
from archive.search.query import AnyOf, InCommunity, Query, parse
from archive.search.snippets import snippet
from archive.search.sqlite import SqliteBackend
from bridge.models import Community, Membership, Message, Visibility
from bridge.searchtext import Analyzer

# Newest matches ranked (see sqlite.py). Scoring a match costs 2-3 us in FTS5 (bm25, rowid
# walk, the row in Python): 500 keeps a word found in 20,000 messages within the latency
# target; a rarer word has all its matches ranked whatever the window.
WINDOW = 500
# Best of them read for grouping, at least, or five per hit asked for (a conversation's
# matching messages share one hit): reading a candidate costs about 7 us.
POOL = 100
RECENCY_WEIGHT = 0.2     # what a message of today gains over a very old one, at equal relevance
HALF_LIFE_DAYS = 365.0

_message = Message.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Reader:
    """Who is searching. `None` in place of a Reader is the administrator (sees everything).

    `person_id` None is an anonymous visitor; `staff` counts only when signed in;
    `communities` are the ids of the communities the person is a member of.
    """

    person_id: int | None = None
    staff: bool = False
    communities: frozenset[int] = frozenset()

    @property
    def signed_in(self) -> bool:
        return self.person_id is not None


def reader_for(connection: Connection, person_id: int | None, staff: bool) -> Reader:
    """A Reader with the person's memberships read from the database."""
    if person_id is None:
        return Reader()
    ids = connection.execute(select(_membership.c.community_id).where(
        _membership.c.person_id == person_id)).scalars()
    return Reader(person_id, staff, frozenset(int(i) for i in ids))


def visible_communities(connection: Connection, reader: Reader | None) -> list[int] | None:
    """The ids of the communities `reader` may read; None for the administrator (all)."""
    if reader is None:
        return None
    allowed = _community.c.visibility == Visibility.PUBLIC.value
    if reader.signed_in and reader.staff:
        allowed = allowed | (_community.c.visibility == Visibility.INTERNAL.value)
    if reader.signed_in and reader.communities:
        allowed = allowed | _community.c.id.in_(sorted(reader.communities))
    return [int(i) for i in connection.execute(select(_community.c.id).where(allowed))
            .scalars()]


class SearchBackend(Protocol):
    """What each database's full-text search provides."""

    name: str

    def plan(self, connection: Connection, query: Query,
             communities: Mapping[str, int]) -> Plan: ...

    def candidates(self, connection: Connection, plan: Plan, *, window: int,
                   pool: int) -> list[tuple[int, float]]: ...

    def counts(self, connection: Connection, plan: Plan,
               conversations: Sequence[int]) -> dict[int, int]: ...

    def total(self, connection: Connection, plan: Plan) -> int: ...

    def rebuild(self, connection: Connection) -> None: ...


def backend_for(engine: Engine | Connection) -> SearchBackend:
    """The backend for a database, chosen by its dialect."""
    if engine.dialect.name == "sqlite":
        return SqliteBackend()
    if engine.dialect.name == "postgresql":
        return PostgresBackend()
    raise ValueError(f"no search backend for {engine.dialect.name}")


@dataclass(frozen=True)
class Hit:
    """One conversation found: its best-matching message, and how many of its messages match."""

    id: int                  # the message's row id
    message_id: str          # its Message-ID, without angle brackets
    conversation: int
    community: str           # slug
    subject: str
    author: str              # display name, else address
    author_address: str
    date: datetime
    score: float
    matches: int
    snippet: str             # plain text
    snippet_html: str        # HTML-escaped, matches in <mark>

    def as_json(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "conversation": self.conversation,
                "community": self.community, "subject": self.subject, "author": self.author,
                "author_address": self.author_address, "date": self.date.isoformat(),
                "score": round(self.score, 6), "matches": self.matches,
                "snippet": self.snippet, "snippet_html": self.snippet_html}


@dataclass(frozen=True)
class Results:
    hits: list[Hit]
    total: int | None = None   # matching messages, when asked for


def _slugs(query: Query) -> set[str]:
    found: set[str] = set()
    for node in (*query.include, *query.exclude):
        for leaf in node.items if isinstance(node, AnyOf) else (node,):
            if isinstance(leaf, InCommunity):
                found.add(leaf.slug)
    return found


def search(engine: Engine, text: str, *, reader: Reader | None = None,
           community: str | None = None, limit: int = 20, offset: int = 0,
           now: datetime | None = None, count_total: bool = False) -> Results:
    """Search the archive as `reader` (None: the administrator, who sees everything).

    `community` restricts to one community (by slug), like `community:SLUG` in the query.
    """
    query = parse(text)
    if community:
        query = replace(query, include=(*query.include, InCommunity(community.lower())))
    if query.empty or limit <= 0:
        return Results([], 0 if count_total else None)
    now = now or datetime.now(UTC)
    backend = backend_for(engine)
    with engine.connect() as connection:
        slugs = _slugs(query)
        communities = {str(row.slug): int(row.id) for row in connection.execute(
            select(_community.c.id, _community.c.slug).where(
                _community.c.slug.in_(sorted(slugs))))} if slugs else {}
        visible = visible_communities(connection, reader)
        plan = backend.plan(connection, query, communities)
        if not plan.include and not plan.exclude:
            return Results([], 0 if count_total else None)
        if visible is not None:
            if not visible:
                return Results([], 0 if count_total else None)
            every = connection.execute(select(_community.c.id)).scalars()
            required, hidden = scope(visible, (int(i) for i in every))
            plan = Plan(plan.include + ((required,) if required else ()),
                        plan.exclude + ((hidden,) if hidden else ()), plan.highlight)
        pool = backend.candidates(connection, plan, window=WINDOW,
                                  pool=max(POOL, (offset + limit) * 5))
        ranked = _rank(connection, pool, visible, now)[offset:offset + limit]
        if not ranked:
            return Results([], backend.total(connection, plan) if count_total else None)
        hits = _details(connection, ranked, visible)
        counts = backend.counts(connection, plan, [hit["conversation_id"] for hit in hits])
        total = backend.total(connection, plan) if count_total else None
    analyzer = Analyzer()
    return Results([_hit(hit, counts, plan.highlight, analyzer) for hit in hits], total)


def visible_only(column: Any, visible: list[int]) -> Any:
    """`column IN visible`, written so that no index on `column` is used for it.

    The rows are found by id; an index on the community would have SQLite read every
    message of the visible communities instead (5 ms instead of 0.2 for 200 ids).
    """
    return (column + 0).in_(visible)


def _rank(connection: Connection, pool: list[tuple[int, float]], visible: list[int] | None,
          now: datetime) -> list[dict[str, Any]]:
    """The pool's best message per conversation, best first, with its score.

    Reads only what grouping needs (id, conversation, date, community: the first columns of a
    row); the status, which SQLite stores after the text (through a long message's overflow
    pages), and the rest are read for the page's hits alone (`_details`).
    """
    if not pool:
        return []
    relevance = dict(pool)
    best = max(relevance.values())
    scale = 1.0 / best if best > 0 else 0.0
    m = _message
    statement = select(m.c.id, m.c.conversation_id, m.c.date).where(
        m.c.id.in_(list(relevance)))
    if visible is not None:
        statement = statement.where(visible_only(m.c.community_id, visible))
    # (score, date, id) of each conversation's best message: tuples, the hot loop of a search.
    kept: dict[int, tuple[float, datetime, int]] = {}
    for row_id, conversation, day in connection.execute(statement):
        if day.tzinfo is None:
            day = day.replace(tzinfo=UTC)
        age = max(0.0, (now - day).total_seconds() / 86400.0)
        scored = (relevance[row_id] * scale + RECENCY_WEIGHT * 0.5 ** (age / HALF_LIFE_DAYS),
                  day, row_id)
        if conversation not in kept or scored[:2] > kept[conversation][:2]:
            kept[conversation] = scored
    return [{"id": row_id, "conversation_id": conversation, "date": day, "score": score}
            for conversation, (score, day, row_id) in sorted(
                kept.items(), key=lambda item: item[1], reverse=True)]


def _details(connection: Connection, ranked: list[dict[str, Any]],
             visible: list[int] | None) -> list[dict[str, Any]]:
    """The ranked hits of one page with what they show: subject, author, community, text.

    Only published messages of visible communities: the index narrows, the tables decide (a
    hit whose index entry is stale is dropped from the page, never shown).
    """
    m, c = _message, _community
    statement = (select(m.c.id, m.c.message_id, m.c.subject, m.c.from_name, m.c.from_address,
                        m.c.language, m.c.text, c.c.slug.label("community"))
                 .join(c, c.c.id == m.c.community_id)
                 .where(m.c.id.in_([hit["id"] for hit in ranked]),
                        m.c.status == "published"))
    if visible is not None:
        statement = statement.where(visible_only(m.c.community_id, visible))
    rows = {row.id: row._asdict() for row in connection.execute(statement)}
    return [{**rows[hit["id"]], **hit} for hit in ranked if hit["id"] in rows]


def _hit(row: Mapping[str, Any], counts: Mapping[int, int], terms: Collection[str],
         analyzer: Analyzer) -> Hit:
    cut = snippet(row["text"] or row["subject"], row["language"], terms, analyzer)
    return Hit(id=row["id"], message_id=row["message_id"], conversation=row["conversation_id"],
               community=row["community"], subject=row["subject"],
               author=row["from_name"] or row["from_address"],
               author_address=row["from_address"], date=row["date"], score=row["score"],
               matches=max(1, counts.get(row["conversation_id"], 1)),
               snippet=cut.text, snippet_html=cut.html)


def rebuild_index(connection: Connection) -> None:
    """Re-index every published message (SQLite: needs `sqlite_functions` registered)."""
    backend_for(connection).rebuild(connection)
