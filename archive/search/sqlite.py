"""The SQLite backend: an FTS5 table kept by triggers, queried with a MATCH built here.

The table `message_search` (migration 0002) is contentless (`content=''`): it stores only the
index, not a second copy of the text, which keeps the data directory small (the index is about
a quarter of the raw mail). Its columns are `subject`, `body`, `author` and `meta`; its rowid is
the message's id. Only published messages are in it.

Every term of the MATCH expression is a double-quoted FTS5 string built from index terms
(letters and digits only, see `bridge.searchtext`), with `"` doubled all the same; column
filters and operators are written by this module alone. So no user input can produce an FTS5
syntax error or reach another column.

Candidates and relevance are two statements, because bm25 has a fixed cost per query: before
scoring the first row it counts, over the whole index, the documents holding each phrase of the
MATCH expression (about 1 ms per 25,000 documents, measured on the 100,000-message bench). The
filter and permission terms are phrases too: `c1` (a community of 60,000 messages), the `z`
of an exclusion-only query, or the dozens of date grains of `after:`/`before:` cost 5-30 ms
there before a single row was scored. So:

1. the candidates are the newest `window` matches of the whole expression (text, author,
   filters, permission), read by rowid alone: FTS5 walks its doclists by descending rowid and
   stops there, without bm25 (about 1 ms even for a word found in 70,000 messages);
2. bm25 is then computed with the expression's positive text phrases only, on the rows
   between the oldest and the newest candidate that are candidates (`+rowid IN`, so SQLite
   checks it row by row instead of handing FTS5 one lookup per id), and only when the query
   has words at all (author and meta columns weigh nothing in bm25, so a query of filters
   alone has relevance 0 and is ordered by date, as before).

   A phrase held by more than half of the indexed messages gets an idf of zero from bm25 (FTS5
   clamps it to 1e-6), so it adds nothing to any score but still costs its count: "r" in the
   bench's archive (72,000 of 86,000 messages) is 2.5 ms of the 4 ms of "R CMD check". Such a
   phrase is left out of the bm25 expression when the newest `COMMON_SAMPLE` messages say it is
   common (more than `COMMON_SHARE` of them hold it), unless every phrase of the query is.

When the query is words and phrases alone (no filter, author, exclusion or permission term)
and nothing is left out, the two steps are one statement: bm25 over the newest matches.

For a candidate, bm25 over the text phrases alone equals bm25 over the whole expression: the
author, meta and excluded phrases have no instance in it or weigh 0, and the document counts
of the text phrases are the same. The permission is thus decided in step 1, inside the index,
and again in SQL by `core` on what it reads back; step 2 only scores rows step 1 admitted.

When a query matches fewer than `window` messages, every match is ranked; when it matches more
(a word found in half the archive), the older ones are not considered, which is also where the
recency boost would put them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

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

COMMON_SAMPLE = 2000   # newest indexed messages a phrase's share is estimated on
COMMON_SHARE = 0.6     # above it a phrase is taken to be in over half the archive
SPARSE = 8             # candidates one rowid in SPARSE or rarer: see `_narrowed`

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


def _phrase_expression(columns: str, phrase: str) -> str:
    return f"{columns} : ({quote(phrase)})"


def _text_phrases(expr: Text) -> list[tuple[str, str]]:
    """(columns, phrase) of each alternative of a text constraint, as `_render` writes them."""
    columns = "{subject}" if expr.subject_only else "{subject body}"
    return [(columns, " ".join(term for _, term in phrase)) for phrase in expr.phrases]


def _render_text(expr: Text, common: Collection[tuple[str, str]]) -> str | None:
    kept = [quote(phrase) for columns, phrase in _text_phrases(expr)
            if (columns, phrase) not in common]
    return f"{_text_phrases(expr)[0][0]} : ({' OR '.join(kept)})" if kept else None


def ranking_phrases(plan: Plan) -> list[tuple[str, str]]:
    """(columns, phrase) of every positive text phrase: what bm25 scores."""
    found: list[tuple[str, str]] = []
    for expr in plan.include:
        for item in expr.items if isinstance(expr, Either) else (expr,):
            if isinstance(item, Text):
                found.extend(_text_phrases(item))
    return list(dict.fromkeys(found))


def relevance_expression(plan: Plan,
                         common: Collection[tuple[str, str]] = ()) -> str | None:
    """The MATCH string bm25 is computed on: the plan's positive text phrases but the
    `common` ones; None if there are none.

    Kept as the AND of the plan's text constraints when every constraint holding text is text
    only (the usual case), so that it matches few rows besides the candidates; when an `OR`
    mixes text with a filter (`mac OR has:attachment`) a candidate may hold none of the text,
    and the expression is the OR of every text phrase, so that each candidate is scored on
    the phrases it does hold. Leaving phrases out only widens the expression: every candidate
    still matches it. The `from:` constraints are kept in the AND (see below).
    """
    parts: list[str] = []
    leaves: list[str] = []
    mixed = False
    for expr in plan.include:
        items = expr.items if isinstance(expr, Either) else (expr,)
        texts = [item for item in items if isinstance(item, Text)]
        rendered = [text for item in texts
                    if (text := _render_text(item, common)) is not None]
        if not rendered:
            continue  # no text, or only common phrases: leaving it out only widens
        # A candidate may satisfy this constraint through a filter or a left-out phrase.
        mixed = mixed or len(texts) < len(items) or any(
            phrase in common for item in texts for phrase in _text_phrases(item))
        leaves.extend(rendered)
        parts.append(rendered[0] if len(rendered) == 1
                     else "(" + " OR ".join(f"({text})" for text in rendered) + ")")
    if not leaves:
        return None
    if mixed:
        return " OR ".join(f"({leaf})" for leaf in leaves)
    # The authors asked for narrow the rows scored at little cost (one person's messages) and
    # weigh nothing in bm25.
    parts += [_render(expr) for expr in plan.include if isinstance(expr, Author)]
    return " AND ".join(f"({part})" for part in parts)


def _common(cursor: Any, phrases: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """The `phrases` more than `COMMON_SHARE` of the newest `COMMON_SAMPLE` messages hold,
    unless that is all of them (then bm25 keeps them all: its scores, however small, are all
    the query has). Nothing on an archive smaller than the sample, where counting is cheap.
    Only single words are looked at: a phrase of several words is never that common."""
    words = [(columns, phrase) for columns, phrase in phrases if " " not in phrase]
    if len(phrases) < 2 or not words:
        return set()
    floor = cursor.execute(
        "SELECT rowid FROM message_search WHERE message_search MATCH ? "
        "ORDER BY rowid DESC LIMIT 1 OFFSET ?",
        (_phrase_expression("{meta}", EVERY_MESSAGE), COMMON_SAMPLE - 1)).fetchone()
    if floor is None:
        return set()
    counts = cursor.execute("SELECT " + ", ".join(
        "(SELECT count(*) FROM message_search WHERE message_search MATCH ? AND rowid >= ?)"
        for _ in words), [value for columns, word in words
                          for value in (_phrase_expression(columns, word), floor[0])]
    ).fetchone()
    common = {word for word, n in zip(words, counts, strict=True)
              if n > COMMON_SHARE * COMMON_SAMPLE}
    return common if len(common) < len(phrases) else set()


def _narrowed(ranking: str, plan: Plan, ids: Sequence[int]) -> str:
    """`ranking`, and the plan's community constraints (`community:`, or the communities a
    reader may see) when the candidates are sparse among the rowids they span.

    Step 2 walks every text match between the oldest and the newest candidate; for a reader who
    sees only a few small communities that can be most of the archive. Their few messages are
    then cheaper for bm25 to count than the walk is.
    """
    if ids[0] - ids[-1] + 1 <= SPARSE * len(ids):
        return ranking
    communities = [_render(expr) for expr in plan.include if isinstance(expr, Meta)
                   and all(term.startswith("c") for term in expr.terms)]
    return " AND ".join([f"({ranking})", *(f"({part})" for part in communities)])


def _text_only(plan: Plan) -> bool:
    """Whether the plan is words and phrases alone: no filter, author or exclusion."""
    return not plan.exclude and all(
        isinstance(item, Text) for expr in plan.include
        for item in (expr.items if isinstance(expr, Either) else (expr,)))


class SqliteBackend:
    """FTS5 full-text search (the default backend)."""

    name = "sqlite"

    def plan(self, connection: Connection, query: Query,
             communities: Mapping[str, int]) -> Plan:
        lexicon: Lexicon = _Lexicon()
        return build(query, lexicon, communities)

    def candidates(self, connection: Connection, plan: Plan, *, window: int,
                   pool: int) -> list[tuple[int, float]]:
        connection.exec_driver_sql("SELECT 1")  # begins the transaction the cursor reads in
        # The DB-API cursor: a thousand ids through SQLAlchemy's rows cost as much as the
        # index lookup itself.
        cursor = connection.connection.cursor()
        try:
            common = _common(cursor, ranking_phrases(plan))
            ranking = relevance_expression(plan, common)
            if ranking is not None and not common and _text_only(plan):
                # The whole query is text: bm25 on the candidates as they are found.
                rows = cursor.execute(
                    f"SELECT rowid, -{_BM25} FROM message_search WHERE message_search MATCH ? "
                    "ORDER BY rowid DESC LIMIT ?", (match_expression(plan), window)).fetchall()
                ids = [int(row[0]) for row in rows]
                relevance = {int(row[0]): float(row[1]) for row in rows}
            else:
                ids = [int(row[0]) for row in cursor.execute(
                    "SELECT rowid FROM message_search WHERE message_search MATCH ? "
                    "ORDER BY rowid DESC LIMIT ?", (match_expression(plan), window))]
                relevance = {}
                if ranking is not None and ids:
                    ranking = _narrowed(ranking, plan, ids)
                    relevance = {int(row[0]): float(row[1]) for row in cursor.execute(
                        f"SELECT rowid, -{_BM25} FROM message_search "
                        "WHERE message_search MATCH ? AND rowid BETWEEN ? AND ? "
                        "AND +rowid IN (SELECT value FROM json_each(?))",
                        (ranking, ids[-1], ids[0], json.dumps(ids)))}
        finally:
            cursor.close()
        ranked = sorted(ids, key=lambda i: (relevance.get(i, 0.0), i), reverse=True)
        return [(i, relevance.get(i, 0.0)) for i in ranked[:pool]]

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
