"""The IMAP poller: mailboxes where the MX cannot point at Causerie, read as reliably as SMTP.

Each `[[imap.mailbox]]` is one `ImapPoller`, a Service of `causerie serve`:

1. It takes the mailbox's lease (`inbound.imap_store`), so that with several instances on
   PostgreSQL one of them polls it at a time; the others stand by and take over when the
   lease expires.
2. It connects (`inbound.imap_connect`), selects the folder and fetches every UID above the
   stored last UID with `BODY.PEEK[]` (nothing is marked seen by the fetch itself), in
   batches.
3. Each batch is committed — inbox rows, the UIDs they came from, the new last UID — in one
   transaction; only then are the messages moved to the processed folder (RFC 6851 MOVE;
   without MOVE, COPY + \\Deleted + UID EXPUNGE of exactly those UIDs, which UIDPLUS makes
   possible; without either, they are only flagged \\Seen) or flagged \\Seen. Nothing else is
   ever deleted or expunged.
4. Then it waits: IDLE when the server offers it (re-issued well before the 29-minute limit
   of RFC 2177), otherwise a poll every `poll_interval` seconds.

Any failure (refused login, no route, TLS, a drop in the middle of a batch) ends the
connection; the poller logs one clear line and reconnects with exponential backoff. It never
takes `serve` down. A restart resumes from the stored UIDVALIDITY and last UID; messages
committed but not yet moved when the connection dropped are moved on the next connection;
a UIDVALIDITY change starts a full re-sync in which already-ingested messages are recognised
(`MailboxStore.ingest`).

imapclient is blocking and a connection is not thread-safe, so each poller runs all its
IMAP calls in one thread of its own (a single-worker executor): a long IDLE then never
occupies the event loop's shared default pool, which the processor and the SMTP gateway use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from email.utils import getaddresses, parseaddr
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from imapclient import DELETED, SEEN, IMAPClient

from bridge.addresses import AddressRouter, NotOurDomain, UnknownAddress
from bridge.settings import ImapMailbox
from inbound.imap_connect import (
    ClientFactory,
    FolderMissing,
    ImapFailure,
    close_quietly,
    connect,
    failure,
    read_secret,
    where,
)
from inbound.imap_store import Fetched, Ingested, LeaseLost, MailboxStore

if TYPE_CHECKING:
    from bridge.app import App
    from inbound.store import InboxWriter

log = logging.getLogger("causerie.inbound.imap")

T = TypeVar("T")

ROUTING_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To")


@dataclass(frozen=True)
class PollerOptions:
    """Timings of a poller. The defaults are for production; tests shorten them."""

    idle_refresh: float = 25 * 60   # re-issue IDLE after this long (servers may drop at 29')
    poll_interval: float | None = None  # seconds between polls without IDLE; None: settings'
    batch_size: int = 250           # messages fetched and committed together, at most
    batch_bytes: int = 32 << 20     # ... and bytes (one larger message is a batch alone)
    lease: float = 120.0            # seconds a lease lasts without renewal
    backoff_first: float = 1.0      # first reconnection delay, doubled at each failure
    backoff_max: float = 300.0
    tick: float = 1.0               # how often a waiting thread looks at the stop flag
    timeout: float = 60.0           # socket connect and read timeout
    stop_grace: float = 5.0         # how long stop() waits for a clean LOGOUT


# --- routing ------------------------------------------------------------------------------


class Recipients:
    """The envelope of a message read from a mailbox, which has none of its own.

    With a fixed `community`, every message goes to that community's posting address.
    Otherwise the recipients are the addresses in To, Cc, Delivered-To and X-Original-To
    that are ours (a community, a command, a reply or bounce address); a message matching
    none is still stored, with no recipient, and the processor records why it went nowhere.
    The envelope sender is the Return-Path the delivering server wrote (empty for bounces),
    or the From address when there is none.
    """

    def __init__(self, box: ImapMailbox, router: Callable[[], AddressRouter]) -> None:
        self.box = box
        self.make_router = router
        self._router: AddressRouter | None = None

    def fresh(self) -> None:
        """Forget looked-up communities (one router, with its cache, per sync pass)."""
        self._router = None

    def router(self) -> AddressRouter:
        if self._router is None:
            base = self.make_router()
            cache: dict[str, bool] = {}

            def exists(slug: str) -> bool:
                if slug not in cache:
                    cache[slug] = base.community_exists(slug)
                return cache[slug]

            domains = (base.primary_domain, *sorted(base.domains - {base.primary_domain}))
            self._router = AddressRouter(domains, exists, base.token_valid)
        return self._router

    def envelope(self, raw: bytes) -> tuple[tuple[str, ...], str]:
        """(recipients, envelope sender) for `raw`."""
        fields = header_fields(raw)
        sender = _one_address((fields.get("return-path") or fields.get("from") or [""])[0])
        router = self.router()
        if self.box.community:
            return (router.posting_address(self.box.community),), sender
        domains = router.domains
        # Only values naming one of our domains can route (most addresses in a team's
        # mailbox are not ours); parsing every address list costs more than the rest.
        values = [value for name in ROUTING_FIELDS for value in fields.get(name, ())
                  if not value.isascii() or any(d in value.lower() for d in domains)]
        found: list[str] = []
        for address in _addresses(values):
            domain = address.rpartition("@")[2].lower()
            if domain.isascii() and domain not in domains:
                continue
            try:
                route = router.route(address)
            except (NotOurDomain, UnknownAddress):
                continue
            if route.address not in found:
                found.append(route.address)
        return tuple(found), sender


ROUTING_FIELDS = tuple(name.lower() for name in ROUTING_HEADERS)
_FIELDS = re.compile(rb"^(to|cc|delivered-to|x-original-to|return-path|from)[ \t]*:"
                     rb"(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_FOLD = re.compile(rb"\r?\n[ \t]")


def header_fields(raw: bytes) -> dict[str, list[str]]:
    """The address fields of the header block, unfolded, by lower-case name, in order.

    A scan of the header block only: the `email` parser costs ~100 µs a message here,
    several times the rest of the poller's own work, and would read the body too.
    """
    fields: dict[str, list[str]] = {}
    for match in _FIELDS.finditer(_head(raw)):
        name = match.group(1).decode("ascii").lower()
        value = _FOLD.sub(b" ", match.group(2)).decode("utf-8", "replace").strip()
        fields.setdefault(name, []).append(value)
    return fields


_ANGLE = re.compile(r"<([^<>\s]*)>\s*$")
_SPECIAL = re.compile(r'["(\\:;]')   # quotes, comments, groups: the full parser's job


def _one_address(value: str) -> str:
    """The address of 'Name <a@b>', '<a@b>', '<>' or 'a@b' ('' for the null sender)."""
    if not _SPECIAL.search(value):
        match = _ANGLE.search(value)
        if match:
            return match.group(1)
        if "<" not in value and " " not in value.strip():
            return value.strip()
    return parseaddr(value)[1]


def _addresses(values: list[str]) -> list[str]:
    """The addresses in address-list values; plain lists are split without the parser."""
    plain = [value for value in values if not _SPECIAL.search(value)]
    found = [_one_address(part) for value in plain for part in value.split(",")
             if part.strip()]
    found.extend(address for _name, address in getaddresses(
        [value for value in values if _SPECIAL.search(value)]))
    return found


def _head(raw: bytes) -> bytes:
    """The header block, up to the first empty line."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[:min(ends) + 1] if ends else raw


