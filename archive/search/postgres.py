"""The PostgreSQL backend: a tsvector column on `message`, set by a trigger, with a GIN index.

Migration 0002 adds `message.search_vector`, computed by `causerie_search_vector(...)` in a
BEFORE INSERT/UPDATE trigger (so in the same statement as the row, whatever code writes it):

- subject (weight A) and body (weight D) through the text search configuration
  `causerie_en` or `causerie_fr` (the message's language): `unaccent` then the Snowball
  stemmer and stop words of that language, numbers unstemmed; the text's punctuation is
  blanked out first so that PostgreSQL's parser cuts words where `bridge.searchtext` does
  (it would otherwise keep "alice@example.com" or "e-mail" whole);
- author terms as lexemes prefixed with "@" and meta terms prefixed with "#" (see
  `archive.search.plan`), which no word of a text can collide with.

Query words are turned into lexemes by PostgreSQL itself (`to_tsvector` on each folded word,
one round trip for the whole query), so a query always asks for exactly what PostgreSQL
indexed, stop words included. The tsquery is then written here from those lexemes, each one
quoted, and passed as a bound parameter: no user text reaches tsquery syntax unquoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from sqlalchemy import Connection, bindparam, text

from archive.search.plan import (
    EVERY_MESSAGE,
    Author,
    Either,
    Expr,
    Meta,
    Plan,
    Text,
    build,
    query_words,
)
from archive.search.query import Query

FIRST_SPAN = 8      # the first range of ids asked: the window's size times this
SPAN_GROWTH = 8     # each next range, this many times wider

# ts_rank weights, in the order {D (body), C, B, A (subject)}.
_WEIGHTS = "'{0.3, 0, 0, 1}'"


def quote(lexeme: str) -> str:
    """A tsquery lexeme literal."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


class _Lexicon:
    """Lexemes PostgreSQL computed for the query's folded words."""

    def __init__(self, connection: Connection, words: set[str]) -> None:
        self.terms: dict[str, dict[str, str | None]] = {}
        if not words:
            return
        rows = connection.execute(text(
            "SELECT w, tsvector_to_array(to_tsvector('causerie_en', w)) AS en, "
            "tsvector_to_array(to_tsvector('causerie_fr', w)) AS fr, "
            "tsvector_to_array(to_tsvector('causerie_simple', w)) AS simple "
            "FROM unnest(CAST(:words AS text[])) AS w"), {"words": sorted(words)})
        for row in rows:
            self.terms[row.w] = {"en": row.en[0] if row.en else None,
                                 "fr": row.fr[0] if row.fr else None,
                                 "simple": row.simple[0] if row.simple else None}

    def text_terms(self, word: str) -> Mapping[str, str | None]:
        terms = self.terms.get(word, {})
        return {"en": terms.get("en"), "fr": terms.get("fr")}

    def author_term(self, word: str) -> str | None:
        return self.terms.get(word, {}).get("simple")


def _phrase(phrase: tuple[tuple[int, str], ...], weight: str) -> str:
    parts = [quote(phrase[0][1]) + weight]
    for (before, _), (position, term) in pairwise(phrase):
        distance = position - before
        parts.append(("<->" if distance == 1 else f"<{distance}>") + " "
                     + quote(term) + weight)
    return " ".join(parts)


def _render(expr: Expr) -> str:
    if isinstance(expr, Text):
        weight = ":A" if expr.subject_only else ""
        return "(" + " | ".join(f"({_phrase(p, weight)})" for p in expr.phrases) + ")"
    if isinstance(expr, Author):
        return "(" + " & ".join(quote("@" + term) for term in expr.terms) + ")"
    if isinstance(expr, Meta):
        return "(" + " | ".join(quote("#" + term) for term in expr.terms) + ")"
    if isinstance(expr, Either):
        return "(" + " | ".join(_render(item) for item in expr.items) + ")"
    raise AssertionError(expr)


def tsquery(plan: Plan) -> str:
    """The tsquery text for a plan."""
    include = [_render(expr) for expr in plan.include] or [_render(Meta((EVERY_MESSAGE,)))]
    expression = " & ".join(include)
    if plan.exclude:
        expression += " & !(" + " | ".join(_render(expr) for expr in plan.exclude) + ")"
    return expression


def _newest(connection: Connection, query: str, window: int) -> list[int]:
    """The ids of the newest `window` messages matching `query`, newest first.

    Asked for in ranges of ids, newest first, each `SPAN_GROWTH` times wider than the last,
    until the window is full: `ORDER BY id DESC LIMIT` over the whole GIN match would visit
    and recheck every matching row in the heap (18,000 rows, 128 ms for "error" on the bench's
    archive) to keep the newest 500. In a range, only the matches in it are visited.
    """
    high = connection.execute(text("SELECT max(id) FROM message")).scalar()
    if high is None:
        return []
    found: list[int] = []
    span = window * FIRST_SPAN
    while True:
        low = max(0, int(high) - span)
        found += connection.execute(text(
            "SELECT id FROM message WHERE search_vector @@ CAST(:q AS tsquery) "
            "AND id > :low AND id <= :high ORDER BY id DESC LIMIT :n"),
            {"q": query, "low": low, "high": high, "n": window - len(found)}).scalars()
        if len(found) >= window or low == 0:
            return [int(i) for i in found]
        high, span = low, span * SPAN_GROWTH


class PostgresBackend:
    """PostgreSQL full-text search."""

    name = "postgresql"

    def plan(self, connection: Connection, query: Query,
             communities: Mapping[str, int]) -> Plan:
        return build(query, _Lexicon(connection, query_words(query)), communities)

    def candidates(self, connection: Connection, plan: Plan, *, window: int,
                   pool: int) -> list[tuple[int, float]]:
        ids = _newest(connection, tsquery(plan), window)
        if not ids:
            return []
        terms = plan.text_terms
        if not terms:
            return [(i, 0.0) for i in ids[:pool]]
        rows = connection.execute(text(
            f"SELECT id, ts_rank({_WEIGHTS}, search_vector, CAST(:rq AS tsquery), 1) AS rel "
            "FROM message WHERE id = ANY(CAST(:ids AS integer[])) "
            "ORDER BY rel DESC, id DESC LIMIT :pool"),
            {"rq": " | ".join(quote(t) for t in terms), "ids": ids, "pool": pool})
        return [(int(row.id), float(row.rel)) for row in rows]

    def counts(self, connection: Connection, plan: Plan,
               conversations: Sequence[int]) -> dict[int, int]:
        if not conversations:
            return {}
        rows = connection.execute(text(
            "SELECT conversation_id AS conversation, count(*) AS n FROM message "
            "WHERE search_vector @@ CAST(:q AS tsquery) AND status = 'published' "
            "AND conversation_id IN :conversations GROUP BY conversation_id").bindparams(
                bindparam("conversations", expanding=True)),
            {"q": tsquery(plan), "conversations": list(conversations)})
        return {int(row.conversation): int(row.n) for row in rows}

    def total(self, connection: Connection, plan: Plan) -> int:
        return int(connection.execute(text(
            "SELECT count(*) FROM message WHERE search_vector @@ CAST(:q AS tsquery)"),
            {"q": tsquery(plan)}).scalar_one())

    def rebuild(self, connection: Connection) -> None:
        """Recompute every message's search vector (after a change of configuration)."""
        connection.execute(text("UPDATE message SET status = status"))
