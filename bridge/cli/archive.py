"""import, export, people, redact and forget-person: the archive as a whole.

The CLI composes the packages (DESIGN.md): the importer (`inbound`) gets the processor from
`bridge.wiring`, without fan-out or notices; export, people and erasure come from `archive`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import wiring
from bridge.cli.output import emit, print_json
from bridge.directory import DirectoryError

if TYPE_CHECKING:
    from bridge.cli import Context


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser(
        "import", help="import historical mail (mbox, Maildir) into a community",
        description="Import an archive into a community through the same processor as live "
                    "mail (parse, thread, store, index), without sending anything: no copies, "
                    "no notices. Idempotent: messages already imported (same bytes, or same "
                    "Message-ID in the community) are skipped. mbox files may be compressed "
                    "(.xz, .gz, .bz2). Every message not archived is reported with its reason. "
                    "A progress bar is shown on standard error.")
    p.add_argument("format", choices=["mbox", "maildir"])
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--community", metavar="SLUG", required=True)
    p.add_argument("--no-unquote", action="store_true",
                   help="keep '>From ' lines as they are (mboxo files; default: mboxrd, "
                        "one '>' removed)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N messages")
    p.add_argument("--batch-size", type=int, default=500, metavar="N",
                   help="messages per transaction (default 500)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(p)
    p.set_defaults(handler=cmd_import)

    p = commands.add_parser(
        "export", help="export raw mail (mbox)",
        description="Write a community's (or one conversation's) messages as received, byte "
                    "for byte, in mboxrd format (lines starting with 'From ' quoted with "
                    "'>'), oldest first. Redacted messages are left out.")
    p.add_argument("format", choices=["mbox"])
    p.add_argument("--community", metavar="SLUG", required=True)
    p.add_argument("--conversation", type=int, metavar="ID")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="file to write (default: standard output)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser(
        "people", help="who knows about a subject",
        description="People ranked by how much, how recently and how helpfully (first "
                    "replies and replies that closed a question count more) they wrote on "
                    "the subject, each with the conversations that show it. Staff and "
                    "guests are marked. The query language is the search's. As the "
                    "administrator: every community.")
    p.add_argument("query")
    p.add_argument("--community", metavar="SLUG", help="only in this community")
    p.add_argument("--limit", type=int, default=10, metavar="N")
    add_json_flag(p)
    p.set_defaults(handler=cmd_people)

    p = commands.add_parser(
        "redact", help="erase a message's content, keeping a tombstone",
        description="Remove a message's content from the archive (text, quoted part, "
                    "signature, HTML, attachments), from the search index and from the raw "
                    "store, leaving a tombstone that says when and why. Written to the audit "
                    "log.")
    p.add_argument("message_id", metavar="MESSAGE-ID")
    p.add_argument("--reason", required=True, help="why (kept in the tombstone)")
    p.add_argument("--community", metavar="SLUG",
                   help="only the copy in this community (default: every copy)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_redact)

    p = commands.add_parser(
        "forget-person", help="erase a person's identity across the archive",
        description="Replace a person's name and addresses everywhere in the archive with a "
                    "placeholder (forgotten-ID@invalid), erase the raw mail of their "
                    "messages, remove their memberships. What they wrote stays, under the "
                    "placeholder. Written to the audit log.")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_json_flag(p)
    p.set_defaults(handler=cmd_forget)


def cmd_import(args: argparse.Namespace, context: Context) -> int:
    from inbound.importer import import_path

    app = context.app()
    if not args.path.exists():
        raise DirectoryError(f"{args.path} does not exist")
    if not app.community_exists(args.community):
        raise DirectoryError(f"no community named {args.community!r} "
                             "(see 'causerie community list')")
    processor = wiring.processor(app, fan_out=False, notify=False)
    report = import_path(app, args.path, args.community, processor, kind=args.format,
                         unquote=not args.no_unquote, limit=args.limit,
                         batch_size=max(1, args.batch_size), quiet=args.quiet)
    from bridge.directory import audit

    with app.session() as session:
        audit(session, "archive.import", args.community, path=str(args.path),
              read=report.read, written=report.written, archived=report.archived)
    if args.json:
        print_json(report.as_json())
        return 0
    print(f"{report.read} messages read, {report.written} new, {report.archived} archived "
          f"into {args.community} in {report.seconds:.1f} s")
    for status, count in sorted(report.outcomes.items()):
        if status != "done":
            print(f"  {count} {status}")
    for item in report.skipped:
        print(f"skipped #{item.position} <{item.message_id}>: {item.reason}")
    for item in report.problems:
        print(f"not archived #{item.position} <{item.message_id}>: {item.reason}")
    return 0


def cmd_export(args: argparse.Namespace, context: Context) -> int:
    from archive.export import ExportError, export_mbox

    app = context.app()
    try:
        if args.output:
            with args.output.open("wb") as out:
                report = export_mbox(app, out, args.community, args.conversation)
        else:
            report = export_mbox(app, sys.stdout.buffer, args.community, args.conversation)
    except ExportError as exc:
        raise DirectoryError(str(exc)) from None
    if args.output:
        if args.json:
            print_json({**report.as_json(), "output": str(args.output)})
        else:
            print(f"{report.messages} messages ({report.bytes:,} bytes) written to "
                  f"{args.output}; {report.redacted} redacted left out")
    else:
        print(f"{report.messages} messages exported, {report.redacted} redacted left out",
              file=sys.stderr)
    return 0


def cmd_people(args: argparse.Namespace, context: Context) -> int:
    from archive.people import rank_people

    app = context.app()
    with app.reader.connect() as connection:
        hits = rank_people(connection, args.query, None, limit=max(0, args.limit),
                           community=args.community,
                           staff_domains=app.settings.instance.staff_domains,
                           now=app.clock.now())
    if args.json:
        emit([hit.as_json() for hit in hits], True)
        return 0
    emit([{"name": h.name, "address": h.address, "kind": h.kind, "score": round(h.score, 2),
           "messages": h.messages, "answers": h.answers,
           "threads": "; ".join(t.subject for t in h.threads)} for h in hits], False,
         ["name", "address", "kind", "score", "messages", "answers", "threads"])
    return 0


def cmd_redact(args: argparse.Namespace, context: Context) -> int:
    from archive.erasure import ErasureError, redact

    app = context.app()
    try:
        erased = redact(app, args.message_id, args.reason, community=args.community)
    except ErasureError as exc:
        raise DirectoryError(str(exc)) from None
    if args.json:
        print_json(erased.as_json())
    else:
        print(f"redacted {len(erased.messages)} message(s); {erased.raw_mails} raw mail(s), "
              f"{erased.attachments} attachment(s), {erased.blobs} stored file(s) erased")
    return 0


def cmd_forget(args: argparse.Namespace, context: Context) -> int:
    from archive.erasure import ErasureError, forget_person

    app = context.app()
    if not args.yes and not args.json:
        answer = input(f"Erase the identity of {args.email} across the archive? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing changed")
            return 1
    try:
        erased = forget_person(app, args.email)
    except ErasureError as exc:
        raise DirectoryError(str(exc)) from None
    if args.json:
        print_json(erased.as_json())
    else:
        print(f"forgotten: now {erased.placeholder}; {len(erased.messages)} message(s) "
              f"anonymised, {erased.rewritten} other(s) rewritten, {erased.raw_mails} raw "
              f"mail(s) erased, {erased.memberships} membership(s) removed")
    return 0
