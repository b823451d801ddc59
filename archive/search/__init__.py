"""Archive search: one query language, two backends (SQLite FTS5, PostgreSQL full text).

- `query` parses what a person types into a small tree (never an error);
- `text` defines words, accent folding, stop words and Snowball stems (English, French);
- `plan` turns the tree into index terms, filters and permissions included;
- `sqlite` and `postgres` are the two `SearchBackend`s, chosen by the engine's dialect;
- `core.search` ranks (relevance plus recency), groups by conversation, cuts snippets.

The index is kept in step with `message` by database triggers (migration 0002), in the
transaction that writes the message, so no writer has to know about search. On SQLite the
triggers call Python functions that every writing connection must have:
`sqlite_functions(dbapi_connection)` registers them (a SQLAlchemy "connect" listener).
"""

from archive.search.core import (
    Hit,
    Reader,
    Results,
    SearchBackend,
    backend_for,
    reader_for,
    rebuild_index,
    search,
    visible_communities,
)
from archive.search.query import Query, parse
from bridge.searchtext import sqlite_functions

__all__ = ["Hit", "Query", "Reader", "Results", "SearchBackend", "backend_for", "parse",
           "reader_for", "rebuild_index", "search", "sqlite_functions", "visible_communities"]