# --- folders ------------------------------------------------------------------------------


@dataclass
class FolderPlan:
    """Where to read, and what to do with processed mail, on this particular server."""

    folder: str                 # the watched folder, as the server spells it
    processed: str              # the processed folder, as the server spells it
    after: str                  # "move" (MOVE), "copy" (COPY + UID EXPUNGE) or "seen"
    can_idle: bool
    notes: list[str]            # what was found or done, for the log and the CLI


def plan_folders(client: IMAPClient, box: ImapMailbox, create: bool = True) -> FolderPlan:
    """Check the watched folder, choose how processed messages leave it, create the target.

    Folder names in the settings use '/' between levels; servers that use another
    separator (Dovecot's Maildir uses '.') or a personal namespace prefix get the name
    translated.
    """
    separator, prefix = "/", ""
    with contextlib.suppress(Exception):
        listing = client.list_folders("", "")
        if listing and listing[0][1]:
            raw = listing[0][1]
            separator = raw.decode() if isinstance(raw, bytes) else str(raw)
    if client.has_capability("NAMESPACE"):
        with contextlib.suppress(Exception):
            personal = client.namespace().personal
            if personal:
                prefix = str(personal[0][0] or "")

    def server_name(name: str) -> str:
        if name.upper() == "INBOX":
            return "INBOX"
        if separator != "/":
            name = separator.join(name.split("/"))
        if prefix and not name.startswith(prefix) and not name.upper().startswith("INBOX"):
            name = prefix + name
        return name

    folder = server_name(box.folder)
    if not client.folder_exists(folder):
        names = [name for _flags, _sep, name in client.list_folders()][:12]
        raise FolderMissing(f"folder {box.folder!r} does not exist on {box.host}:{box.port} "
                            f"for {box.user!r} (folders: {', '.join(names) or 'none'})")
    plan = FolderPlan(folder, server_name(box.processed_folder), "seen",
                      client.has_capability("IDLE"), [])
    if box.after == "move":
        if client.has_capability("MOVE"):
            plan.after = "move"
        elif client.has_capability("UIDPLUS"):
            plan.after = "copy"
        else:
            plan.notes.append("the server offers neither MOVE nor UIDPLUS: processed messages "
                              "are flagged \\Seen and left in place (moving them would need an "
                              "EXPUNGE that could remove other messages)")
    if plan.after != "seen" and plan.processed == plan.folder:
        raise ImapFailure(f"processed_folder {box.processed_folder!r} is the watched folder "
                          "itself: moved messages would come back forever")
    if plan.after != "seen" and not client.folder_exists(plan.processed):
        if create:
            client.create_folder(plan.processed)
            with contextlib.suppress(Exception):
                client.subscribe_folder(plan.processed)
            plan.notes.append(f"created folder {plan.processed!r}")
        else:
            plan.notes.append(f"folder {plan.processed!r} will be created")
    return plan


