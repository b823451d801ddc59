"""The SQLite backend: an FTS5 table kept by triggers, queried with a MATCH built here.

The table `message_search` (migration 0002) is contentless (`content=''`): it stores only the
index, not a second copy of the text, which keeps the data directory small (the index is about
a quarter of the raw mail). Its columns are `subject`, `body`, `author` and `meta`; its rowid is
the message's id. Only published messages are in it.

Every term of the MATCH expression is a double-quoted FTS5 string built from index terms
(letters and digits only, see `bridge.searchtext`), with `"` doubled all the same; column
filters and operators are written by this module alone. So no user input can produce an FTS5
syntax error or reach another column.

Ranking reads bm25 on a bounded window: the newest `window` matches (FTS5 walks its doclists
by descending rowid and stops there), the best `pool` of them by bm25. When a query matches
fewer than `window` messages, every match is ranked; when it matches more (a word found in
half the archive), the older ones are not considered, which is also where the recency boost
would put them. Computing bm25 for 50,000 matches would cost about 40 ms. bm25 also counts,
once per query, the documents holding each term: a fixed cost of roughly 1 ms per 10,000 of
them, which dominates for very common words (see the closing notes of the search bench).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import Connection, bindparam, text

from archive.search.plan import (
    EVERY_MESSAGE,
    Author,
    Either,
    Expr,
    Lexicon,
    Meta,
    Plan,
    Text,
    build,
)
from archive.search.query import Query
from bridge.searchtext import Analyzer

# bm25 weights of the columns subject, body, author, meta.
_BM25 = "bm25(message_search, 3.0, 1.0, 0.0, 0.0)"


def quote(term: str) -> str:
    """An FTS5 string literal."""
    return '"' + term.replace('"', '""') + '"'


class _Lexicon:
    """Index terms computed here, by the same code the triggers call."""

    def __init__(self) -> None:
        self.analyzer = Analyzer()

    def text_terms(self, word: str) -> Mapping[str, str | None]:
        return {lang: term or None for lang, term in self.analyzer.query_terms(word).items()}

    def author_term(self, word: str) -> str | None:
        return word or None


def _render(expr: Expr) -> str:
    if isinstance(expr, Text):
        columns = "{subject}" if expr.subject_only else "{subject body}"
        phrases = " OR ".join(quote(" ".join(term for _, term in phrase))
                              for phrase in expr.phrases)
        return f"{columns} : ({phrases})"
    if isinstance(expr, Author):
        return "{author} : (" + " AND ".join(quote(term) for term in expr.terms) + ")"
    if isinstance(expr, Meta):
        return "{meta} : (" + " OR ".join(quote(term) for term in expr.terms) + ")"
    if isinstance(expr, Either):
        return "(" + " OR ".join(_render(item) for item in expr.items) + ")"
    raise AssertionError(expr)


def match_expression(plan: Plan) -> str:
    """The FTS5 MATCH string for a plan (which must hold at least one constraint)."""
    include = [_render(expr) for expr in plan.include] or [
        _render(Meta((EVERY_MESSAGE,)))]
    expression = " AND ".join(f"({part})" for part in include)
    if plan.exclude:
        expression = f"({expression}) NOT (" + " OR ".join(
            f"({_render(expr)})" for expr in plan.exclude) + ")"
    return expression


class SqliteBackend:
    """FTS5 full-text search (the default backend)."""

    name = "sqlite"

    def plan(self, connection: Connection, query: Query,
             communities: Mapping[str, int]) -> Plan:
        lexicon: Lexicon = _Lexicon()
        return build(query, lexicon, communities)

    def candidates(self, connection: Connection, plan: Plan, *, window: int,
                   pool: int) -> list[tuple[int, float]]:
        rows = connection.execute(text(
            f"SELECT id, rel FROM (SELECT rowid AS id, -{_BM25} AS rel FROM message_search "
            "WHERE message_search MATCH :q ORDER BY rowid DESC LIMIT :window) "
            "ORDER BY rel DESC, id DESC LIMIT :pool"),
            {"q": match_expression(plan), "window": window, "pool": pool})
        return [(int(row.id), float(row.rel)) for row in rows]

    def counts(self, connection: Connection, plan: Plan,
               conversations: Sequence[int]) -> dict[int, int]:
        if not conversations:
            return {}
        narrowed = Plan((*plan.include, Meta(tuple(f"v{c}" for c in conversations))),
                        plan.exclude)
        rows = connection.execute(text(
            "SELECT m.conversation_id AS conversation, count(*) AS n FROM message_search s "
            "JOIN message m ON m.id = s.rowid WHERE message_search MATCH :q "
            "AND m.status = 'published' AND m.conversation_id IN :conversations "
            "GROUP BY m.conversation_id").bindparams(bindparam("conversations",
                                                               expanding=True)),
            {"q": match_expression(narrowed), "conversations": list(conversations)})
        return {int(row.conversation): int(row.n) for row in rows}

    def total(self, connection: Connection, plan: Plan) -> int:
        return int(connection.execute(text(
            "SELECT count(*) FROM message_search WHERE message_search MATCH :q"),
            {"q": match_expression(plan)}).scalar_one())

    def rebuild(self, connection: Connection) -> None:
        """Re-index every published message (after a stemmer upgrade, or a restore).

        The connection must have `archive.search.sqlite_functions` registered.
        """
        connection.execute(text(
            "INSERT INTO message_search(message_search) VALUES ('delete-all')"))
        connection.execute(text(f"INSERT INTO message_search(rowid, subject, body, author, meta) "
                                f"SELECT {INDEX_VALUES.format(row='m')} FROM message m "
                                "WHERE m.status = 'published'"))


def _meta_sql(row: str) -> str:
    date = f"{row}.date"
    return (f"'c' || {row}.community_id || ' v' || {row}.conversation_id || ' z'"
            f" || ' k' || substr({date}, 1, 2) || ' e' || substr({date}, 1, 3)"
            f" || ' y' || substr({date}, 1, 4)"
            f" || ' m' || substr({date}, 1, 4) || substr({date}, 6, 2)"
            f" || ' d' || substr({date}, 1, 4) || substr({date}, 6, 2) || substr({date}, 9, 2)"
            f" || CASE WHEN {row}.has_attachments THEN ' a' ELSE '' END")


# The values of one index row, for a message row called {row}: the rowid, then the columns.
# The triggers, the migration's backfill and `rebuild` all use this one definition, so that a
# 'delete' always removes exactly the terms the insert added.
INDEX_VALUES = ("{row}.id, causerie_search_text({row}.subject, {row}.language), "
                "causerie_search_text({row}.text, {row}.language), "
                "causerie_search_author({row}.from_name, {row}.from_address), "
                + _meta_sql("{row}"))

# The columns whose change re-indexes a message.
INDEXED_COLUMNS = ("subject", "text", "language", "from_name", "from_address",
                   "community_id", "conversation_id", "date", "has_attachments", "status")


def trigger_ddl() -> Iterable[str]:
    """The statements that create the triggers keeping `message_search` in step."""
    new = INDEX_VALUES.format(row="new")
    old = INDEX_VALUES.format(row="old")
    columns = "rowid, subject, body, author, meta"
    yield ("CREATE TRIGGER message_search_insert AFTER INSERT ON message "
           "WHEN new.status = 'published' BEGIN "
           f"INSERT INTO message_search({columns}) VALUES ({new}); END")
    yield ("CREATE TRIGGER message_search_delete AFTER DELETE ON message "
           "WHEN old.status = 'published' BEGIN "
           f"INSERT INTO message_search(message_search, {columns}) VALUES ('delete', {old}); "
           "END")
    # One trigger for updates, so that the old terms are deleted before the new ones go in.
    yield (f"CREATE TRIGGER message_search_update AFTER UPDATE OF {', '.join(INDEXED_COLUMNS)} "
           "ON message BEGIN "
           f"INSERT INTO message_search(message_search, {columns}) SELECT 'delete', {old} "
           "WHERE old.status = 'published'; "
           f"INSERT INTO message_search({columns}) SELECT {new} "
           "WHERE new.status = 'published'; END")
