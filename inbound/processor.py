"""The processor: pending inbox rows become conversations, in arrival order.

A pass has three phases, so that the database's write lock is never held during CPU work:

1. claim (short transaction): the due rows, oldest first, leased by pushing their
   `next_attempt_at` forward (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so instances share the
   work; a crashed instance's lease simply expires);
2. prepare (no transaction): parse → classify → extract, each a plain function;
3. commit (one transaction for the batch): for each recipient route, authorise → thread →
   store, or hand the message to a handler (commands, bounces, moderation, ...), and record
   the row's final status and reason. The rows a message stores are staged and written
   with the batch's others, one statement per table (`inbound.batch`); a message that runs
   statements of its own (a handler, a hold, ...) does so in a savepoint of its own.

A message that raises is marked failed with a short reason and retried with backoff; it
never blocks the others (what it staged is dropped, its savepoint rolled back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from bridge.addresses import (
    AddressRouter,
    NotOurDomain,
    Route,
    RouteKind,
    UnknownAddress,
    domain_of,
)
from bridge.app import App
from bridge.events import Bounce, Handlers, IncomingMail, Outcome
from bridge.fanout import choose as choose_recipients
from bridge.fanout import delivery_rows
from bridge.models import Attachment, Community, Conversation, Held, InboxItem, Message
from bridge.searchtext import Analyzer, register_analyzer
from bridge.tokens import read_token
from inbound.authorise import authorise
from inbound.batch import Batch, BulkWriteFailed, Staged
from inbound.classify import ClassifierConfig, Verdict, classify, parse_dsn
from inbound.extract import Extracted, extract
from inbound.forwarded import ForwardedMessage, derived_id
from inbound.language import guess_language
from inbound.parse import ParsedMail, parse
from inbound.people import Sender, find_sender, is_staff_address
from inbound.subjects import normalise_subject
from inbound.threader import (
    ThreadChoice,
    ancestors,
    conversation_row,
    refresh_conversation,
    relink_children,
)

log = logging.getLogger("causerie.inbound.processor")

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]
_conversation = Conversation.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_attachment = Attachment.__table__  # type: ignore[attr-defined]
_held = Held.__table__  # type: ignore[attr-defined]

# How long a claimed row is left to the instance that claimed it before another may take it
# (its `next_attempt_at` is pushed this far); a batch takes well under a second.
LEASE = timedelta(seconds=60)
NOT_POSTED = ("bounce", "feedback", "auto_reply", "loop")


@dataclass
class Prepared:
    """One claimed inbox row after the CPU work."""

    row: Row[Any]
    raw: bytes = b""
    parsed: ParsedMail | None = None
    verdict: Verdict | None = None
    extracted: Extracted | None = None
    dmarc: str = "none"
    error: str = ""
    # (text, language, index terms) computed ahead, in another process (an import's
    # workers): the SQLite search trigger takes them instead of computing them again.
    index_terms: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class RowResult:
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (status, reason)
    kind: str = ""

    def add(self, status: str, reason: str) -> None:
        self.outcomes.append((status, reason))

    def final(self) -> tuple[str, str]:
        statuses = [status for status, _ in self.outcomes]
        for status in ("done", "held", "rejected", "discarded"):
            if status in statuses:
                break
        else:
            status = "discarded"
        reason = "; ".join(dict.fromkeys(reason for _, reason in self.outcomes if reason))
        # Reasons quote header values, which may hold NULs or lone surrogates.
        reason = reason.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
        return status, reason[:2000]


def classifier_config(app: App) -> ClassifierConfig:
    domain = app.settings.instance.primary_domain
    return ClassifierConfig(instance_name=app.settings.instance.name,
                            our_domains=app.settings.instance.domains,
                            list_ids=(f"*.{domain}",))


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


class Processor:
    def __init__(self, app: App, handlers: Handlers | None = None, *, fan_out: bool = True,
                 notify: bool = True) -> None:
        self.app = app
        self.settings = app.settings
        self.handlers = handlers or Handlers()
        self.fan_out = fan_out
        self.notify = notify
        # Routes are matched on their form here; communities are looked up inside the
        # transaction (a second connection would wait on our own write lock).
        self.router = AddressRouter(app.settings.instance.domains, lambda slug: True)
        self.classifier = classifier_config(app)

    # --- phase 1: claim ---------------------------------------------------------------------

    def claim(self, limit: int) -> list[Row[Any]]:
        now = self.app.clock.now()
        with self.app.engine.begin() as connection:
            query = (select(_inbox.c.id).where(
                _inbox.c.status.in_(("pending", "failed")), _inbox.c.next_attempt_at <= now,
                _inbox.c.attempts < self.settings.processor.max_attempts)
                .order_by(_inbox.c.id).limit(limit))
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(connection.execute(query).scalars())
            if not ids:
                return []
            connection.execute(update(_inbox).where(_inbox.c.id.in_(ids))
                               .values(next_attempt_at=now + LEASE))
            return list(connection.execute(
                select(_inbox.c.id, _inbox.c.raw, _inbox.c.sha256, _inbox.c.mail_from,
                       _inbox.c.rcpt_to, _inbox.c.kind, _inbox.c.received_at,
                       _inbox.c.attempts, _inbox.c.source)
                .where(_inbox.c.id.in_(ids)).order_by(_inbox.c.id)).all())

    # --- phase 2: prepare -------------------------------------------------------------------

    def prepare(self, row: Row[Any], store: bool = True) -> Prepared:
        prepared = Prepared(row)
        try:
            prepared.raw = row.raw if row.raw is not None else self.app.blobs.get(row.sha256)
            parsed = parse(prepared.raw, received_at=row.received_at,
                           domain=self.settings.instance.primary_domain)
            prepared.parsed = parsed
            prepared.verdict = classify(parsed.message, row.mail_from, self.classifier)
            prepared.dmarc = self.sender_authentication(parsed)
            if prepared.verdict.kind not in NOT_POSTED:
                prepared.extracted = extract(parsed, self.app.blobs if store else None,
                                             self.settings.processor.max_attachment_size,
                                             self.settings.processor.denied_attachment_types)
        except Exception as exc:
            log.exception("could not prepare inbox #%d", row.id)
            prepared.error = f"{type(exc).__name__}: {exc}"[:500]
        return prepared

    def sender_authentication(self, parsed: ParsedMail) -> str:
        trusted = self.settings.processor.trusted_authserv_ids
        if not trusted:
            return "none"
        from inbound.authresults import parse_authentication_results, sender_verdict

        return sender_verdict(parse_authentication_results(parsed.message, trusted))

    # --- phase 3: commit --------------------------------------------------------------------

    def commit(self, prepared_batch: list[Prepared]) -> None:
        try:
            self._commit(prepared_batch, immediate=False)
        except BulkWriteFailed as exc:
            # A row the checks did not foresee (a constraint, a value the database refuses):
            # the batch again, each row written at once, so that only its message fails.
            log.warning("writing a batch of %d messages in bulk failed (%s): once more, row "
                        "by row", len(prepared_batch), exc)
            self._commit(prepared_batch, immediate=True)

    def _commit(self, prepared_batch: list[Prepared], immediate: bool) -> None:
        now = self.app.clock.now()
        with self.app.engine.begin() as connection:
            ids = [p.row.id for p in prepared_batch]
            query = select(_inbox.c.id, _inbox.c.status).where(_inbox.c.id.in_(ids))
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()  # another instance may hold them too
            statuses = dict(connection.execute(query).all())
            ahead = [terms for p in prepared_batch for terms in p.index_terms]
            analyzer: Analyzer | None = None
            if ahead and connection.dialect.name == "sqlite":
                analyzer = Analyzer()
                for text, language, terms in ahead:
                    analyzer.remember(text, language, terms)
                register_analyzer(connection.connection.dbapi_connection, analyzer)
            batch = Batch(connection, self.settings, now,
                          [p.parsed for p in prepared_batch],
                          [self.forwarded_id(message) for p in prepared_batch
                           if p.extracted for message in p.extracted.forwarded],
                          immediate=immediate)
            for prepared in prepared_batch:
                if statuses.get(prepared.row.id) not in ("pending", "failed"):
                    continue  # another instance finished it while we prepared
                staged = batch.start()
                try:
                    if prepared.error:
                        raise RuntimeError(prepared.error)
                    result = self.handle(connection, batch, staged, prepared)
                    if staged.savepoint is not None:
                        staged.savepoint.commit()
                except BulkWriteFailed:
                    raise
                except Exception as exc:
                    if isinstance(exc, DBAPIError) and staged.savepoint is None \
                            and not immediate:
                        # A statement failed outside a savepoint (after which PostgreSQL
                        # refuses the rest of the transaction): message by message again.
                        raise BulkWriteFailed(f"{type(exc).__name__}: {exc}"[:500]) from exc
                    batch.discard(staged)
                    self._failed(connection, prepared, exc)
                    continue
                batch.merge(staged)
                status, reason = result.final()
                batch.outcomes.append({"inbox": prepared.row.id, "status": status,
                                       "kind": result.kind, "reason": reason,
                                       "attempts": prepared.row.attempts + 1,
                                       "processed_at": now})
                log.debug("inbox #%d <%s>: %s %s (%s)", prepared.row.id,
                          prepared.parsed.message_id if prepared.parsed else "?", result.kind,
                          status, reason)
            batch.flush()
            if analyzer is not None:
                analyzer.forget()  # the terms of messages not stored (held, rejected...)

    def _failed(self, connection: Connection, prepared: Prepared, exc: Exception) -> None:
        attempts = prepared.row.attempts + 1
        reason = prepared.error or f"{type(exc).__name__}: {exc}"[:500]
        if not prepared.error:
            log.error("inbox #%d failed (attempt %d): %s", prepared.row.id, attempts, reason,
                      exc_info=exc)
        connection.execute(update(_inbox).where(_inbox.c.id == prepared.row.id).values(
            status="failed", reason=reason[:2000], attempts=attempts,
            next_attempt_at=self.app.clock.now() + backoff(attempts)))

    def release_leases(self) -> int:
        """At start-up with SQLite (one instance by design), rows claimed by a previous run
        that died are due at once instead of when their lease expires."""
        if self.app.engine.dialect.name != "sqlite":
            return 0
        now = self.app.clock.now()
        with self.app.engine.begin() as connection:
            return connection.execute(update(_inbox).where(
                _inbox.c.status == "pending", _inbox.c.next_attempt_at > now)
                .values(next_attempt_at=now)).rowcount

    def run_once(self, limit: int | None = None) -> int:
        rows = self.claim(limit or self.settings.processor.batch_size)
        if rows:
            self.commit([self.prepare(row) for row in rows])
        return len(rows)

    def run_until_idle(self, max_passes: int = 10_000) -> int:
        total = 0
        for _ in range(max_passes):
            done = self.run_once()
            total += done
            if not done:
                break
        return total

    # --- one message ------------------------------------------------------------------------

    def routes(self, rcpt_to: list[str], result: RowResult) -> list[Route]:
        routes = []
        for recipient in rcpt_to:
            try:
                routes.append(self.router.route(recipient))
            except (NotOurDomain, UnknownAddress) as exc:
                result.add("rejected", f"{recipient}: {exc}")
        return routes

    def handle(self, connection: Connection, batch: Batch, staged: Staged,
               prepared: Prepared) -> RowResult:
        assert prepared.parsed is not None and prepared.verdict is not None
        result = RowResult(kind=prepared.verdict.kind)
        routes = self.routes(list(prepared.row.rcpt_to), result)
        verdict = prepared.verdict
        bounce_routes = [r for r in routes if r.kind == RouteKind.BOUNCE]
        if bounce_routes or verdict.kind in ("bounce", "feedback"):
            route = (bounce_routes or routes or [Route(RouteKind.BOUNCE, "")])[0]
            result.kind = verdict.kind if verdict.kind in ("bounce", "feedback") else "bounce"
            outcome = self._call(batch.direct(staged), "bounce", prepared, route)
            result.add(outcome.status, outcome.reason or verdict.reason)
            return result
        if verdict.kind in ("auto_reply", "loop"):
            result.add("discarded", verdict.reason)
            return result
        if not routes and not result.outcomes:
            result.add("rejected", "addressed to no community or address of this instance")
            return result
        for route in routes:
            if route.kind == RouteKind.REPLY and "mute" in self.handlers.extra:
                outcome = self._call(batch.direct(staged), "mute", prepared, route)
                if outcome.status != "pass":  # a "mute" reply: handled, not posted
                    result.kind = "command"
                    result.add(outcome.status, outcome.reason)
                    continue
            if route.kind in (RouteKind.POST, RouteKind.REPLY):
                if route.kind == RouteKind.REPLY and result.kind == "post":
                    result.kind = "reply"
                self.post(connection, batch, staged, prepared, route, result)
            else:
                result.kind = "command" if route.kind == RouteKind.COMMAND else route.kind
                outcome = self._call(batch.direct(staged), route.kind, prepared, route)
                result.add(outcome.status, outcome.reason)
        if prepared.parsed.in_reply_to and result.kind == "post":
            result.kind = "reply"
        return result

    def incoming(self, prepared: Prepared, route: Route) -> IncomingMail:
        parsed, verdict = prepared.parsed, prepared.verdict
        assert parsed is not None and verdict is not None
        bounces: tuple[Bounce, ...] = ()
        if verdict.kind in ("bounce", "feedback") or route.kind == RouteKind.BOUNCE:
            bounces = tuple(Bounce(b.recipient, b.status, b.hard, b.reason)
                            for b in parse_dsn(parsed.message, prepared.row.mail_from))
            if not bounces and verdict.bounce is not None:
                b = verdict.bounce
                bounces = (Bounce(b.recipient, b.status, b.hard, b.reason),)
        return IncomingMail(
            inbox_id=prepared.row.id, route=route, envelope_sender=prepared.row.mail_from,
            sender=parsed.from_address, sender_name=parsed.from_name, subject=parsed.subject,
            message_id=parsed.message_id, in_reply_to=parsed.in_reply_to,
            references=tuple(parsed.references),
            text=prepared.extracted.text if prepared.extracted else parsed.text,
            language=prepared.extracted.language if prepared.extracted else "",
            kind=verdict.kind, bounces=bounces, raw=prepared.raw)

    def _call(self, connection: Connection, name: str, prepared: Prepared, route: Route
              ) -> Outcome:
        handler: Callable[[Session, IncomingMail], Outcome] = getattr(
            self.handlers, name, None) or self.handlers.extra.get(name) or Handlers().command
        with Session(bind=connection) as session:
            outcome = handler(session, self.incoming(prepared, route))
            session.commit()  # joined to our transaction: this only releases its savepoint
        return outcome

    def _notify(self, batch: Batch, staged: Staged, prepared: Prepared, route: Route,
                code: str, details: dict[str, str]) -> None:
        verdict = prepared.verdict
        if not self.notify or not code or not prepared.row.mail_from \
                or (verdict is not None and verdict.kind in NOT_POSTED):
            return
        with Session(bind=batch.direct(staged)) as session:
            self.handlers.notify(session, self.incoming(prepared, route), code, details)
            session.commit()  # joined to our transaction: this only releases its savepoint

    def post(self, connection: Connection, batch: Batch, staged: Staged, prepared: Prepared,
             route: Route, result: RowResult) -> None:
        """Authorise, thread and store one message in one community."""
        parsed, extracted = prepared.parsed, prepared.extracted
        assert parsed is not None and extracted is not None
        token_person = token_conversation = None
        if route.kind == RouteKind.REPLY:
            data = read_token(self.app.secret, "reply", route.token)
            if data is None:
                result.add("rejected", "the reply address is not valid")
                return
            token_person, token_conversation = data.first, data.second
            batch.flush_pending()
            community_id = connection.execute(select(_conversation.c.community_id).where(
                _conversation.c.id == token_conversation)).scalar()
            community = batch.communities_by_id.get(community_id) if community_id else None
            if community is None:
                result.add("rejected", "the conversation of this reply address no longer "
                                       "exists")
                return
        else:
            community = batch.communities_by_slug.get(route.slug)
            if community is None:
                result.add("rejected", f"no community named {route.slug!r} any more")
                return
        slug = community.slug
        duplicate = batch.known.get((community.id, parsed.message_id)) \
            or staged.known.get((community.id, parsed.message_id))
        if duplicate is not None:
            result.add("discarded", f"{slug}: already archived as message #{duplicate[0]}")
            return

        sender = staged.senders.get(parsed.from_address) or batch.sender(parsed.from_address)
        member = batch.member(community.id, sender.person_id)
        # Imported history was chosen by the administrator who ran the import.
        approved = prepared.row.source == "import"
        if prepared.row.kind == "approved":
            held_status = connection.execute(select(_held.c.status).where(
                _held.c.inbox_id == prepared.row.id,
                _held.c.community_id == community.id)).scalar()
            if held_status == "pending":
                result.add("held", f"{slug}: still waiting for a moderator")
                return
            if held_status == "rejected":
                result.add("rejected", f"{slug}: rejected by a moderator")
                return
            approved = held_status == "approved"
        if not approved:
            if token_person is not None and sender.person_id != token_person:
                self._hold(batch, staged, prepared, route, community, result,
                           "sent to a personal reply address from another address",
                           "token_mismatch")
                return
            if token_person is not None and member is None:
                result.add("rejected", f"{slug}: the reply address was revoked (no longer "
                                       f"a member)")
                self._notify(batch, staged, prepared, route, "revoked",
                             {"community": slug})
                return
            decision = authorise(policy=community.posting_policy,
                                 admits_guests=community.admits_guests, sender=sender,
                                 member=member, verdict_kind=prepared.verdict.kind
                                 if prepared.verdict else "post", dmarc=prepared.dmarc,
                                 external=self.external_recipients(parsed),
                                 visibility=community.visibility)
            if decision.action == "hold":
                self._hold(batch, staged, prepared, route, community, result,
                           decision.reason, decision.code)
                return
            if decision.action == "reject":
                result.add("rejected", f"{slug}: {decision.reason}")
                return
        if extracted.is_empty:
            result.add("rejected", f"{slug}: empty message (no text, no attachment)")
            self._notify(batch, staged, prepared, route, "empty", {"community": slug})
            return
        self.store(connection, batch, staged, prepared, community, sender, token_conversation,
                   result)

    def external_recipients(self, parsed: ParsedMail) -> tuple[str, ...]:
        """To/Cc addresses outside the company (neither staff nor ours)."""
        ours = set(self.settings.instance.domains)
        return tuple(address for address in parsed.to + parsed.cc
                     if domain_of(address) not in ours
                     and not is_staff_address(self.settings, address))

    def _hold(self, batch: Batch, staged: Staged, prepared: Prepared, route: Route,
              community: Any, result: RowResult, reason: str, code: str) -> None:
        parsed = prepared.parsed
        assert parsed is not None
        connection = batch.direct(staged)
        exists = connection.execute(select(_held.c.id).where(
            _held.c.inbox_id == prepared.row.id,
            _held.c.community_id == community.id)).scalar()
        if exists is None:
            connection.execute(insert(_held).values(
                inbox_id=prepared.row.id, community_id=community.id,
                sender=parsed.from_address, subject=parsed.subject[:500], reason=reason,
                code=code, status="pending", decided_by="", decision_note="",
                created_at=self.app.clock.now()))
            self._notify(batch, staged, prepared, route, code,
                         {"community": community.slug, "reason": reason})
        result.add("held", f"{community.slug}: {reason}")

    def store(self, connection: Connection, batch: Batch, staged: Staged,
              prepared: Prepared, community: Any, sender: Sender,
              token_conversation: int | None, result: RowResult) -> None:
        parsed, extracted = prepared.parsed, prepared.extracted
        assert parsed is not None and extracted is not None
        now = batch.now
        author_id: int | None = None
        if sender.address:  # no readable From: an unknown author, not a person named ""
            author_id = batch.person(staged, sender, parsed.from_name)
            if sender.person_id is None:
                staged.senders[sender.address] = Sender(author_id, sender.address,
                                                        sender.kind, sender.language)
        choice = self.choose(connection, batch, community.id, parsed, token_conversation)
        if choice.how == "new" and extracted.forwarded:
            choice = self.choose_forwarded(batch, community.id, extracted.forwarded)
        conversation_id = choice.conversation_id
        if conversation_id is None:
            conversation_id = batch.add(staged, _conversation,
                                        conversation_row(community.id, parsed, author_id))
            assert conversation_id is not None
            staged.subjects[(community.id, normalise_subject(parsed.subject))] = \
                conversation_id
        parent_id = choice.parent_id
        if extracted.forwarded:
            parent_id = self.store_forwarded(connection, batch, staged, prepared, community,
                                             conversation_id, parent_id)
        message_pk = self.insert_message(batch, staged, prepared, community, {
            "conversation_id": conversation_id, "message_id": parsed.message_id,
            "parent_id": parent_id, "in_reply_to": parsed.in_reply_to,
            "references": parsed.references, "author_id": author_id,
            "from_address": parsed.from_address, "from_name": parsed.from_name,
            "date": parsed.date, "subject": parsed.subject, "text": extracted.text,
            "quoted": extracted.quoted, "signature": extracted.signature,
            "html": extracted.html, "language": extracted.language or community.language,
            "to_cc": parsed.to + parsed.cc, "security": extracted.security,
            "has_attachments": any(not a.inline for a in extracted.attachments)})
        staged.known[(community.id, parsed.message_id)] = (message_pk, conversation_id)
        for position, a in enumerate(extracted.attachments):
            batch.add(staged, _attachment, {
                "message_id": message_pk, "position": position, "filename": a.filename,
                "content_type": a.content_type, "size": a.size,
                "sha256": a.sha256 if a.kept else "", "inline": a.inline,
                "content_id": a.content_id})
        staged.counters.append((conversation_id, parsed.date,
                                choice.conversation_id is not None or bool(extracted.forwarded)))
        if parsed.in_reply_to and choice.parent_id is None:
            staged.children[(community.id, parsed.in_reply_to)] = 1
        if (community.id, parsed.message_id) in batch.children:
            gone = relink_children(batch.direct(staged), community.id, message_pk,
                                   parsed.message_id, conversation_id)
            if gone:
                batch.merged(gone, conversation_id)
                staged.refreshed |= gone | {conversation_id}
        if extracted.forwarded and choice.conversation_id is None:
            # The thread began earlier.
            refresh_conversation(batch.direct(staged), conversation_id)
            staged.refreshed.add(conversation_id)
        deliveries = 0
        if self.fan_out and prepared.row.source != "import":
            recipients, mutes = batch.recipients(community.id)
            chosen = choose_recipients(recipients, mutes, conversation_id=conversation_id,
                                       author_id=author_id, to_cc=parsed.to + parsed.cc)
            staged.deliveries.extend(delivery_rows(message_pk, community.id, chosen, now))
            deliveries = len(chosen)
        result.add("done", f"{community.slug}: conversation #{conversation_id} "
                           f"({choice.how}), {deliveries} copies to send")

    def insert_message(self, batch: Batch, staged: Staged, prepared: Prepared,
                       community: Any, values: dict[str, Any]) -> int:
        """Stage a message row (`values` over the defaults); returns its id."""
        row = {"community_id": community.id, "received_at": prepared.row.received_at,
               "inbox_id": prepared.row.id, "status": "published", "redacted_reason": "",
               "redacted_at": None, "quoted": "", "signature": "", "html": "",
               "in_reply_to": "", "references": [], "to_cc": [], "has_attachments": False,
               "security": "",
               "language": community.language} | values
        message_pk = batch.add(staged, _message, row)
        assert message_pk is not None
        return message_pk

    def forwarded_id(self, message: ForwardedMessage) -> str:
        """The Message-ID a forwarded thread's message is archived under."""
        return message.message_id or derived_id(message, self.settings.instance.primary_domain)

    def choose_forwarded(self, batch: Batch, community_id: int,
                         forwarded: list[ForwardedMessage]) -> ThreadChoice:
        """A forward of a thread the community already holds joins its conversation."""
        for message in reversed(forwarded):
            message_id = self.forwarded_id(message)
            known = batch.known.get((community_id, message_id))
            if known is not None:
                return ThreadChoice(known[1], known[0], "forwarded thread")
        return ThreadChoice(None, None, "new")

    def store_forwarded(self, connection: Connection, batch: Batch, staged: Staged,
                        prepared: Prepared, community: Any, conversation_id: int,
                        parent_id: int | None) -> int | None:
        """The messages of a forwarded thread, oldest first, with their own authors and
        dates; returns the newest one's id (the forwarder's note answers it)."""
        parsed = prepared.parsed
        assert parsed is not None
        for message in prepared.extracted.forwarded if prepared.extracted else []:
            message_id = self.forwarded_id(message)
            if message_id == parsed.message_id:
                continue  # the message forwards itself: it is stored once, as itself
            known = batch.known.get((community.id, message_id)) or staged.known.get(
                (community.id, message_id))
            if known is not None:
                parent_id = known[0]
                continue
            author_id = None
            if message.author_address:
                sender = (staged.senders.get(message.author_address)
                          or batch.senders.get(message.author_address))
                if sender is None:
                    batch.flush_pending()
                    sender = find_sender(connection, self.settings, message.author_address)
                author_id = batch.person(staged, sender, message.author_name)
                staged.senders[sender.address] = Sender(author_id, sender.address,
                                                        sender.kind, sender.language)
            date = min(message.date or parsed.date, parsed.date)
            pk = self.insert_message(batch, staged, prepared, community, {
                "conversation_id": conversation_id, "message_id": message_id,
                "parent_id": parent_id, "author_id": author_id,
                "from_address": message.author_address, "from_name": message.author_name,
                "date": date, "subject": message.subject or parsed.subject,
                "text": message.text, "language": guess_language(message.text)
                or community.language})
            staged.known[(community.id, message_id)] = (pk, conversation_id)
            staged.counters.append((conversation_id, date, parent_id is not None))
            parent_id = pk
        return parent_id

    def choose(self, connection: Connection, batch: Batch, community_id: int,
               parsed: ParsedMail, token_conversation: int | None) -> ThreadChoice:
        """The thread step, on what the batch knows (see inbound.threader for the rules)."""
        for ref in ancestors(parsed):
            known = batch.known.get((community_id, ref))
            if known is not None:
                return ThreadChoice(known[1], known[0], "references")
        if token_conversation is not None:
            batch.flush_pending()
            exists = connection.execute(select(_conversation.c.id).where(
                _conversation.c.id == token_conversation,
                _conversation.c.community_id == community_id)).scalar()
            if exists is not None:
                return ThreadChoice(int(exists), None, "reply token")
        by_subject = batch.subjects.get((community_id, normalise_subject(parsed.subject)))
        if by_subject is not None and self.settings.processor.thread_window_days > 0:
            return ThreadChoice(by_subject, None, "subject")
        return ThreadChoice(None, None, "new")


class ProcessorService:
    """The processor as a task of `serve`: woken by new mail, or every second."""

    name = "processor"

    def __init__(self, processor: Processor, arrived: asyncio.Event | None = None,
                 idle_seconds: float = 1.0) -> None:
        self.processor = processor
        self.arrived = arrived or asyncio.Event()
        self.idle_seconds = idle_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        released = await asyncio.to_thread(self.processor.release_leases)
        if released:
            log.info("%d messages claimed by a previous run are due again", released)
        self._task = asyncio.create_task(self._run(), name="processor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                done = await asyncio.to_thread(self.processor.run_once)
            except Exception:
                log.exception("processor pass failed; retrying")
                done = 0
                await asyncio.sleep(self.idle_seconds)
            if done:
                continue
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), self.idle_seconds)
