"""search: the administrator's archive search (sees every community)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from archive.search import search
from bridge.cli.output import emit

if TYPE_CHECKING:
    from bridge.cli import Context


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser(
        "search", help="search the archive",
        description="Search the archive as the administrator: every community, public or "
                    "not. One hit per conversation (its best message), best first. Query "
                    "language: words, \"exact phrases\", -excluded, a OR b, "
                    "from:NAME-OR-ADDRESS, community:SLUG, before:YYYY-MM-DD, "
                    "after:YYYY-MM-DD, has:attachment, in:subject.")
    p.add_argument("query", help="what to look for (quote it for the shell)")
    p.add_argument("--community", metavar="SLUG", help="only in this community")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="at most N conversations (default 20)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_search)


def cmd_search(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    results = search(app.reader, args.query, community=args.community,
                     limit=max(0, args.limit), now=app.clock.now())
    rows = [hit.as_json() for hit in results.hits]
    if args.json:
        emit(rows, True)
    else:
        emit([{"date": hit.date, "community": hit.community, "author": hit.author,
               "subject": hit.subject, "matches": hit.matches, "snippet": hit.snippet}
              for hit in results.hits], False,
             ["date", "community", "author", "subject", "matches", "snippet"])
    return 0