# --- one connection -------------------------------------------------------------------------


class MailboxSession:
    """One logged-in connection to one mailbox. Every method blocks: call from one thread."""

    def __init__(self, box: ImapMailbox, client: IMAPClient, plan: FolderPlan,
                 store: MailboxStore, recipients: Recipients, options: PollerOptions,
                 on_commit: Callable[[Ingested], None]) -> None:
        self.box = box
        self.client = client
        self.plan = plan
        self.store = store
        self.recipients = recipients
        self.options = options
        self.on_commit = on_commit
        self.stop = threading.Event()

    # --- one pass -------------------------------------------------------------------------

    def sync(self, first: bool = False) -> int:
        """Ingest everything new in the folder; returns how many inbox rows were stored."""
        info = self.client.select_folder(self.plan.folder)
        uidvalidity = int(info[b"UIDVALIDITY"])
        stored_validity, last_uid = self.store.position()
        if stored_validity != uidvalidity:
            if stored_validity:
                log.warning("imap %s: UIDVALIDITY of %r changed from %d to %d: full re-sync "
                            "(messages already ingested are recognised, not stored twice)",
                            self.box.name, self.box.folder, stored_validity, uidvalidity)
            last_uid = 0
            self.store.move_to(uidvalidity, 0)
        elif first and last_uid:
            self._finish_leftovers(uidvalidity, last_uid)
        self.recipients.fresh()
        uids = sorted(uid for uid in self.client.search(["UID", f"{last_uid + 1}:*"])
                      if uid > last_uid)
        stored = 0
        for batch in self._batches(uids):
            if self.stop.is_set():
                break
            stored += self._batch(uidvalidity, batch)
        return stored

    def _batches(self, uids: list[int]) -> list[list[int]]:
        """UIDs in batches of at most `batch_size` messages and `batch_bytes` bytes (a batch
        is held in memory: a hundred 25 MB attachments would not fit).

        Only the sizes of messages above batch_bytes / batch_size are asked for (one SEARCH
        LARGER): a full batch of the others cannot exceed the limit.
        """
        sizes: dict[int, int] = {}
        threshold = self.options.batch_bytes // self.options.batch_size
        if uids:
            wanted = set(uids)
            large = [uid for uid in self.client.search(
                ["UID", f"{uids[0]}:{uids[-1]}", "LARGER", str(threshold)]) if uid in wanted]
            for start in range(0, len(large), 1000):
                for uid, data in self.client.fetch(large[start:start + 1000],
                                                   ["RFC822.SIZE"]).items():
                    sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
        batches: list[list[int]] = []
        batch: list[int] = []
        total = 0
        for uid in uids:
            size = sizes.get(uid, threshold)   # at most that, as it is not LARGER
            if batch and (len(batch) >= self.options.batch_size
                          or total + size > self.options.batch_bytes):
                batches.append(batch)
                batch, total = [], 0
            batch.append(uid)
            total += size
        if batch:
            batches.append(batch)
        return batches

    def _batch(self, uidvalidity: int, uids: list[int]) -> int:
        """Fetch, commit, and only then move or flag one batch of UIDs.

        (Fetching the next batch while this one commits, in a second thread, was measured:
        no gain on two cores, where Dovecot, the parsing and the commit share the CPU.)
        """
        known = self.store.known_uids(uidvalidity, uids)
        wanted = [uid for uid in uids if uid not in known]
        fetched: list[Fetched] = []
        if wanted:
            data = self.client.fetch(wanted, ["BODY.PEEK[]"])
            for uid in wanted:
                raw = data.get(uid, {}).get(b"BODY[]")
                if raw is None:
                    continue  # expunged by someone else since the SEARCH: nothing to keep
                fetched.append(Fetched(uid, raw, *self.recipients.envelope(raw)))
        result = self.store.ingest(uidvalidity, fetched, uids[-1])
        self.on_commit(result)
        self.finish(sorted(known | {m.uid for m in fetched}))
        return len(result.stored)

    def finish(self, uids: Sequence[int]) -> None:
        """Move or flag messages that are safely stored (never before: see `sync`)."""
        if not uids:
            return
        if self.plan.after == "move":
            self.client.move(uids, self.plan.processed)
        elif self.plan.after == "copy":
            # Without MOVE: copy, then expunge exactly these UIDs (UIDPLUS' UID EXPUNGE);
            # a plain EXPUNGE would also remove whatever a person flagged \Deleted.
            self.client.copy(uids, self.plan.processed)
            self.client.add_flags(uids, [DELETED], silent=True)
            self.client.uid_expunge(uids)
        else:
            self.client.add_flags(uids, [SEEN], silent=True)

    def _finish_leftovers(self, uidvalidity: int, last_uid: int) -> None:
        """Messages stored before a drop but not yet moved/flagged: finish the job."""
        criteria: list[Any] = ["UID", f"1:{last_uid}"]
        if self.plan.after == "seen":
            criteria = ["UNSEEN", *criteria]
        leftovers = self.client.search(criteria)
        done = sorted(self.store.known_uids(uidvalidity, leftovers))
        if done:
            verb = "flagging" if self.plan.after == "seen" else "moving"
            log.info("imap %s: %s %d message(s) stored before the last disconnection",
                     self.box.name, verb, len(done))
            self.finish(done)

    # --- waiting --------------------------------------------------------------------------

    def wait(self, seconds: float) -> None:
        """Until the server reports new mail (IDLE), `seconds` pass, or `stop` is set."""
        if not self.plan.can_idle:
            self.stop.wait(seconds)
            return
        self.client.idle()
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tick = min(remaining, self.options.tick)
            started = time.monotonic()
            responses = self.client.idle_check(timeout=tick)
            if any((len(r) > 1 and r[1] == b"EXISTS") or r[0] == b"BYE" for r in responses):
                break
            if not responses and time.monotonic() - started < tick / 2:
                break  # readable but nothing parsed: the server closed; DONE will tell
        self.client.idle_done()

    def abort(self) -> None:
        """From another thread: break a blocked read by shutting the socket down."""
        with contextlib.suppress(Exception):
            self.client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        close_quietly(self.client)


