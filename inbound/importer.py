"""Historical mail in: mbox and Maildir archives become conversations, like live mail.

The importer is one more way mail comes in, beside SMTP and IMAP: each message is written
to the durable inbox (`InboxWriter.row()`/`write_rows()`, source "import", addressed to the
community's posting address) and then handed to the same processor as live mail
(parse → classify → authorise → thread → store → index), which the caller builds with
`fan_out=False, notify=False`: imported history never sends copies or notices.

Work goes in batches: read N messages, drop the ones already imported, write their inbox
rows in one transaction, process them in one processor commit. Only the rows this run wrote
are processed (claimed by id), so pending live mail is never processed without fan-out.

The processor's CPU work (`Processor.prepare`: parse → classify → extract) runs in worker
processes, one batch ahead: while this process commits batch N (threading, storing, the
search index), the workers prepare batch N+1, so an import uses the machine's cores instead
of one. The commit order, the transactions and what is stored are those of one process;
small imports (a single batch) stay in this process.

Idempotence: a message is recognised as already imported by the sha256 of its bytes (an
inbox row of source "import" for the same community) or by its Message-ID (a message of the
community, or an earlier message of the same run). Running an import twice adds nothing.

Real archives are not clean mbox files (pipermail's text archives in particular):

- message boundaries: a `From ` line starts a message only when the next line is a header
  field, and it either follows a blank line or has the shape of an mbox `From_` line (a
  date and a year at the end); other `From ` lines are body text (mboxo archives do not quote
  them);
- mboxrd quoting: `>From `, `>>From `... lose one `>` (so an export, which quotes, gives the
  same bytes back);
- pipermail's address obfuscation in the From field, `user at example.org (Name)`, and its
  mangled forms of 2018 and later, `us@er @end|ng |rom ex@mple@org (Name)` and the like, are
  rewritten to an address in the stored bytes before anything else (the mangled forms cannot
  be undone exactly: every "@" becomes a dot and every "|" an "i", which gives each person
  one stable, if imperfect, address);
- the envelope sender of an imported message is its From address; archives have no
  envelope, so a message without a readable From gets `UNKNOWN_SENDER`, never the null
  sender `<>` (which says "automatic mail" and would have it discarded as an auto-reply);
- missing Message-IDs: the parser derives a stable one from the content;
- odd encodings: the parser decodes what it can; a message the processor cannot read is
  reported with the reason it gives.

Whatever is not imported is reported with its reason (`ImportReport.skipped`), as is every
message the processor held, rejected or failed (`ImportReport.problems`).
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import lzma
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from sqlalchemy import Connection, Row, select

from bridge.app import App
from bridge.models import Community, InboxItem, Message
from bridge.searchtext import Analyzer
from bridge.settings import Settings
from inbound.bounces import plain_address
from inbound.parse import derived_message_id
from inbound.processor import Prepared, Processor
from inbound.store import Envelope, InboxWriter, header_message_id

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]

SOURCE = "import"
# The envelope sender of an imported message without a readable From address: archives keep
# no envelope, and "" would be the null sender of automatic mail. (.invalid: RFC 2606.)
UNKNOWN_SENDER = "unknown-sender@invalid"
# Imported rows are written as if already leased by this run, so that a `serve` running at
# the same time does not claim them (and fan them out) before this run processes them.
LEASE = timedelta(minutes=10)

_HEADER = re.compile(rb"^[!-9;-~]+:")
_FROM_LINE_DATE = re.compile(rb"^From \S.*\d\d:\d\d(:\d\d)?\s+(\S+\s+)?\d{4}\s*$")
_QUOTED_FROM = re.compile(rb"^>+From ")
_AT_FROM = re.compile(rb"^(From:[ \t]*)([^\s@<>()]+) at ([^\s@<>()]+\.[^\s@<>()]+)",
                      re.MULTILINE | re.IGNORECASE)
# " at " written as a mangled phrase: "@ending from", "@end|ng |rom" ("sending from" with
# s->@, i/l/f->|), "m@ili@g off" and "m@iii@g oii" ("mailing off" with n->@, l/f->i).
_MANGLED_FROM = re.compile(rb"^(From:[ \t]*)(\S+) (?:@end[i|]ng [f|]rom"
                           rb"|m[a@][i|l][l|i][i|l][n@]g [o0][f|i][f|i]) (\S+)",
                           re.MULTILINE | re.IGNORECASE)
_DOTS = re.compile(rb"\.{2,}")


class Processes(Protocol):
    """What the importer needs of the processor (`inbound.processor.Processor`)."""

    def prepare(self, row: Row[Any], store: bool = True) -> Any: ...

    def commit(self, prepared_batch: list[Any]) -> None: ...


@dataclass(frozen=True)
class InboxRow:
    """An inbox row as `Processor.claim` reads it, built from what the importer has just
    written instead of read back (the raw bytes are at hand, even for mail kept in the
    content store)."""

    id: int
    raw: bytes
    sha256: str
    mail_from: str
    rcpt_to: list[str]
    kind: str
    received_at: datetime
    attempts: int
    source: str


@functools.lru_cache(maxsize=1)
def _worker(settings: Settings) -> tuple[Processor, Analyzer]:
    """A worker process's processor and analyser for `settings`, kept from one batch to the
    next (the analyser's cache of stems above all)."""
    return Processor(App(settings), fan_out=False, notify=False), Analyzer()


def prepare_rows(settings: Settings, rows: list[InboxRow]) -> list[Prepared]:
    """`Processor.prepare` for rows, in a worker process (it needs the settings only: the
    CPU work touches no database, and attachments go to the content store, a folder).

    What goes back leaves out the rows (and so the raw bytes), which the writing process has:
    `_attach` puts them back."""
    processor, analyzer = _worker(settings)
    prepared = [processor.prepare(row) for row in rows]  # type: ignore[arg-type]
    # The search index terms too, when the message's language is known (else the
    # community's decides, at the commit): the writing process has the least time to spare.
    for item in prepared:
        if item.parsed is not None and item.extracted is not None and item.extracted.language:
            language = item.extracted.language
            item.index_terms = [(text, language, analyzer.index_text(text, language))
                                for text in (item.parsed.subject, item.extracted.text) if text]
        item.row = None  # type: ignore[assignment]
        item.raw = b""
    return prepared


def _attach(prepared: list[Prepared], rows: list[InboxRow]) -> None:
    """Give prepared rows back from `prepare_rows` their inbox rows (in the same order)."""
    for item, row in zip(prepared, rows, strict=True):
        item.row = row  # type: ignore[assignment]
        item.raw = row.raw


@dataclass
class _Staged:
    """A batch written to the inbox, being prepared, waiting for its commit."""

    rows: list[InboxRow]
    positions: dict[int, int]                          # inbox id -> position read
    prepared: list[Future[list[Prepared]]] | list[Prepared]


@dataclass(frozen=True)
class Skipped:
    position: int        # 1-based, in the order read
    message_id: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "message_id": self.message_id,
                "reason": self.reason}


