"""Header injection into mail Causerie writes by itself: notices to a refused sender (built
from the sender's own Subject, From name and Message-ID) and list copies, with CR/LF, NUL
and Unicode line separators in every field an outsider controls. The composed copies with
crafted names, subjects and community names are also covered by
tests/test_outbound_compose.py::test_crafted_names_and_subjects_never_make_headers."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlmodel import Session, select

from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import Delivery
from bridge.wiring import processor
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN

EVIL = ["\r\nBcc: evil@attacker.example", "\nBcc: evil@attacker.example",
        "\rBcc: evil@attacker.example", "\u2028Bcc: evil@attacker.example",
        "\u2029Bcc: evil@attacker.example", "\x85Bcc: evil@attacker.example",
        "\x00\r\nBcc: evil@attacker.example", "=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.example?="]
ALLOWED = {"from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
           "reply-to", "auto-submitted", "x-auto-response-suppress", "precedence",
           "x-causerie-loop", "mime-version", "content-type", "content-transfer-encoding",
           "content-language", "list-id", "list-post", "list-archive", "list-unsubscribe",
           "list-unsubscribe-post", "list-help", "list-owner", "list-subscribe", "sender",
           "archived-at", "x-loop", "errors-to", "return-path", "dkim-signature",
           "content-disposition", "x-causerie-community"}


def header_names(raw: bytes) -> list[str]:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return [line.split(b":", 1)[0].decode("ascii", "replace").lower()
            for line in head.split(b"\n") if line and line[:1] not in b" \t"]


@pytest.mark.parametrize("evil", EVIL)
def test_a_refusal_notice_never_gets_an_extra_header(app: App, evil: str) -> None:
    with app.session() as session:
        rd = create_community(session, "rd", "R&D", policy="members")
        add_member(session, rd, "alice@example.com")
    name = f"Mallory{evil}".replace('"', "")
    raw = (f'From: "{name}" <mallory@example.com>\r\nTo: rd@{DOMAIN}\r\n'
           f"Subject: Hello{evil}\r\nMessage-ID: <m1@example.com>\r\n"
           f"In-Reply-To: <x{evil.strip()}@example.com>\r\n\r\nA post from outside.\r\n"
           ).encode("utf-8", "surrogatepass")
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    writer.accept_sync(raw, Envelope("mallory@example.com", [f"rd@{DOMAIN}"]))
    processor(app).run_until_idle()
    with Session(app.engine) as session:
        rows = session.exec(select(Delivery)).all()
    from bridge.models import InboxItem
    with Session(app.engine) as session:
        [item] = session.exec(select(InboxItem)).all()
    assert item.status in ("held", "rejected"), (item.status, item.reason)
    # A raw CR/LF in the incoming From breaks the From itself: rejected, nobody to notify.
    assert rows or item.status == "rejected", "no notice for a held message"
    for row in rows:
        assert row.raw is not None
        names = header_names(row.raw)
        assert "bcc" not in names and set(names) <= ALLOWED, names
        parsed = email.message_from_bytes(row.raw, policy=email.policy.default)
        for header, value in parsed.items():
            assert "\n" not in str(value) and "\r" not in str(value), (header, value)