# --- the Service --------------------------------------------------------------------------


class ImapPoller:
    """One mailbox as a Service of `serve`: lease, connect, sync, wait; reconnect on failure."""

    def __init__(self, box: ImapMailbox, store: MailboxStore, recipients: Recipients, *,
                 environ: Mapping[str, str], options: PollerOptions | None = None,
                 arrived: asyncio.Event | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 factory: ClientFactory = IMAPClient) -> None:
        self.box = box
        self.name = f"imap {box.name}"
        self.store = store
        self.recipients = recipients
        self.environ = environ
        self.options = options or PollerOptions()
        self.arrived = arrived
        self.ssl_context = ssl_context
        self.factory = factory
        self.failures = 0          # consecutive failed attempts (for backoff and tests)
        self.connections = 0       # sessions that completed their first pass
        self._random = random.Random()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()
        self._wake: asyncio.Event | None = None
        self._session: MailboxSession | None = None
        self._logged_in = False    # the current attempt got past login (a later error: drop)
        self._last_error = ""      # the failure logged last (repeats go to DEBUG)

    @property
    def poll_interval(self) -> float:
        return self.options.poll_interval or float(self.box.poll_interval)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._halt.clear()
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"imap-{self.box.name}")
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._halt.set()
        if self._wake is not None:
            self._wake.set()
        session = self._session
        if session is not None:
            session.stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=self.options.stop_grace)
            if not done and session is not None:
                session.abort()  # stuck in a read: break it
                done, _ = await asyncio.wait({self._task}, timeout=self.options.stop_grace)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        standing_by = ""
        try:
            while not self._halt.is_set():
                try:
                    holder = await asyncio.to_thread(self.store.acquire)
                except Exception as exc:
                    await self._failed(f"database: {exc}")
                    continue
                if holder:
                    if holder != standing_by:
                        log.info("imap %s: polled by %s; standing by", self.box.name, holder)
                        standing_by = holder
                    await self._sleep(self.options.lease / 4)
                    continue
                standing_by = ""
                self._logged_in = False
                try:
                    await self._connected_session()
                except LeaseLost as exc:
                    log.warning("imap %s: %s; standing by", self.box.name, exc)
                except Exception as exc:
                    message = str(failure(exc, self.box))
                    if self._logged_in:
                        message = f"connection lost: {message}"
                    await self._failed(message)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release)

    async def _failed(self, message: str) -> None:
        """Log one clear line per distinct failure, then wait with exponential backoff.

        The same failure again (the password is still wrong) is logged at DEBUG only, until
        a connection succeeds."""
        self.failures += 1
        delay = min(self.options.backoff_first * 2 ** (self.failures - 1),
                    self.options.backoff_max) * self._random.uniform(0.8, 1.2)
        if message != self._last_error:
            self._last_error = message
            log.error("imap %s: %s; retrying in %s, then with backoff up to %s",
                      self.box.name, message, _seconds(delay),
                      _seconds(self.options.backoff_max))
        else:
            log.debug("imap %s: still failing (attempt %d): %s; retrying in %s",
                      self.box.name, self.failures, message, _seconds(delay))
        await self._sleep(delay)

    async def _connected_session(self) -> None:
        session = await self._in_thread(self._open)
        self._session = session
        self._logged_in = True
        if self._halt.is_set():
            session.stop.set()
        keeper = asyncio.create_task(self._keep_lease(session), name=f"{self.name} lease")
        try:
            first = True
            while not session.stop.is_set():
                stored = await self._in_thread(session.sync, first)
                if first:
                    self._connected(session, stored)
                    first = False
                if session.stop.is_set():
                    break
                await self._in_thread(session.wait, self._wait_seconds())
            if not self._halt.is_set():
                raise LeaseLost(f"mailbox {self.box.name!r} is now polled by another instance")
        finally:
            keeper.cancel()
            self._session = None
            with contextlib.suppress(Exception):
                await self._in_thread(session.close)

    def _wait_seconds(self) -> float:
        return self.options.idle_refresh if self._session and self._session.plan.can_idle \
            else self.poll_interval

    def _connected(self, session: MailboxSession, stored: int) -> None:
        plan = session.plan
        mode = "IDLE" if plan.can_idle else f"polling every {self.poll_interval:g}s"
        after = {"move": f"moved to {plan.processed!r}",
                 "copy": f"copied to {plan.processed!r} then expunged (no MOVE)",
                 "seen": "flagged \\Seen"}[plan.after]
        again = f" again after {self.failures} failed attempt(s)" if self.failures else ""
        log.info("imap %s: connected%s to %s, folder %r (%s; processed mail is %s); "
                 "%d new message(s) stored", self.box.name, again, where(self.box),
                 self.box.folder, mode, after, stored)
        for note in plan.notes:
            level = logging.WARNING if "neither" in note else logging.INFO
            log.log(level, "imap %s: %s", self.box.name, note)
        self.failures = 0
        self._last_error = ""
        self.connections += 1

    def _open(self) -> MailboxSession:
        secret = read_secret(self.box, self.environ)
        client = connect(self.box, secret, ssl_context=self.ssl_context,
                         timeout=self.options.timeout, factory=self.factory)
        try:
            return MailboxSession(self.box, client, plan_folders(client, self.box), self.store,
                                  self.recipients, self.options, self._committed)
        except BaseException:
            close_quietly(client)
            raise

    def _committed(self, result: Ingested) -> None:
        """Called in the poller's thread after each commit: wake the processor."""
        if result.stored and self.arrived is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.arrived.set)

    async def _keep_lease(self, session: MailboxSession) -> None:
        """Renew the lease while the thread fetches or idles; stop the session if lost."""
        while True:
            await asyncio.sleep(self.options.lease / 3)
            try:
                held = await asyncio.to_thread(self.store.renew)
            except Exception as exc:  # the fenced commit still protects us
                log.warning("imap %s: could not renew the lease: %s", self.box.name, exc)
                continue
            if not held:  # `_connected_session` says so when the session has ended
                session.stop.set()
                return

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, partial(function, *args))

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


