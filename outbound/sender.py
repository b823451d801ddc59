"""The sender: a `serve` task that claims due deliveries, composes and sends them.

One cycle (`run_once`):

1. **Claim** up to `send_batch_size` due deliveries in one short transaction: PostgreSQL
   takes them with `FOR UPDATE SKIP LOCKED` (several instances claim side by side);
   SQLite's single writer serialises claims. Claiming counts an attempt and moves
   `next_attempt_at` a lease ahead: if the process dies before recording the outcome, the
   rows become due again when the lease ends and are sent again (twice, never zero times).
2. **Compose** in a worker thread (database reads, templates, DKIM are blocking work that
   must not stall the SMTP server on the same loop), in slices bounded by bytes, so that a
   large message does not make a batch of copies sit in memory; the next slice is composed
   while the current one is being sent.
3. **Send** the batch over one relay connection (or into the Maildir outbox).
4. **Record** every outcome in one transaction: sent; 4xx or connection trouble: retried
   with exponential backoff and jitter until `max_retry_hours` after the delivery was
   created, then failed; 5xx: failed at once, and the member's bounce score rises (5.7.x
   policy refusals excepted). A copy for someone who left, was disabled, muted the
   conversation or switched to digests since the fan-out is cancelled (failed, with why).

Post deliveries are composed from the stored message (compose.py); every other kind
(notice, digest, command, moderation, private, owner) carries its bytes in
`Delivery.raw` and goes out as it is, with the same VERP envelope and DKIM signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from bridge.app import App
from bridge.directory import person_kind
from bridge.i18n import Catalogues, catalogues
from bridge.models import (
    Community,
    Delivery,
    InboxItem,
    Membership,
    Message,
    Mute,
    Organisation,
    Person,
)
from outbound.bounces import BounceScores, smtp_classify
from outbound.compose import Composer, PostContext, PostInfo, Recipient
from outbound.dkim import DkimSigner
from outbound.dmarc import DmarcPolicies, DnsTxtResolver, TxtResolver
from outbound.maildir import MaildirTransport
from outbound.notices import Notices
from outbound.transport import Outgoing, Result, SmtpTransport, Transport

log = logging.getLogger("causerie.delivery")

_delivery = Delivery.__table__  # type: ignore[attr-defined]
_membership = Membership.__table__  # type: ignore[attr-defined]
_mute = Mute.__table__  # type: ignore[attr-defined]
_person = Person.__table__  # type: ignore[attr-defined]

LEASE = timedelta(minutes=10)
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=4)
SLICE_BYTES = 4 * 1024 * 1024   # composed copies held at once, per slice
SLICE_ITEMS = 50
CONTEXT_CACHE = 8               # messages whose parsed original is kept between batches


def backoff(attempts: int, rng: random.Random) -> timedelta:
    """Exponential backoff with "equal jitter": between half and all of base * 2^(n-1)."""
    seconds = min(BACKOFF_BASE.total_seconds() * 2 ** max(attempts - 1, 0),
                  BACKOFF_CAP.total_seconds())
    return timedelta(seconds=seconds * (0.5 + rng.random() / 2))


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    message_pk: int | None
    community_id: int | None
    person_id: int | None
    address: str
    attempts: int
    created_at: datetime


def make_composer(app: App, resolver: TxtResolver | None = None,
                  catalogue: Catalogues | None = None) -> Composer:
    """A composer from the settings: DMARC through DNS (or `resolver`), DKIM when set."""
    settings = app.settings
    policies = DmarcPolicies(resolver or DnsTxtResolver(), app.clock)
    signer = None
    if settings.outbound.dkim_selector and settings.outbound.dkim_key_file:
        signer = DkimSigner.from_file(settings.outbound.dkim_selector,
                                      settings.instance.primary_domain,
                                      settings.outbound.dkim_key_file)
        log.info("DKIM signing with selector %s (%s)", settings.outbound.dkim_selector,
                 signer.backend)
    return Composer(secret=app.secret, domain=settings.instance.primary_domain,
                    base_url=settings.instance.base_url, instance_name=settings.instance.name,
                    catalogues=catalogue or catalogues(("email",)),
                    default_language=settings.instance.language,
                    rewrite_from=policies.rewrite_from, sign=signer)


def default_transport(app: App) -> Callable[[], Transport]:
    outbound = app.settings.outbound
    if outbound.outbox_is_maildir:
        return lambda: MaildirTransport(app.settings.outbox_dir)
    return lambda: SmtpTransport(outbound)


def load_post_info(app: App, session: Session, message_pk: int) -> PostInfo | None:
    message = session.get(Message, message_pk)
    if message is None or message.status != "published":
        return None
    community = session.get(Community, message.community_id)
    if community is None:
        return None
    author = session.get(Person, message.author_id) if message.author_id else None
    external = False
    organisation = ""
    if author is not None:
        external = person_kind(session, app.settings, author) == "guest"
        if author.organisation_id:
            org = session.get(Organisation, author.organisation_id)
            organisation = org.name if org else ""
    raw = b""
    if message.inbox_id is not None:
        item = session.get(InboxItem, message.inbox_id)
        if item is not None:
            raw = app.raw_mail(item)
    if not raw:
        raw = _synthesise(message)
    return PostInfo(
        message_pk=message_pk, message_id=message.message_id,
        conversation_id=message.conversation_id, community_id=community.id or 0,
        community_slug=community.slug, community_name=community.name,
        subject_tag=community.subject_tag, reply_policy=community.reply_to,
        author_id=message.author_id,
        author_name=message.from_name or (author.display_name if author else ""),
        author_address=message.from_address, author_external=external,
        author_organisation=organisation, subject=message.subject, raw=raw)


def _synthesise(message: Message) -> bytes:
    """A message whose raw mail is gone (imported, redacted store): rebuilt from the row."""
    from email import policy
    from email.message import EmailMessage
    from email.utils import format_datetime

    mail = EmailMessage()
    mail["From"] = message.from_address or "unknown@invalid"
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(message.date)
    mail["Message-ID"] = f"<{message.message_id}>"
    if message.in_reply_to:
        mail["In-Reply-To"] = f"<{message.in_reply_to}>"
    if message.references:
        mail["References"] = " ".join(f"<{r}>" for r in message.references)
    mail.set_content("\n\n".join(p for p in (message.text, message.quoted) if p) or " ")
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    return mail.as_bytes(policy=policy.SMTP)


class Sender:
    """The `serve` service that empties the delivery queue."""

    name = "sender"

    def __init__(self, app: App, *, transport: Callable[[], Transport] | None = None,
                 composer: Composer | None = None, resolver: TxtResolver | None = None,
                 rng: random.Random | None = None, poll_interval: float = 1.0,
                 batch_size: int | None = None, connections: int = 2,
                 sweeps: list[Callable[[], Any]] | None = None) -> None:
        self.app = app
        self.transport_factory = transport or default_transport(app)
        self.composer = composer or make_composer(app, resolver)
        self.rng = rng or random.Random()
        self.poll_interval = poll_interval
        self.batch_size = batch_size or app.settings.outbound.send_batch_size
        self.connections = max(1, connections)
        self.max_age = timedelta(hours=app.settings.outbound.max_retry_hours)
        self.scores = BounceScores(app, Notices(app))
        self.sweeps = list(sweeps or [])
        self.is_postgres = app.engine.dialect.name == "postgresql"
        self._contexts: OrderedDict[int, PostContext | None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.sent = 0

    # -- service -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._stop.clear()
        released = await asyncio.to_thread(self.release_leases)
        if released:
            log.info("%d deliveries claimed by a previous run are due again", released)
        self._task = asyncio.create_task(self._run(), name="causerie-sender")

    def release_leases(self) -> int:
        """With SQLite (one instance by design), rows a previous run claimed and did not
        record are due at once instead of when their lease ends. (Rows waiting for a retry
        may be tried a little early: harmless.)"""
        if self.is_postgres:
            return 0
        now = self.app.clock.now()
        with self.app.engine.begin() as connection:
            return connection.execute(update(_delivery).where(
                _delivery.c.status == "pending", _delivery.c.next_attempt_at > now,
                _delivery.c.next_attempt_at <= now + LEASE)
                .values(next_attempt_at=now)).rowcount

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count = await self.drain()
            except Exception:
                log.exception("sender cycle failed; retrying")
                count = 0
            if count == 0 and not self._stop.is_set():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    # -- cycles ------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        for sweep in self.sweeps:
            try:
                await asyncio.to_thread(sweep)
            except Exception:
                log.exception("sweep %s failed", getattr(sweep, "__name__", sweep))

    async def run_once(self) -> int:
        """One claim, deliver, record cycle; returns how many deliveries it handled."""
        await self._sweep()
        claimed = await asyncio.to_thread(self.claim)
        if not claimed:
            return 0
        results = await self.deliver(claimed)
        await asyncio.to_thread(self.record, claimed, results)
        return len(claimed)

    async def drain(self) -> int:
        """Cycles until nothing is due, pipelined: the next batch is claimed, and the last
        one recorded, while the current one is being sent (claims are leased, so a batch
        claimed ahead is nobody else's)."""
        await self._sweep()
        if self._stop.is_set():
            return 0
        total = 0
        claim = asyncio.ensure_future(asyncio.to_thread(self.claim))
        recording: asyncio.Future[None] | None = None
        try:
            while True:
                claimed = await claim
                if not claimed:
                    break
                if not self._stop.is_set():
                    claim = asyncio.ensure_future(asyncio.to_thread(self.claim))
                else:  # stopping: send what is claimed, claim nothing more
                    claim = asyncio.ensure_future(asyncio.sleep(0, result=[]))
                results = await self.deliver(claimed)
                if recording is not None:
                    await recording
                recording = asyncio.ensure_future(
                    asyncio.to_thread(self.record, claimed, results))
                total += len(claimed)
        finally:
            if recording is not None:
                await recording
        return total

    def claim(self) -> list[Claimed]:
        now = self.app.clock.now()
        with self.app.engine.begin() as connection:
            query = (select(_delivery.c.id)
                     .where(_delivery.c.status == "pending", _delivery.c.next_attempt_at <= now)
                     .order_by(_delivery.c.next_attempt_at, _delivery.c.id)
                     .limit(self.batch_size))
            if self.is_postgres:
                query = query.with_for_update(skip_locked=True)
            ids = [row.id for row in connection.execute(query)]
            if not ids:
                return []
            connection.execute(update(_delivery).where(_delivery.c.id.in_(ids)).values(
                attempts=_delivery.c.attempts + 1, next_attempt_at=now + LEASE))
            rows = connection.execute(
                select(_delivery.c.id, _delivery.c.kind, _delivery.c.message_id,
                       _delivery.c.community_id, _delivery.c.person_id, _delivery.c.address,
                       _delivery.c.attempts, _delivery.c.created_at)
                .where(_delivery.c.id.in_(ids)).order_by(_delivery.c.message_id,
                                                         _delivery.c.id)).all()
        return [Claimed(r.id, r.kind, r.message_id, r.community_id, r.person_id, r.address,
                        r.attempts, r.created_at) for r in rows]

    # -- composing ---------------------------------------------------------------------------
    def _context(self, session: Session, message_pk: int) -> PostContext | None:
        try:
            cached = self._contexts[message_pk]
        except KeyError:
            pass
        else:
            with contextlib.suppress(KeyError):
                self._contexts.move_to_end(message_pk)
            return cached
        info = load_post_info(self.app, session, message_pk)
        context = self.composer.post_context(info) if info is not None else None
        self._contexts[message_pk] = context
        while len(self._contexts) > CONTEXT_CACHE:
            with contextlib.suppress(KeyError):
                self._contexts.popitem(last=False)
        return context

    def _recipients_state(self, session: Session, rows: list[Claimed]
                          ) -> dict[int, tuple[str, str]]:
        """person id -> (language, why the copy is cancelled or "") for the post rows."""
        posts = [r for r in rows if r.kind == "post" and r.person_id is not None]
        people = {r.person_id for r in posts}
        if not people:
            return {}
        state: dict[int, tuple[str, str]] = {}
        languages = dict(session.execute(select(_person.c.id, _person.c.language)
                                         .where(_person.c.id.in_(people))).all())
        forgotten = {row.id for row in session.execute(
            select(_person.c.id).where(_person.c.id.in_(people),
                                       _person.c.forgotten_at.is_not(None)))}
        members: dict[tuple[int, int], tuple[str, str]] = {
            (row.community_id, row.person_id): (row.delivery_mode, row.disabled_reason)
            for row in session.execute(
                select(_membership.c.community_id, _membership.c.person_id,
                       _membership.c.delivery_mode, _membership.c.disabled_reason)
                .where(_membership.c.person_id.in_(people)))}
        muted = {(row.person_id, row.conversation_id) for row in session.execute(
            select(_mute.c.person_id, _mute.c.conversation_id)
            .where(_mute.c.person_id.in_(people)))}
        for row in posts:
            assert row.person_id is not None
            language = languages.get(row.person_id) or ""
            why = ""
            member = members.get((row.community_id or 0, row.person_id))
            if member is None:
                why = "cancelled: no longer a member"
            elif member[1]:
                why = f"cancelled: delivery disabled ({member[1]})"
            elif member[0] != "each":
                why = f"cancelled: delivery mode is now {member[0]}"
            elif row.person_id in forgotten:
                why = "cancelled: person forgotten"
            else:
                context = self._contexts.get(row.message_pk or 0)
                if context and (row.person_id, context.info.conversation_id) in muted:
                    why = "cancelled: conversation muted"
            state[row.id] = (language, why)
        return state

    def compose_slice(self, rows: list[Claimed]) -> tuple[list[Outgoing], list[Result],
                                                           list[Claimed]]:
        """Compose copies until the slice holds SLICE_BYTES or SLICE_ITEMS; returns
        (ready to send, results of copies not sent, rows left for the next slice)."""
        outgoing: list[Outgoing] = []
        done: list[Result] = []
        size = 0
        with Session(self.app.engine) as session:
            for row in rows:
                if row.kind == "post" and row.message_pk is not None:
                    self._context(session, row.message_pk)
            state = self._recipients_state(session, rows)
            for index, row in enumerate(rows):
                if size >= SLICE_BYTES or len(outgoing) >= SLICE_ITEMS:
                    return outgoing, done, rows[index:]
                try:
                    data = self._compose_one(session, row, state)
                except Exception as exc:  # one bad copy never blocks the others
                    log.exception("composing delivery #%s failed", row.id)
                    done.append(Result.temporary(row.id, f"compose: {type(exc).__name__}: "
                                                         f"{exc}"[:300]))
                    continue
                if isinstance(data, Result):
                    done.append(data)
                    continue
                size += len(data)
                outgoing.append(Outgoing(row.id, self.composer.envelope_sender(row.id),
                                         row.address, data))
        return outgoing, done, []

    def _compose_one(self, session: Session, row: Claimed,
                     state: dict[int, tuple[str, str]]) -> bytes | Result:
        if row.kind == "post":
            if row.message_pk is None or row.person_id is None:
                return Result(row.id, "cancelled", message="cancelled: post without message")
            context = self._context(session, row.message_pk)
            if context is None:
                return Result(row.id, "cancelled", message="cancelled: message not published")
            language, why = state.get(row.id, ("", ""))
            if why:
                return Result(row.id, "cancelled", message=why)
            return self.composer.compose_post(
                context, Recipient(row.id, row.person_id, row.address, language))
        raw = session.execute(select(_delivery.c.raw).where(_delivery.c.id == row.id)
                              ).scalar_one_or_none()
        if not raw:
            return Result(row.id, "cancelled", message=f"cancelled: {row.kind} without content")
        data = bytes(raw)
        if self.composer.sign is not None:
            data = self.composer.sign(data) + data
        return data

    # -- sending -----------------------------------------------------------------------------
    async def deliver(self, claimed: list[Claimed]) -> list[Result]:
        """Send a claimed batch over `connections` relay connections side by side (while
        one waits for the relay's answer, the other sends)."""
        if not claimed:
            return []
        size = -(-len(claimed) // self.connections)
        parts = [claimed[start:start + size] for start in range(0, len(claimed), size)]
        done = await asyncio.gather(*(self._deliver_part(part) for part in parts))
        return [result for results in done for result in results]

    async def _deliver_part(self, claimed: list[Claimed]) -> list[Result]:
        results: list[Result] = []
        transport = self.transport_factory()
        await transport.open()
        try:
            job: asyncio.Future[tuple[list[Outgoing], list[Result], list[Claimed]]] | None = (
                asyncio.ensure_future(asyncio.to_thread(self.compose_slice, claimed)))
            while job is not None:
                outgoing, done, rest = await job
                results.extend(done)
                job = (asyncio.ensure_future(asyncio.to_thread(self.compose_slice, rest))
                       if rest else None)
                if outgoing:
                    results.extend(await transport.send_many(outgoing))
        finally:
            await transport.close()
        if transport.down:
            log.warning("relay trouble: %s", transport.down)
        return results

    # -- recording ---------------------------------------------------------------------------
    def record(self, claimed: list[Claimed], results: list[Result]) -> None:
        now = self.app.clock.now()
        rows = {row.id: row for row in claimed}
        seen = {result.delivery_id for result in results}
        for row in claimed:  # anything without a result (should not happen) is retried
            if row.id not in seen:
                results.append(Result.temporary(row.id, "no outcome recorded"))
        sent = [r.delivery_id for r in results if r.outcome == "sent"]
        changes: list[dict[str, Any]] = []
        permanent: list[tuple[Claimed, Result]] = []
        for result in results:
            row = rows[result.delivery_id]
            if result.outcome == "sent":
                continue
            error = (f"{result.code} {result.message}" if result.code else result.message)[:500]
            if result.outcome == "temporary":
                created = row.created_at if row.created_at.tzinfo else row.created_at.replace(
                    tzinfo=now.tzinfo)
                retry_at = now + backoff(row.attempts, self.rng)
                if retry_at - created > self.max_age:
                    changes.append({"b_id": row.id, "b_status": "failed", "b_next": now,
                                    "b_error": f"gave up after {row.attempts} attempts: {error}"})
                else:
                    changes.append({"b_id": row.id, "b_status": "pending", "b_next": retry_at,
                                    "b_error": error})
            else:
                changes.append({"b_id": row.id, "b_status": "failed", "b_next": now,
                                "b_error": error})
                if result.outcome == "permanent":
                    permanent.append((row, result))
        with Session(self.app.engine) as session:
            if sent:
                session.execute(update(_delivery).where(_delivery.c.id.in_(sent)).values(
                    status="sent", sent_at=now, last_error=""))
            if changes:
                session.connection().execute(
                    update(_delivery).where(_delivery.c.id == bindparam("b_id")).values(
                        status=bindparam("b_status"), next_attempt_at=bindparam("b_next"),
                        last_error=bindparam("b_error")),
                    changes)
            for row, result in permanent:
                kind = smtp_classify(result.status)
                log.warning("delivery #%s to %s refused: %s %s", row.id, row.address,
                            result.code, result.message)
                if kind == "policy" or row.community_id is None or row.person_id is None:
                    continue
                self.scores.record(session, community_id=row.community_id,
                                   person_id=row.person_id, kind=kind, status=result.status,
                                   reason=f"smtp {result.code}", address=row.address)
            session.commit()
        self.sent += len(sent)
        if sent:
            log.info("sent %d, retrying %d, failed %d", len(sent),
                     sum(1 for c in changes if c["b_status"] == "pending"),
                     sum(1 for c in changes if c["b_status"] == "failed"))
