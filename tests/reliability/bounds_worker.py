"""One oversized message through the real inbox and processor, in a process of its own.

    python -m tests.reliability.bounds_worker CASE DATA_DIR

Run by tests/reliability/test_bounds.py under an address-space limit and a timeout, so that a
message that made the processor eat memory or loop would kill this process, not the test run.
Prints one JSON line: the row's status and reason, the seconds spent, the peak RSS, and
what was stored of the attachments.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import resource
import sys
import time
from pathlib import Path

from sqlmodel import Session, select

from bridge.app import App
from bridge.db import make_engine, upgrade
from bridge.models import Attachment, InboxItem
from bridge.settings import Settings
from tests.conftest import write_settings
from tests.reliability.fuzzing import DOMAIN, MEMBER, Harness

HEAD = (b"From: Alice Martin <alice@example.com>\r\nTo: fuzz@lists.example.org\r\n"
        b"Subject: bounds\r\nMessage-ID: <bounds@example.com>\r\nMIME-Version: 1.0\r\n")
MAX_ATTACHMENT = 1024 * 1024  # the limit set for these cases
GZIP_INFLATED = 50 * 1024 * 1024


def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * GZIP_INFLATED, compresslevel=9)


def case(name: str) -> tuple[bytes, list[str]]:
    """The raw message and the envelope recipients of each case."""
    rcpt = [f"fuzz@{DOMAIN}"]
    text = b"Content-Type: text/plain\r\n\r\nHello.\r\n"
    if name == "header_1mb":
        return HEAD + b"X-Big: " + b"a" * (1 << 20) + b"\r\n" + text, rcpt
    if name == "folded_header_1mb":
        return HEAD + b"Subject: " + b"word \r\n " * (1 << 17) + b"\r\n" + text, rcpt
    if name == "header_lines_100k":
        return HEAD + b"".join(b"X-Line-%d: v\r\n" % i for i in range(100_000)) + text, rcpt
    if name == "nesting_1000":
        body = b"Content-Type: text/plain\r\n\r\nDeep inside.\r\n"
        for depth in range(1000):
            body = (b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (
                depth, depth)) + body + b"\r\n--b%d--\r\n" % depth
        return HEAD + body, rcpt
    if name in ("base64_oversized", "gzip_bomb"):
        payload = (b"\xff" * (8 * MAX_ATTACHMENT) if name == "base64_oversized"
                   else gzip_bomb())
        kind, filename = (("application/octet-stream", "big.bin") if name == "base64_oversized"
                          else ("application/gzip", "bomb.gz"))
        body = (b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n--XYZ\r\n'
                b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--XYZ\r\n"
                + f'Content-Type: {kind}; name="{filename}"\r\n'
                  f'Content-Disposition: attachment; filename="{filename}"\r\n'
                  "Content-Transfer-Encoding: base64\r\n\r\n".encode()
                + base64.encodebytes(payload).replace(b"\n", b"\r\n") + b"--XYZ--\r\n")
        return HEAD + body, rcpt
    if name == "recipients_100k":
        return HEAD + text, [f"user{i}@elsewhere.example" for i in range(100_000)] + rcpt
    raise SystemExit(f"unknown case {name!r}")


def main(name: str, data_dir: Path) -> None:
    logging.disable(logging.CRITICAL)
    url = f"sqlite:///{data_dir}/var/causerie.db"
    (data_dir / "var").mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(url))
    settings = Settings.load(write_settings(data_dir, url, f"""
[processor]
max_attachment_size = {MAX_ATTACHMENT}
"""), environ={})
    app = App(settings)
    harness = Harness(app)
    raw, rcpt = case(name)
    started = time.monotonic()
    [inbox_id] = harness.send([(raw, MEMBER, rcpt)])
    harness.processor.run_until_idle()
    seconds = time.monotonic() - started
    with Session(app.engine) as session:
        item = session.get(InboxItem, inbox_id)
        assert item is not None
        kept = app.raw_mail(item) == raw
        attachments = [{"filename": a.filename, "size": a.size, "sha256": a.sha256,
                        "stored": bool(a.sha256) and app.blobs.path(a.sha256).exists()
                        if a.sha256 else False}
                       for a in session.exec(select(Attachment))]
    print(json.dumps({"status": item.status, "reason": item.reason[:300], "seconds": seconds,
                      "raw_kept": kept, "raw_size": len(raw),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "attachments": attachments}))
    app.dispose()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
