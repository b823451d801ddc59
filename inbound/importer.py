"""Historical mail in: mbox and Maildir archives become conversations, like live mail.

The importer is one more way mail comes in, beside SMTP and IMAP: each message is written
to the durable inbox (`InboxWriter.row()`/`write_rows()`, source "import", addressed to the
community's posting address) and then handed to the same processor as live mail
(parse → classify → authorise → thread → store → index), which the caller builds with
`fan_out=False, notify=False`: imported history never sends copies or notices.

Work goes in batches: read N messages, drop the ones already imported, write their inbox
rows in one transaction, process them in one processor commit. Only the rows this run wrote
are processed (claimed by id), so pending live mail is never processed without fan-out.

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
  2018 mangled form, `us@er @ending from ex@mple@org (Name)`, are rewritten to an address in
  the stored bytes before anything else (the second form cannot be undone exactly: every "@"
  becomes a dot, which gives each person one stable, if imperfect, address);
- missing Message-IDs: the parser derives a stable one from the content;
- odd encodings: the parser decodes what it can; a message the processor cannot read is
  reported with the reason it gives.

Whatever is not imported is reported with its reason (`ImportReport.skipped`), as is every
message the processor held, rejected or failed (`ImportReport.problems`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from sqlalchemy import Connection, Row, select, update

from bridge.app import App
from bridge.models import Community, InboxItem, Message
from inbound.parse import derived_message_id
from inbound.store import Envelope, InboxWriter, header_message_id

_inbox = InboxItem.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]
_community = Community.__table__  # type: ignore[attr-defined]

SOURCE = "import"
# Imported rows are written as if already leased by this run, so that a `serve` running at
# the same time does not claim them (and fan them out) before this run processes them.
LEASE = timedelta(minutes=10)

_HEADER = re.compile(rb"^[!-9;-~]+:")
_FROM_LINE_DATE = re.compile(rb"^From \S.*\d\d:\d\d(:\d\d)?\s+(\S+\s+)?\d{4}\s*$")
_QUOTED_FROM = re.compile(rb"^>+From ")
_AT_FROM = re.compile(rb"^(From:[ \t]*)([^\s@<>()]+) at ([^\s@<>()]+\.[^\s@<>()]+)",
                      re.MULTILINE | re.IGNORECASE)
_MANGLED_FROM = re.compile(rb"^(From:[ \t]*)(\S+) @ending from (\S+)",
                           re.MULTILINE | re.IGNORECASE)
_DOTS = re.compile(rb"\.{2,}")


class Processes(Protocol):
    """What the importer needs of the processor (`inbound.processor.Processor`)."""

    def prepare(self, row: Row[Any], store: bool = True) -> Any: ...

    def commit(self, prepared_batch: list[Any]) -> None: ...


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


def _finish(lines: list[bytes]) -> bytes:
    raw = b"".join(lines)
    # The blank line before the next `From_` line is the separator, not the message's.
    if raw.endswith(b"\r\n\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n\n"):
        return raw[:-1]
    return raw


def split_mbox(lines: Iterable[bytes], unquote: bool = True) -> Iterator[bytes]:
    """The messages of an mbox stream, tolerant of unquoted `From ` lines in bodies.

    A `From ` line is a separator when the line after it is a header field and it follows
    a blank line (or the start) or looks like a `From_` line with a date. With `unquote`
    (mboxrd) a `>From ` line loses one `>`. Text before the first separator is yielded as
    it is when it is not blank (the caller decides whether it is a message).
    """
    current: list[bytes] = []
    pending: bytes | None = None
    previous_blank = True
    for line in lines:
        if pending is not None:
            if _HEADER.match(line):
                if any(part.strip() for part in current):
                    yield _finish(current)
                current = []
            else:
                current.append(pending)
            pending = None
        elif line.startswith(b"From ") and (previous_blank or _FROM_LINE_DATE.match(line)):
            pending = line
            continue
        if unquote and line.startswith(b">") and _QUOTED_FROM.match(line):
            line = line[1:]
        current.append(line)
        previous_blank = line in (b"\n", b"\r\n")
    if pending is not None:
        current.append(pending)
    if any(part.strip() for part in current):
        yield _finish(current)


def read_maildir(path: Path) -> Iterator[bytes]:
    """The messages of a Maildir (cur/ and new/), in the order of their file names (which
    start with the delivery time)."""
    names = [f for folder in ("cur", "new") if (path / folder).is_dir()
             for f in (path / folder).iterdir() if f.is_file() and not f.name.startswith(".")]
    for name in sorted(names, key=lambda f: f.name):
        yield name.read_bytes()


def deobfuscate_from(raw: bytes) -> bytes:
    """Undo pipermail's address obfuscation in the From field of the header block.

    `user at example.org (Name)` -> `user@example.org (Name)`; the mangled 2018 form
    `us@er @ending from ex@mple@org` -> `us.er@ex.mple.org` (one stable address per person).
    """
    end = raw.find(b"\n\n")
    end = len(raw) if end < 0 else end
    crlf = raw.find(b"\r\n\r\n")
    if 0 <= crlf < end:
        end = crlf
    head, body = raw[:end], raw[end:]
    if b" at " not in head and b"@ending from" not in head:
        return raw

    def mangled(match: re.Match[bytes]) -> bytes:
        local = _DOTS.sub(b".", match.group(2).replace(b"@", b".")).strip(b".")
        domain = _DOTS.sub(b".", match.group(3).replace(b"@", b".")).strip(b".")
        return match.group(1) + local + b"@" + domain

    head = _MANGLED_FROM.sub(mangled, head, count=1)
    head = _AT_FROM.sub(lambda m: m.group(1) + m.group(2) + b"@" + m.group(3), head, count=1)
    return head + body


def _from_address(raw: bytes) -> str:
    """The From address, cheaply, for the envelope sender of an imported message."""
    from email.utils import parseaddr

    head = raw.split(b"\n\n", 1)[0]
    match = re.search(rb"^From:[ \t]*(.*)$", head, re.MULTILINE | re.IGNORECASE)
    if not match:
        return ""
    return parseaddr(match.group(1).decode("ascii", "replace").strip())[1][:500]


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
                 batch_size: int = 500) -> None:
        self.app = app
        self.processor = processor
        self.batch_size = batch_size
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
        for raw in messages:
            if limit is not None and report.read >= limit:
                break
            report.read += 1
            batch.append((report.read, raw))
            if len(batch) >= self.batch_size:
                self._batch(batch, report, seen_hashes, seen_ids)
                batch = []
                if on_batch:
                    on_batch(report)
        if batch:
            self._batch(batch, report, seen_hashes, seen_ids)
        report.seconds = time.perf_counter() - started
        if on_batch:
            on_batch(report)
        return report

    def _batch(self, batch: list[tuple[int, bytes]], report: ImportReport,
               seen_hashes: set[str], seen_ids: set[str]) -> None:
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
            return
        with self.app.engine.connect() as connection:
            imported = self._imported(connection, {c[2] for c in candidates})
            archived = self._archived(connection, {c[3] for c in candidates})
        rows = []
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
            envelope = Envelope(mail_from=_from_address(raw), rcpt_to=(self.address,),
                                source=SOURCE, peer="import")
            row = self.writer.row(raw, envelope)
            row["next_attempt_at"] = self.app.clock.now() + LEASE
            rows.append((position, row))
        if not rows:
            return
        ids = self.writer.write_rows([row for _, row in rows])
        report.written += len(ids)
        self._process(ids, report, {inbox_id: position for inbox_id, (position, _)
                                    in zip(ids, rows, strict=True)})

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

    def _process(self, ids: list[int], report: ImportReport,
                 positions: dict[int, int]) -> None:
        """Process exactly the rows written (claimed by id), in one processor commit."""
        with self.app.engine.begin() as connection:
            connection.execute(update(_inbox).where(_inbox.c.id.in_(ids))
                               .values(next_attempt_at=self.app.clock.now() + LEASE))
            rows = list(connection.execute(
                select(_inbox.c.id, _inbox.c.raw, _inbox.c.sha256, _inbox.c.mail_from,
                       _inbox.c.rcpt_to, _inbox.c.kind, _inbox.c.received_at,
                       _inbox.c.attempts, _inbox.c.source)
                .where(_inbox.c.id.in_(ids)).order_by(_inbox.c.id)).all())
        self.processor.commit([self.processor.prepare(row) for row in rows])
        with self.app.engine.connect() as connection:
            for row in connection.execute(
                    select(_inbox.c.id, _inbox.c.status, _inbox.c.reason,
                           _inbox.c.header_message_id).where(_inbox.c.id.in_(ids))):
                report.outcomes[row.status] += 1
                if row.status != "done":
                    report.problems.append(Skipped(positions[row.id], row.header_message_id,
                                                   f"{row.status}: {row.reason}"))


def import_path(app: App, path: Path, community: str, processor: Processes, *,
                kind: str = "mbox", unquote: bool = True, limit: int | None = None,
                batch_size: int = 500, progress: TextIO | None = None,
                quiet: bool = False) -> ImportReport:
    """Import an mbox file (plain, .gz, .xz, .bz2) or a Maildir folder into `community`."""
    importer = Importer(app, community, processor, batch_size=batch_size)
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
        return importer.run(split_mbox(source.stream, unquote=unquote), report, limit=limit,
                            on_batch=None if bar is None else lambda r: bar.update(
                                source.position(), r.read, r.seconds > 0))