# --- `causerie imap test` ---------------------------------------------------------------------


@dataclass
class Probe:
    """What `causerie imap test` found, without changing anything on the server."""

    mailbox: str
    server: str
    tls: str
    user: str
    login: str
    folder: str
    messages: int
    uidvalidity: int
    new: int
    new_note: str
    waits: str
    after: str
    notes: list[str]


def probe(box: ImapMailbox, environ: Mapping[str, str], position: tuple[int, int] | None, *,
          ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
          factory: ClientFactory = IMAPClient) -> Probe:
    """Connect, log in, examine the folder read-only and count what the poller would take.

    `position` is the stored (UIDVALIDITY, last UID), or None when it could not be read.
    Raises `ImapFailure` with one sentence saying what is wrong.
    """
    secret = read_secret(box, environ)
    client = connect(box, secret, ssl_context=ssl_context, timeout=timeout, factory=factory)
    try:
        plan = plan_folders(client, box, create=False)
        info = client.select_folder(plan.folder, readonly=True)
        uidvalidity, messages = int(info[b"UIDVALIDITY"]), int(info[b"EXISTS"])
        if position is not None and position[0] == uidvalidity and position[1]:
            last = position[1]
            new = len([uid for uid in client.search(["UID", f"{last + 1}:*"]) if uid > last])
            note = f"above the last UID ingested, {last}"
        elif position is not None and position[0]:
            new, note = messages, ("UIDVALIDITY changed since the last poll: full re-sync, "
                                   "already-ingested messages will be recognised")
        else:
            new = messages
            note = "never polled" if position is not None else "stored position unknown"
    except ImapFailure:
        raise
    except Exception as exc:
        raise failure(exc, box) from exc
    finally:
        close_quietly(client)
    after = {"move": f"moved to {plan.processed!r} (MOVE)",
             "copy": f"moved to {plan.processed!r} (COPY + UID EXPUNGE: no MOVE)",
             "seen": "flagged \\Seen, left in the folder"}[plan.after]
    return Probe(mailbox=box.name, server=f"{box.host}:{box.port}", tls=box.tls, user=box.user,
                 login="XOAUTH2" if secret.xoauth2 else "password", folder=plan.folder,
                 messages=messages, uidvalidity=uidvalidity, new=new, new_note=note,
                 waits="IDLE" if plan.can_idle else f"polling every {box.poll_interval}s",
                 after=after, notes=plan.notes)


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


