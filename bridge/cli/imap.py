"""imap: check a polled mailbox before `serve` relies on it, and see where each one stands."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from bridge.cli.output import emit

if TYPE_CHECKING:
    from bridge.cli import Context
    from bridge.settings import ImapMailbox


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("imap", help="polled IMAP mailboxes: test, status",
                            description="Mailboxes read by IMAP ([[imap.mailbox]] in the "
                                        "settings), for mail that cannot be routed to "
                                        "Causerie by SMTP.")
    sub = p.add_subparsers(dest="imap_command", metavar="ACTION", required=True)
    test = sub.add_parser("test", help="connect, log in, look at the folder, count new mail",
                          description="Connect to the mailbox's server as `serve` would (TLS, "
                                      "password or XOAUTH2 token), check the folder, and "
                                      "count the messages the poller would take, without "
                                      "changing anything. Exits with status 1 and one line "
                                      "saying what is wrong otherwise.")
    test.add_argument("name", help="the mailbox's name in the settings")
    test.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    add_json_flag(test)
    test.set_defaults(handler=cmd_imap_test)
    status = sub.add_parser("status", help="each mailbox's UIDVALIDITY, last UID and lease")
    add_json_flag(status)
    status.set_defaults(handler=cmd_imap_status)


def _mailbox(context: Context, name: str) -> ImapMailbox:
    from bridge.cli import CommandError

    for box in context.settings.imap:
        if box.name == name:
            return box
    names = ", ".join(box.name for box in context.settings.imap) or "none"
    raise CommandError(f"no [[imap.mailbox]] named {name!r} in the settings (configured: "
                       f"{names})")


def cmd_imap_test(args: argparse.Namespace, context: Context) -> int:
    from bridge.cli import CommandError
    from inbound.imap import ImapFailure, probe
    from inbound.imap_store import mailbox_states

    box = _mailbox(context, args.name)
    position: tuple[int, int] | None
    try:
        state = mailbox_states(context.app().engine).get(box.name)
        position = (state.uidvalidity, state.last_uid) if state else (0, 0)
    except Exception:  # the database is not needed to test the mailbox itself
        position = None
    try:
        found = probe(box, os.environ, position, timeout=args.timeout)
    except ImapFailure as exc:
        raise CommandError(f"imap {box.name}: {exc}") from None
    if args.json:
        emit(asdict(found), True)
        return 0
    record: dict[str, Any] = {
        "mailbox": found.mailbox,
        "server": f"{found.server} (tls {found.tls}), user {found.user!r}, "
                  f"{found.login} login OK",
        "folder": f"{found.folder!r}: {found.messages} message(s), "
                  f"UIDVALIDITY {found.uidvalidity}",
        "new": f"{found.new} ({found.new_note})",
        "waits": found.waits,
        "after": found.after,
    }
    for index, note in enumerate(found.notes, 1):
        record[f"note {index}"] = note
    emit(record, False)
    return 0


def cmd_imap_status(args: argparse.Namespace, context: Context) -> int:
    from bridge.clock import utcnow
    from inbound.imap_store import mailbox_states

    states = mailbox_states(context.app().engine)
    configured = {box.name: box for box in context.settings.imap}
    now = utcnow()
    rows = []
    for name in [*configured, *sorted(set(states) - set(configured))]:
        box = configured.get(name)
        state = states.get(name)
        expires = state.lease_expires if state else None
        if state is None or not state.lease_owner:
            lease = "free"
        else:
            lease = "held" if expires is not None and expires > now else "expired"
        rows.append({
            "mailbox": name,
            "configured": box is not None,
            "server": f"{box.host}:{box.port}" if box else "",
            "folder": box.folder if box else "",
            "uidvalidity": state.uidvalidity if state else 0,
            "last_uid": state.last_uid if state else 0,
            "seen_uids": state.seen if state else 0,
            "lease": lease,
            "lease_owner": state.lease_owner if state else "",
            "lease_expires": expires,
        })
    emit(rows, args.json, ["mailbox", "server", "folder", "uidvalidity", "last_uid",
                           "seen_uids", "lease", "lease_owner", "lease_expires"])
    return 0
