"""inbox, held, message, conversation and rebuild: what came in and what became of it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from bridge import wiring
from bridge.cli.output import emit, print_json
from bridge.directory import DirectoryError, audit, get_community
from bridge.models import (
    Attachment,
    Community,
    Conversation,
    Held,
    InboxItem,
    Message,
)

if TYPE_CHECKING:
    from bridge.cli import Context


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.cli import add_json_flag

    p = commands.add_parser("inbox", help="received mail: list, show, retry, explain",
                            description="The inbox holds every received message as raw "
                                        "bytes with its envelope, and what became of it.")
    sub = p.add_subparsers(dest="inbox_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list received messages, newest first")
    ls.add_argument("--status", choices=["pending", "done", "held", "rejected", "discarded",
                                         "failed"])
    ls.add_argument("--limit", type=int, default=50)
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_inbox_list)
    sh = sub.add_parser("show", help="one received message: envelope, status and reason")
    sh.add_argument("id", type=int)
    sh.add_argument("--raw", action="store_true", help="print the raw message as received")
    add_json_flag(sh)
    sh.set_defaults(handler=cmd_inbox_show)
    rt = sub.add_parser("retry", help="process messages again (failed ones, or given ids)",
                        description="Put failed messages (or the given ids) back in the "
                                    "queue and process them now.")
    rt.add_argument("ids", type=int, nargs="*")
    add_json_flag(rt)
    rt.set_defaults(handler=cmd_inbox_retry)
    ex = sub.add_parser("explain", help="what the processor would do with messages in files",
                        description="Read messages from files ('-' for standard input) and "
                                    "print, without storing or sending anything, what the "
                                    "processor would do with each: kind, reason, sender, "
                                    "community, conversation, new text, quoted part, "
                                    "signature, attachments, bounce details.")
    ex.add_argument("files", nargs="+", metavar="FILE")
    ex.add_argument("--envelope-sender", default=None,
                    help="MAIL FROM to assume (default: the Return-Path, else the From)")
    add_json_flag(ex)
    ex.set_defaults(handler=cmd_inbox_explain)

    p = commands.add_parser("held", help="messages held for moderation: list, approve, reject")
    sub = p.add_subparsers(dest="held_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="held messages waiting for a decision")
    ls.add_argument("--community", metavar="SLUG")
    ls.add_argument("--all", action="store_true", help="decided ones too")
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_held_list)
    for action in ("approve", "reject"):
        a = sub.add_parser(action, help=f"{action} a held message (posts it)"
                           if action == "approve" else "reject a held message")
        a.add_argument("id", type=int, help="the held message's id (see 'held list')")
        a.add_argument("--reason", default="", help="a note kept with the decision")
        add_json_flag(a)
        a.set_defaults(handler=cmd_held_decide, decision=action)

    p = commands.add_parser("message", help="archived messages: show")
    sub = p.add_subparsers(dest="message_command", metavar="ACTION", required=True)
    sh = sub.add_parser("show", help="one archived message by its Message-ID")
    sh.add_argument("message_id", metavar="MESSAGE-ID")
    sh.add_argument("--community", metavar="SLUG", help="when it is in several communities")
    add_json_flag(sh)
    sh.set_defaults(handler=cmd_message_show)

    p = commands.add_parser("conversation", help="conversations: list, show")
    sub = p.add_subparsers(dest="conversation_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="a community's conversations, latest activity first")
    ls.add_argument("--community", metavar="SLUG", required=True)
    ls.add_argument("--limit", type=int, default=50)
    add_json_flag(ls)
    ls.set_defaults(handler=cmd_conversation_list)
    sh = sub.add_parser("show", help="one conversation with its messages")
    sh.add_argument("id", type=int)
    add_json_flag(sh)
    sh.set_defaults(handler=cmd_conversation_show)

    p = commands.add_parser("rebuild", help="re-derive every conversation from the raw mail",
                            description="Delete conversations and messages and process the "
                                        "raw mail of the inbox again, in arrival order (after "
                                        "a parsing fix, say), then rebuild the search index. "
                                        "Nothing is sent: no copies, no notices. Held "
                                        "messages stay held.")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_rebuild)


def inbox_record(item: InboxItem, with_envelope: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": item.id, "received_at": item.received_at, "source": item.source,
        "mail_from": item.mail_from, "rcpt_to": item.rcpt_to,
        "message_id": item.header_message_id, "size": item.size, "status": item.status,
        "kind": item.kind, "reason": item.reason, "attempts": item.attempts,
    }
    if with_envelope:
        record.update(peer=item.peer, helo=item.helo, sha256=item.sha256,
                      next_attempt_at=item.next_attempt_at, processed_at=item.processed_at)
    return record


def cmd_inbox_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        query = select(InboxItem).order_by(col(InboxItem.id).desc()).limit(args.limit)
        if args.status:
            query = query.where(InboxItem.status == args.status)
        rows = [inbox_record(item) for item in session.exec(query)]
    emit(rows, args.json, ["id", "received_at", "mail_from", "message_id", "status", "kind",
                           "reason"])
    return 0


def _inbox_item(session: Session, inbox_id: int) -> InboxItem:
    item = session.get(InboxItem, inbox_id)
    if item is None:
        raise DirectoryError(f"no inbox message #{inbox_id}")
    return item


def cmd_inbox_show(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        item = _inbox_item(session, args.id)
        if args.raw:
            sys.stdout.buffer.write(app.raw_mail(item))
            return 0
        record = inbox_record(item, with_envelope=True)
        record["messages"] = [
            {"id": m.id, "community": slug, "conversation": m.conversation_id}
            for m, slug in session.exec(
                select(Message, Community.slug).join(Community)
                .where(Message.inbox_id == item.id)).all()]
        record["held"] = [{"id": h.id, "community_id": h.community_id, "status": h.status,
                           "reason": h.reason}
                          for h in session.exec(select(Held).where(Held.inbox_id == item.id))]
    emit(record, args.json)
    return 0


def cmd_inbox_retry(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    now = app.clock.now()
    table = InboxItem.__table__  # type: ignore[attr-defined]
    with app.engine.begin() as connection:
        query = update(table).values(status="pending", attempts=0, next_attempt_at=now)
        if args.ids:
            query = query.where(table.c.id.in_(args.ids))
        else:
            query = query.where(table.c.status == "failed")
        queued = connection.execute(query).rowcount
    processed = wiring.processor(app).run_until_idle()
    with app.session() as session:
        ids = args.ids or []
        rows = [inbox_record(item) for item in session.exec(
            select(InboxItem).where(col(InboxItem.id).in_(ids)))] if ids else []
    if args.json:
        print_json({"queued": queued, "processed": processed, "items": rows})
    else:
        print(f"{queued} queued again, {processed} processed")
        for row in rows:
            print(f"#{row['id']}: {row['status']} {row['kind']} {row['reason']}")
    return 0


def cmd_inbox_explain(args: argparse.Namespace, context: Context) -> int:
    from inbound.explain import explain

    app = context.app()
    reports = []
    for name in args.files:
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise DirectoryError(f"cannot read {name}: {exc.strerror}") from None
        report = explain(app, raw, args.envelope_sender)
        report["file"] = name
        reports.append(report)
    if args.json:
        print_json(reports)
    else:
        for report in reports:
            print(f"== {report['file']}")
            for key in ("kind", "reason", "sender", "sender_verdict", "community",
                        "conversation", "decision", "language", "bounce", "attachments",
                        "defects"):
                if report.get(key) not in (None, [], ""):
                    print(f"{key}: {report[key]}")
            for key in ("text", "quoted", "signature"):
                if report.get(key):
                    print(f"--- {key}:\n{report[key].rstrip()}")
    return 0


def cmd_held_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        query = select(Held, Community.slug).join(Community).order_by(col(Held.id))
        if not args.all:
            query = query.where(Held.status == "pending")
        if args.community:
            query = query.where(Community.slug == args.community)
        rows = [{"id": held.id, "community": slug, "sender": held.sender,
                 "subject": held.subject, "reason": held.reason, "status": held.status,
                 "inbox_id": held.inbox_id, "created_at": held.created_at,
                 "decided_by": held.decided_by or None}
                for held, slug in session.exec(query).all()]
    emit(rows, args.json, ["id", "community", "sender", "subject", "reason", "status"])
    return 0


def cmd_held_decide(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        held = session.get(Held, args.id)
        if held is None:
            raise DirectoryError(f"no held message #{args.id}")
        if held.status != "pending":
            raise DirectoryError(f"held message #{args.id} was already {held.status} by "
                                 f"{held.decided_by or 'someone'}")
        held.status = "approved" if args.decision == "approve" else "rejected"
        held.decided_by = "cli"
        held.decided_at = app.clock.now()
        held.decision_note = args.reason
        session.add(held)
        item = _inbox_item(session, held.inbox_id)
        item.status, item.kind, item.next_attempt_at = "pending", "approved", app.clock.now()
        session.add(item)
        audit(session, f"held.{args.decision}", f"held:{held.id}", reason=args.reason)
        inbox_id = item.id
    wiring.processor(app).run_until_idle()
    with app.session() as session:
        item = _inbox_item(session, inbox_id)
        record = {"id": args.id, "decision": args.decision, "inbox_status": item.status,
                  "reason": item.reason}
    emit(record, args.json)
    return 0


def message_record(session: Session, message: Message, slug: str) -> dict[str, Any]:
    attachments = session.exec(select(Attachment).where(Attachment.message_id == message.id)
                               .order_by(col(Attachment.position))).all()
    return {
        "id": message.id, "message_id": message.message_id, "community": slug,
        "conversation": message.conversation_id, "parent": message.parent_id,
        "author": message.from_address, "author_name": message.from_name,
        "date": message.date, "subject": message.subject, "text": message.text,
        "quoted": message.quoted, "signature": message.signature,
        "language": message.language, "status": message.status,
        "security": message.security or None,
        "in_reply_to": message.in_reply_to or None, "inbox_id": message.inbox_id,
        "attachments": [{"filename": a.filename, "content_type": a.content_type,
                         "size": a.size, "inline": a.inline, "stored": bool(a.sha256)}
                        for a in attachments],
    }


def cmd_message_show(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    message_id = args.message_id.strip().strip("<>")
    with app.session() as session:
        query = select(Message, Community.slug).join(Community).where(
            Message.message_id == message_id)
        if args.community:
            query = query.where(Community.slug == args.community)
        found = session.exec(query).all()
        if not found:
            raise DirectoryError(f"no archived message <{message_id}>")
        records = [message_record(session, m, slug) for m, slug in found]
    emit(records[0] if len(records) == 1 else records, args.json)
    return 0


def conversation_record(conversation: Conversation, slug: str) -> dict[str, Any]:
    return {"id": conversation.id, "community": slug, "subject": conversation.subject,
            "message_count": conversation.message_count,
            "started_at": conversation.started_at, "last_activity": conversation.last_activity,
            "answered": conversation.first_reply_at is not None}


def cmd_conversation_list(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        community = get_community(session, args.community)
        conversations = session.exec(
            select(Conversation).where(Conversation.community_id == community.id)
            .order_by(col(Conversation.last_activity).desc()).limit(args.limit))
        rows = [conversation_record(c, community.slug) for c in conversations]
    emit(rows, args.json, ["id", "subject", "message_count", "last_activity", "answered"])
    return 0


def cmd_conversation_show(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    with app.session() as session:
        conversation = session.get(Conversation, args.id)
        if conversation is None:
            raise DirectoryError(f"no conversation #{args.id}")
        community = session.get(Community, conversation.community_id)
        assert community is not None
        record = conversation_record(conversation, community.slug)
        messages = session.exec(select(Message).where(Message.conversation_id == args.id)
                                .order_by(col(Message.date), col(Message.id)))
        record["messages"] = [message_record(session, m, community.slug) for m in messages]
    if args.json:
        print_json(record)
    else:
        print(f"#{record['id']} [{record['community']}] {record['subject']} "
              f"({record['message_count']} messages)")
        for message in record["messages"]:
            print(f"\n--- {message['date']:%Y-%m-%d %H:%M} {message['author_name']} "
                  f"<{message['author']}>")
            print(message["text"].rstrip())
    return 0


def cmd_rebuild(args: argparse.Namespace, context: Context) -> int:
    app = context.app()
    if not args.yes:
        answer = input("Delete every conversation and process the raw mail again? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing changed")
            return 1
    inbox = InboxItem.__table__  # type: ignore[attr-defined]
    with app.engine.begin() as connection:
        connection.execute(delete(Conversation.__table__))  # type: ignore[attr-defined]
        requeued = connection.execute(
            update(inbox).where(inbox.c.status.in_(("done", "discarded", "rejected",
                                                    "failed", "pending")))
            .where(inbox.c.kind != "approved")
            .values(status="pending", attempts=0, next_attempt_at=inbox.c.received_at)
        ).rowcount
    processed = wiring.processor(app, fan_out=False, notify=False).run_until_idle()
    from archive.search import rebuild_index  # the CLI composes the packages

    with app.engine.begin() as connection:
        rebuild_index(connection)
    with app.session() as session:
        messages = session.exec(select(func.count()).select_from(Message)).one()
        audit(session, "rebuild", "archive", requeued=requeued, messages=messages)
    print(f"{requeued} received messages processed again ({processed} handled); "
          f"{messages} messages archived")
    return 0
