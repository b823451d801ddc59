"""digest and community stats: preview and send digests, and a community's vitality figures.

`causerie digest preview --person EMAIL --cadence daily|weekly [--html|--text] [--now ISO]`
prints the digest the person would get for the period ending now (the whole message by
default, or one part). `causerie digest run --cadence daily|weekly [--now ISO]` queues the
digests due at that moment, exactly as the scheduler does (a second run sends nothing).
`causerie community stats SLUG [--period week|month] [--json]` prints the vitality figures
(registered under `community` by `register_stats`).
"""

from __future__ import annotations

import argparse
import email
from datetime import UTC, datetime
from email import policy
from typing import TYPE_CHECKING

from bridge.cli.output import emit, print_json

if TYPE_CHECKING:
    from bridge.app import App
    from bridge.cli import Context
    from outbound.digest import DigestFunctions


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date and time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("digest", help="preview and send daily/weekly digests",
                            description="Digests: preview one, or send a period's by hand.")
    sub = p.add_subparsers(dest="digest_command", metavar="ACTION", required=True)
    pv = sub.add_parser("preview", help="print the digest a person would get now")
    pv.add_argument("--person", required=True, metavar="EMAIL")
    pv.add_argument("--cadence", choices=("daily", "weekly"), required=True)
    part = pv.add_mutually_exclusive_group()
    part.add_argument("--html", action="store_true", help="only the HTML part")
    part.add_argument("--text", action="store_true", help="only the text part")
    pv.add_argument("--now", type=_when, default=None, metavar="ISO",
                    help="pretend it is this moment (default: now)")
    pv.set_defaults(handler=cmd_preview)
    rn = sub.add_parser("run", help="queue the digests due now (idempotent)")
    rn.add_argument("--cadence", choices=("daily", "weekly"), required=True)
    rn.add_argument("--now", type=_when, default=None, metavar="ISO",
                    help="pretend it is this moment (default: now)")
    add_json_flag(rn)
    rn.set_defaults(handler=cmd_run)


def register_stats(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`community stats`, added to the `community` group by bridge/cli/communities.py."""
    from bridge.cli import add_json_flag

    st = sub.add_parser("stats", help="vitality figures and goals of a community",
                        description="This period's figures, the previous period's, and "
                                    "each goal met or not.")
    st.add_argument("slug")
    st.add_argument("--period", choices=("week", "month"), default="week")
    st.add_argument("--now", type=_when, default=None, metavar="ISO",
                    help="measure as of this moment (default: now)")
    add_json_flag(st)
    st.set_defaults(handler=cmd_stats)


def functions(app: App) -> DigestFunctions:
    """What the digest gets from `archive`: the same as `serve`'s (bridge.wiring)."""
    from bridge.wiring import digest_functions

    return digest_functions(app)


def cmd_preview(args: argparse.Namespace, context: Context) -> int:
    from bridge.cli import CommandError
    from bridge.directory import find_person
    from outbound.digest import preview_digest

    app = context.app()
    with app.session() as session:
        person = find_person(session, args.person)
        if person is None or person.id is None:
            raise CommandError(f"no person with the address {args.person}")
        person_id = person.id
    raw = preview_digest(app, person_id, args.cadence, args.now or app.clock.now(),
                         functions=functions(app))
    if raw is None:
        print("(nothing new for this person in the period: no digest would be sent)")
        return 0
    if not (args.html or args.text):
        print(raw.decode("utf-8", "replace").replace("\r\n", "\n"), end="")
        return 0
    message = email.message_from_bytes(raw, policy=policy.default)
    body = message.get_body(preferencelist=("html",) if args.html else ("plain",))
    assert body is not None
    print(body.get_content(), end="")  # type: ignore[attr-defined]
    return 0


def cmd_run(args: argparse.Namespace, context: Context) -> int:
    from outbound.digest import run_digests

    app = context.app()
    report = run_digests(app, args.cadence, args.now or app.clock.now(),
                         functions=functions(app))
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"{report.cadence} digests: {report.queued} queued ({report.deliveries} "
              f"emails), {report.empty} with nothing new, {report.already} already sent, "
              f"{report.persons} people on this cadence")
    return 0


def cmd_stats(args: argparse.Namespace, context: Context) -> int:
    from archive.vitality import community_stats
    from bridge.cli import CommandError

    app = context.app()
    with app.reader.connect() as connection:
        stats = community_stats(connection, args.slug, args.period,
                                args.now or app.clock.now())
    if stats is None:
        raise CommandError(f"no community named {args.slug!r}")
    if args.json:
        print_json(stats)
        return 0
    cur, prev = stats["current"], stats["previous"]

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    rows = [{"figure": name, "this": str(cur[key]), "previous": str(prev[key])}
            for name, key in (("new conversations", "new_conversations"),
                              ("messages", "messages"),
                              ("active contributors", "active_contributors"),
                              ("questions (deadline passed)", "questions"),
                              ("answered within 48 h", "answered_in_time"),
                              ("unanswered", "unanswered"))]
    rows.append({"figure": "share answered within 48 h", "this": share(cur["answered_share"]),
                 "previous": share(prev["answered_share"])})
    print(f"{stats['name']} ({stats['community']}), {args.period} ending {stats['end']}")
    emit(rows, False, ["figure", "this", "previous"])
    if stats["goals"]:
        print()
        emit([{"goal": g["key"], "target": g["target"],
               "this": "-" if g["value"] is None else round(g["value"], 3),
               "previous": "-" if g["previous"] is None else round(g["previous"], 3),
               "met": {None: "-", True: "yes", False: "no"}[g["met"]]}
              for g in stats["goals"]], False, ["goal", "target", "this", "previous", "met"])
    return 0
