"""The development outbox: every outgoing copy written into a Maildir instead of a relay.

Used when `[outbound] relay_host` is empty, so that a first run shows exactly what would
be sent. Each file is written into `tmp/`, fsynced, then renamed into `new/` (the Maildir
protocol: a reader never sees half a message), and `new/` is fsynced once per batch before
the deliveries are recorded as sent. Like a local delivery agent, the writer adds
`Return-Path` (the VERP envelope sender) and `Delivered-To` in front, and stores lines
ending in LF, the on-disk convention mail clients such as mutt expect.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from outbound.transport import Outgoing, Result


def ensure_maildir(root: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirTransport:
    name = "maildir"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        self.down = ""

    async def open(self) -> None:
        await asyncio.to_thread(ensure_maildir, self.root)

    def _write(self, item: Outgoing) -> None:
        now = time.time()
        name = (f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}"
                f"Q{item.delivery_id}R{os.urandom(4).hex()}.{self.host}")
        temporary = self.root / "tmp" / name
        data = (f"Return-Path: <{item.sender}>\r\nDelivered-To: {item.recipient}\r\n"
                .encode("ascii") + item.data).replace(b"\r\n", b"\n")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, self.root / "new" / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _write_all(self, items: list[Outgoing]) -> list[Result]:
        results = []
        for item in items:
            try:
                self._write(item)
            except OSError as exc:
                results.append(Result.temporary(item.delivery_id,
                                                f"outbox: {exc.strerror or exc}"))
            else:
                results.append(Result.sent(item.delivery_id))
        _fsync_dir(self.root / "new")
        return results

    async def send_many(self, items: list[Outgoing]) -> list[Result]:
        return await asyncio.to_thread(self._write_all, items)

    async def close(self) -> None:
        return None