@dataclass
class ImportReport:
    path: str
    community: str
    read: int = 0
    written: int = 0                      # inbox rows written by this run
    outcomes: Counter[str] = field(default_factory=Counter)  # inbox status -> count
    skipped: list[Skipped] = field(default_factory=list)     # never written, with why
    problems: list[Skipped] = field(default_factory=list)    # held/rejected/failed, with why
    seconds: float = 0.0

    @property
    def archived(self) -> int:
        return self.outcomes.get("done", 0)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "community": self.community, "read": self.read,
                "written": self.written, "archived": self.archived,
                "outcomes": dict(sorted(self.outcomes.items())),
                "skipped": [s.as_json() for s in self.skipped],
                "problems": [p.as_json() for p in self.problems],
                "seconds": round(self.seconds, 3),
                "per_second": round(self.read / self.seconds, 1) if self.seconds else None}


# --- reading ------------------------------------------------------------------------------

class Source:
    """A file, possibly compressed (by its magic bytes: xz, gzip, bzip2), with a position
    in the file itself for the progress bar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._file: IO[bytes] = path.open("rb")
        magic = self._file.read(6)
        self._file.seek(0)
        self.stream: IO[bytes]
        if magic.startswith(b"\xfd7zXZ"):
            self.stream = lzma.open(self._file)  # noqa: SIM115 (closed by close())
        elif magic.startswith(b"\x1f\x8b"):
            self.stream = gzip.open(self._file)  # noqa: SIM115 (closed by close())
        elif magic.startswith(b"BZh"):
            self.stream = bz2.open(self._file)  # noqa: SIM115 (closed by close())
        else:
            self.stream = self._file

    def position(self) -> int:
        return self._file.tell()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.stream is not self._file:
            self.stream.close()
        self._file.close()


_CANDIDATE = re.compile(rb"^From ", re.MULTILINE)
_UNQUOTE = re.compile(rb"^>(>*From )", re.MULTILINE)
_SCAN_STEP = 1 << 20  # bytes gathered between two scans of the buffer


def split_mbox(chunks: Iterable[bytes], unquote: bool = True) -> Iterator[bytes]:
    """The messages of an mbox stream, tolerant of unquoted `From ` lines in bodies.

    A `From ` line is a separator when the line after it is a header field and it follows
    a blank line (or the start) or looks like a `From_` line with a date; the line right
    after a `From ` line that was not a separator is never one. With `unquote` (mboxrd) a
    `>From ` line loses one `>`. Text before the first separator is yielded as it is when it
    is not blank (the caller decides whether it is a message).

    `chunks` may be lines or blocks of any size (`stream.read(n)`): the stream is scanned in
    blocks for the lines that start with "From ", with regular expressions, rather than line
    by line in Python (which took more time than the rest of an import's reading).
    """
    gathered: list[bytes] = []
    size = 0
    rest = b""
    for chunk in chunks:
        gathered.append(chunk)
        size += len(chunk)
        if size < _SCAN_STEP:
            continue
        buffer = rest + b"".join(gathered)
        messages, keep = _scan(buffer, final=False)
        for message in messages:
            yield _unquoted(message) if unquote else message
        rest = buffer[keep:]
        gathered, size = [], 0
    messages, _ = _scan(rest + b"".join(gathered), final=True)
    for message in messages:
        yield _unquoted(message) if unquote else message


def _unquoted(message: bytes) -> bytes:
    return _UNQUOTE.sub(rb"\1", message) if b">From " in message else message


def _scan(data: bytes, final: bool) -> tuple[list[bytes], int]:
    """The messages of `data` that end at a separator (all of them when `final`), and where
    the rest begins (at a separator's `From_` line, so that a new scan starts cleanly)."""
    messages: list[bytes] = []
    start = 0                 # where the current message begins
    keep = 0                  # where the unfinished rest begins
    after_candidate = -1      # the line after a `From ` candidate is never one
    for match in _CANDIDATE.finditer(data):
        position = match.start()
        if position == after_candidate:
            continue
        eol = data.find(b"\n", position)
        if eol < 0:
            break             # the last line, incomplete: body text, or more to come
        line = data[position:eol + 1]
        if position > 0:
            previous = data.rfind(b"\n", 0, position - 1) + 1
            blank = data[previous:position] in (b"\n", b"\r\n")
        else:
            blank = True
        if not (blank or _FROM_LINE_DATE.match(line)):
            continue
        following = eol + 1
        following_end = data.find(b"\n", following)
        if following_end < 0 and not final:
            break             # the next line is not all here yet
        after_candidate = following
        if following >= len(data) or not _HEADER.match(data[following:following_end + 1]
                                                        if following_end >= 0
                                                        else data[following:]):
            continue
        message = data[start:position]
        if message.strip():
            messages.append(_finish(message))
        start = following
        keep = position
    if final:
        if data[start:].strip():
            messages.append(_finish(data[start:]))
        keep = len(data)
    return messages, keep


def _finish(raw: bytes) -> bytes:
    # The blank line before the next `From_` line is the separator, not the message's.
    if raw.endswith(b"\r\n\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n\n"):
        return raw[:-1]
    return raw


def read_maildir(path: Path) -> Iterator[bytes]:
    """The messages of a Maildir (cur/ and new/), in the order of their file names (which
    start with the delivery time)."""
    names = [f for folder in ("cur", "new") if (path / folder).is_dir()
             for f in (path / folder).iterdir() if f.is_file() and not f.name.startswith(".")]
    for name in sorted(names, key=lambda f: f.name):
        yield name.read_bytes()


def deobfuscate_from(raw: bytes) -> bytes:
    """Undo pipermail's address obfuscation in the From field of the header block.

    `user at example.org (Name)` -> `user@example.org (Name)`; the mangled forms of 2018
    and later, `us@er @ending from ex@mple@org`, `us@er @end|ng |rom ex@mple@org` and
    `us@er m@ili@g off ex@mple@org` -> `us.er@ex.mple.org`, every "|" read as an "i" (the
    letters cannot be recovered: this gives each person one stable, if imperfect, address).
    """
    end = raw.find(b"\n\n")
    end = len(raw) if end < 0 else end
    crlf = raw.find(b"\r\n\r\n")
    if 0 <= crlf < end:
        end = crlf
    head, body = raw[:end], raw[end:]
    if b" at " not in head and b"@end" not in head and b" m@i" not in head:
        return raw

    def mangled(match: re.Match[bytes]) -> bytes:
        local = _DOTS.sub(b".", match.group(2).replace(b"@", b".").replace(b"|", b"i")
                          ).strip(b".")
        domain = _DOTS.sub(b".", match.group(3).replace(b"@", b".").replace(b"|", b"i")
                           ).strip(b".")
        return match.group(1) + local + b"@" + domain

    head = _MANGLED_FROM.sub(mangled, head, count=1)
    head = _AT_FROM.sub(lambda m: m.group(1) + m.group(2) + b"@" + m.group(3), head, count=1)
    return head + body


def _from_address(raw: bytes) -> str:
    """The From address, cheaply, for the envelope sender of an imported message."""
    head = raw.split(b"\n\n", 1)[0]
    match = re.search(rb"^From:[ \t]*(.*)$", head, re.MULTILINE | re.IGNORECASE)
    if not match:
        return ""
    return _address_in(match.group(1).decode("ascii", "replace").strip())


@functools.lru_cache(maxsize=8192)
def _address_in(value: str) -> str:
    """The address of a From value (a person writes many messages of an archive, with the
    same From line: its address is read once)."""
    from email.utils import parseaddr

    address = (plain_address(value) or parseaddr(value)[1])[:500]
    return address if "@" in address else ""


# --- progress -----------------------------------------------------------------------------

class Progress:
    """A plain-text progress bar on a terminal (stderr); one line per 10% elsewhere."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "") -> None:
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.started = time.monotonic()
        self._last = 0.0
        self._tenth = -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, messages: int, final: bool = False) -> None:
        now = time.monotonic()
        fraction = min(done / self.total, 1.0)
        if self.tty:
            if not final and now - self._last < 0.2:
                return
        else:
            tenth = int(fraction * 10)
            if not final and tenth == self._tenth:
                return
            self._tenth = tenth
        self._last = now
        rate = messages / (now - self.started) if now > self.started else 0.0
        width = 30
        bar = "#" * int(fraction * width)
        line = (f"{self.label} [{bar:<{width}}] {fraction:4.0%} {messages:,} messages "
                f"{rate:,.0f}/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# --- importing ----------------------------------------------------------------------------

class Importer:
    """Imports messages into one community through the inbox and the processor."""

    def __init__(self, app: App, community: str, processor: Processes, *,
                 batch_size: int = 500, workers: int | None = None) -> None:
        self.app = app
        self.processor = processor
        self.batch_size = batch_size
        # Worker processes for the prepare phase: one per core by default; none when the
        # processor is not the standard one (its prepare() could not run elsewhere).
        if workers is None:
            workers = os.cpu_count() or 1
        self.workers = workers if isinstance(processor, Processor) else 0
        self._pool: ProcessPoolExecutor | None = None
        self.writer = InboxWriter(app.engine, app.blobs,
                                  app.settings.processor.inline_raw_limit, app.clock)
        with app.engine.connect() as connection:
            community_id = connection.execute(select(_community.c.id).where(
                _community.c.slug == community)).scalar()
        if community_id is None:
            raise LookupError(f"no community named {community!r}")
        self.slug = community
        self.community_id = int(community_id)
        self.address = app.router().posting_address(community)
        self.domain = app.settings.instance.primary_domain
        self.max_size = app.settings.smtp.max_message_size

    def run(self, messages: Iterable[bytes], report: ImportReport,
            on_batch: Callable[[ImportReport], None] | None = None,
            limit: int | None = None) -> ImportReport:
        started = time.perf_counter()
        seen_hashes: set[str] = set()
        seen_ids: set[str] = set()
        batch: list[tuple[int, bytes]] = []
        waiting: _Staged | None = None  # written and being prepared, not yet committed
        try:
            for raw in messages:
                if limit is not None and report.read >= limit:
                    break
                report.read += 1
                batch.append((report.read, raw))
                if len(batch) >= self.batch_size:
                    staged = self._stage(batch, report, seen_hashes, seen_ids, ahead=True)
                    batch = []
                    if waiting is not None:
                        self._commit(waiting, report)
                    waiting = staged
                    if on_batch:
                        on_batch(report)
            staged = self._stage(batch, report, seen_hashes, seen_ids,
                                 ahead=waiting is not None) if batch else None
            for last in (waiting, staged):
                if last is not None:
                    self._commit(last, report)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        self._checkpoint()
        report.seconds = time.perf_counter() - started
        if on_batch:
            on_batch(report)
        return report

    def _checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and truncate it. A bulk import
        grows the log to tens of megabytes that SQLite otherwise keeps on disk (it reuses
        the file, never shrinks it); "busy" (a reader still on old pages) is fine."""
        if self.app.engine.dialect.name != "sqlite":
            return
        raw = self.app.engine.raw_connection()
        try:
            raw.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()

    def _stage(self, batch: list[tuple[int, bytes]], report: ImportReport,
               seen_hashes: set[str], seen_ids: set[str], ahead: bool) -> _Staged | None:
        """Write a batch's new messages to the inbox and start preparing them: in the
        worker processes when `ahead` (another batch will be committed meanwhile)."""
        written = self._write(batch, report, seen_hashes, seen_ids)
        if written is None:
            return None
        rows, positions = written
        if not (ahead and self.workers):
            return _Staged(rows, positions, [self.processor.prepare(row)  # type: ignore[arg-type]
                                             for row in rows])
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        size = -(-len(rows) // self.workers)
        return _Staged(rows, positions, [
            self._pool.submit(prepare_rows, self.app.settings, rows[i:i + size])
            for i in range(0, len(rows), size)])

    def _write(self, batch: list[tuple[int, bytes]], report: ImportReport,
               seen_hashes: set[str], seen_ids: set[str]
               ) -> tuple[list[InboxRow], dict[int, int]] | None:
        """The inbox rows of a batch's new messages, written in one transaction."""
        candidates: list[tuple[int, bytes, str, str]] = []
        for position, original in batch:
            raw = deobfuscate_from(original)
            head = raw[:4096].lstrip(b"\r\n")
            if not raw.strip():
                report.skipped.append(Skipped(position, "", "empty"))
                continue
            if not _HEADER.match(head):
                report.skipped.append(Skipped(position, "", "no header block: not a message "
                                                            "(text before the first From line?)"))
                continue
            if len(raw) > self.max_size:
                report.skipped.append(Skipped(position, header_message_id(raw),
                                              f"larger than max_message_size ({len(raw):,} "
                                              f"bytes)"))
                continue
            message_id = header_message_id(raw) or derived_message_id(raw, self.domain)
            candidates.append((position, raw, hashlib.sha256(raw).hexdigest(), message_id))
        if not candidates:
            return None
        with self.app.engine.connect() as connection:
            imported = self._imported(connection, {c[2] for c in candidates})
            archived = self._archived(connection, {c[3] for c in candidates})
        rows: list[tuple[int, bytes, str, str, datetime]] = []
        inbox: list[dict[str, object]] = []
        for position, raw, digest, message_id in candidates:
            if digest in seen_hashes or digest in imported:
                report.skipped.append(Skipped(position, message_id,
                                              "already imported (the same bytes)"))
                continue
            if message_id in seen_ids or message_id in archived:
                report.skipped.append(Skipped(position, message_id,
                                              "already archived (the same Message-ID)"))
                continue
            seen_hashes.add(digest)
            seen_ids.add(message_id)
            envelope = Envelope(mail_from=_from_address(raw) or UNKNOWN_SENDER,
                                rcpt_to=(self.address,),
                                source=SOURCE, peer="import")
            received_at = self.app.clock.now()
            row = self.writer.row(raw, envelope, received_at, digest=digest)
            row["next_attempt_at"] = received_at + LEASE
            inbox.append(row)
            rows.append((position, raw, digest, envelope.mail_from[:500], received_at))
        if not rows:
            return None
        ids = self.writer.write_rows(inbox)
        report.written += len(ids)
        inbox_rows = [InboxRow(inbox_id, raw, digest, envelope_from, [self.address], "",
                               received_at, 0, SOURCE)
                      for inbox_id, (_, raw, digest, envelope_from, received_at)
                      in zip(ids, rows, strict=True)]
        return inbox_rows, {inbox_id: row[0] for inbox_id, row in zip(ids, rows, strict=True)}

    def _imported(self, connection: Connection, digests: set[str]) -> set[str]:
        found: set[str] = set()
        for row in connection.execute(select(_inbox.c.sha256, _inbox.c.rcpt_to).where(
                _inbox.c.sha256.in_(sorted(digests)), _inbox.c.source == SOURCE)):
            if self.address in (row.rcpt_to or []):
                found.add(row.sha256)
        return found

    def _archived(self, connection: Connection, message_ids: set[str]) -> set[str]:
        return set(connection.execute(select(_message.c.message_id).where(
            _message.c.community_id == self.community_id,
            _message.c.message_id.in_(sorted(message_ids)))).scalars())

    def _commit(self, staged: _Staged, report: ImportReport) -> None:
        """Commit a prepared batch in one processor commit, then read its outcomes."""
        ids = [row.id for row in staged.rows]
        prepared: list[Prepared] = []
        for part in staged.prepared:
            if isinstance(part, Future):
                prepared.extend(part.result())
            else:
                prepared.append(part)
        if staged.prepared and isinstance(staged.prepared[0], Future):
            _attach(prepared, staged.rows)  # prepared in the workers
        self.processor.commit(prepared)
        with self.app.engine.connect() as connection:
            for row in connection.execute(
                    select(_inbox.c.id, _inbox.c.status, _inbox.c.reason,
                           _inbox.c.header_message_id).where(_inbox.c.id.in_(ids))):
                report.outcomes[row.status] += 1
                if row.status != "done":
                    report.problems.append(Skipped(staged.positions[row.id],
                                                   row.header_message_id,
                                                   f"{row.status}: {row.reason}"))


def import_path(app: App, path: Path, community: str, processor: Processes, *,
                kind: str = "mbox", unquote: bool = True, limit: int | None = None,
                batch_size: int = 500, progress: TextIO | None = None,
                quiet: bool = False, workers: int | None = None) -> ImportReport:
    """Import an mbox file (plain, .gz, .xz, .bz2) or a Maildir folder into `community`.

    `workers`: processes for the prepare phase (default: one per core; 0: none)."""
    importer = Importer(app, community, processor, batch_size=batch_size, workers=workers)
    report = ImportReport(str(path), community)
    if kind == "maildir":
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a Maildir folder")
        names = [p for folder in ("cur", "new") if (path / folder).is_dir()
                 for p in (path / folder).iterdir()]
        bar = None if quiet else Progress(len(names), progress, path.name)
        return importer.run(read_maildir(path), report, limit=limit, on_batch=(
            None if bar is None else lambda r: bar.update(r.read, r.read, r.seconds > 0)))
    with Source(path) as source:
        bar = None if quiet else Progress(source.size, progress, path.name)
        blocks = iter(lambda: source.stream.read(1 << 20), b"")
        return importer.run(split_mbox(blocks, unquote=unquote), report, limit=limit,
                            on_batch=None if bar is None else lambda r: bar.update(
                                source.position(), r.read, r.seconds > 0))
