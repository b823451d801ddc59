"""The parse debugger: what the processor would do with a message, without doing it.

Runs the same steps as the processor (parse, classify, extract, and, read-only, the route,
authorisation and threading decisions) and reports them. Works on any message, even one
addressed to no community here: then `community` is None.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from sqlalchemy import select

from bridge.addresses import NotOurDomain, RouteKind, UnknownAddress
from bridge.app import App
from bridge.models import Community, Conversation
from bridge.tokens import read_token
from inbound.authorise import authorise
from inbound.batch import Batch
from inbound.classify import parse_dsn
from inbound.processor import Processor
from inbound.store import header_message_id

_community = Community.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]


class _Row:
    """Stands for an inbox row, for a message read from a file."""

    def __init__(self, raw: bytes, recipients: list[str]) -> None:
        self.id = 0
        self.raw = raw
        self.sha256 = ""
        self.mail_from = ""
        self.rcpt_to = recipients
        self.kind = ""
        self.received_at = datetime.now(UTC)
        self.attempts = 0
        self.source = "file"


def _recipients(raw: bytes) -> list[str]:
    import email
    import email.policy

    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    values = []
    for name in ("Delivered-To", "X-Original-To", "To", "Cc"):
        values.extend(str(v) for v in message.get_all(name, []) or [])
    return [address for _, address in getaddresses(values) if address]


def _envelope_sender(raw: bytes) -> str:
    """A file has no envelope: its Return-Path says the MAIL FROM, else the From does."""
    import email
    import email.policy

    message = email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n",
                                       policy=email.policy.compat32)
    for name in ("Return-Path", "From"):
        value = message.get(name)
        if value is not None:
            return getaddresses([str(value)])[0][1]
    return ""


def explain(app: App, raw: bytes, envelope_sender: str | None = None) -> dict[str, Any]:
    """What would happen to `raw`; `envelope_sender` None means "read it from the file"."""
    processor = Processor(app)
    row = _Row(raw, _recipients(raw))
    row.mail_from = _envelope_sender(raw) if envelope_sender is None else envelope_sender
    prepared = processor.prepare(row, store=False)  # type: ignore[arg-type]
    report: dict[str, Any] = {"message_id": header_message_id(raw) or None}
    if prepared.error or prepared.parsed is None or prepared.verdict is None:
        report.update(kind="error", reason=prepared.error)
        return report
    parsed, verdict, extracted = prepared.parsed, prepared.verdict, prepared.extracted
    report.update(
        message_id=parsed.message_id, kind=verdict.kind, reason=verdict.reason,
        sender=parsed.from_address or None, sender_verdict=prepared.dmarc,
        subject=parsed.subject, date=parsed.date.isoformat(), community=None,
        conversation=None, decision=None,
        text=extracted.text if extracted else "", quoted=extracted.quoted if extracted else "",
        signature=extracted.signature if extracted else "",
        language=extracted.language if extracted else "",
        security=extracted.security if extracted else "",
        forwarded=[{"author": m.author_address or m.author_name, "date": m.date.isoformat()
                    if m.date else None, "subject": m.subject, "text": m.text}
                   for m in (extracted.forwarded if extracted else [])],
        attachments=[{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                      "inline": a.inline} for a in (extracted.attachments if extracted else [])],
        defects=parsed.defects, bounce=None)
    if verdict.kind in ("bounce", "feedback"):
        reports = parse_dsn(parsed.message)
        if not reports and verdict.bounce is not None:
            reports = [verdict.bounce]
        report["bounce"] = [asdict(b) for b in reports]
        return report
    with app.reader.connect() as connection:
        for recipient in row.rcpt_to:
            try:
                route = processor.router.route(recipient)
            except (NotOurDomain, UnknownAddress):
                continue
            token_conversation = None
            if route.kind == RouteKind.REPLY:
                data = read_token(app.secret, "reply", route.token)
                if data is None:
                    continue
                token_conversation = data.second
                community = connection.execute(
                    select(_community).join(_conversation,
                                            _conversation.c.community_id == _community.c.id)
                    .where(_conversation.c.id == token_conversation)).first()
            elif route.kind == RouteKind.POST:
                community = connection.execute(select(_community).where(
                    _community.c.slug == route.slug)).first()
            else:
                if verdict.kind == "post":
                    report["kind"] = "command"
                    report["reason"] = f"sent to {route.address} ({route.kind})"
                continue
            if community is None:
                continue
            report["community"] = community.slug
            # The processor's own thread step, on what a batch of this one message knows.
            batch = Batch(connection, app.settings, datetime.now(UTC), [parsed])
            choice = processor.choose(connection, batch, community.id, parsed,
                                      token_conversation)
            report["conversation"] = choice.conversation_id or "new"
            if verdict.kind == "post" and (choice.parent_id or parsed.in_reply_to
                                           or token_conversation):
                report["kind"] = "reply"
            sender = batch.sender(parsed.from_address)
            decision = authorise(policy=community.posting_policy,
                                 admits_guests=community.admits_guests, sender=sender,
                                 member=batch.member(community.id, sender.person_id),
                                 verdict_kind=verdict.kind, dmarc=prepared.dmarc,
                                 external=processor.external_recipients(parsed),
                                 visibility=community.visibility)
            report["decision"] = decision.action
            if decision.reason:
                report["reason"] = decision.reason
            break
    return report