# --- wiring -------------------------------------------------------------------------------


def owner_id() -> str:
    """Who holds a lease: host, process and a random part (two pollers in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def poller(app: App, writer: InboxWriter, box: ImapMailbox, *,
           environ: Mapping[str, str] | None = None, options: PollerOptions | None = None,
           arrived: asyncio.Event | None = None, ssl_context: ssl.SSLContext | None = None,
           factory: ClientFactory = IMAPClient, owner: str | None = None) -> ImapPoller:
    """The poller of one mailbox, built from the application's parts."""
    options = options or PollerOptions()
    store = MailboxStore(app.engine, writer, app.clock, box.name, owner or owner_id(),
                         timedelta(seconds=options.lease),
                         peer=f"imap {box.name}: {box.user}@{box.host}:{box.port}/{box.folder}")
    return ImapPoller(box, store, Recipients(box, app.router),
                      environ=os.environ if environ is None else environ, options=options,
                      arrived=arrived if arrived is not None else writer.arrived,
                      ssl_context=ssl_context, factory=factory)


def imap_services(app: App, writer: InboxWriter) -> list[ImapPoller]:
    """One poller per configured mailbox, for `serve`."""
    return [poller(app, writer, box) for box in app.settings.imap]


__all__ = ["ImapFailure", "ImapPoller", "MailboxSession", "PollerOptions", "Probe", "Recipients",
           "imap_services", "plan_folders", "poller", "probe"]
