"""Helpers for the outbound tests: a community with members, stored posts, a sink MTA.

Posts are stored the way the inbound processor stores them (inbox row with the raw bytes,
conversation, message, and the fan-out's delivery rows in the same transaction), so the
sender under test reads exactly what it reads in production.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message as MimeMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge.app import App
from bridge.directory import add_member, create_community, ensure_person
from bridge.fanout import fan_out
from bridge.models import Conversation, InboxItem, Message
from tests.conftest import DOMAIN, free_port

FIXTURES = Path(__file__).parent / "fixtures" / "outbound"


@dataclass
class World:
    slug: str
    community_id: int
    people: dict[str, int] = field(default_factory=dict)  # email -> person id


def make_world(app: App, members: Iterable[tuple[str, str, str]] = (
        ("alice@example.com", "Alice Martin", "owner"),
        ("bob@example.com", "Bob Durand", "member"),
        ("claire@example.com", "Claire Petit", "moderator"),
        ("dan@partner.example.net", "Dan Guest", "guest")),
        slug: str = "rd", name: str = "R&D", **community: Any) -> World:
    with app.session() as session:
        created = create_community(session, slug, name,
                                   **{k: v for k, v in community.items()
                                      if k in ("policy", "visibility", "language",
                                               "description", "admits_guests")})
        for key in ("subject_tag", "reply_to"):
            if key in community:
                setattr(created, key, community[key])
        session.add(created)
        world = World(slug=slug, community_id=created.id or 0)
        for address, display, role in members:
            add_member(session, created, address, name=display, role=role)
            person, _ = ensure_person(session, address)
            world.people[address] = person.id or 0
    return world


def store_post(app: App, world: World, raw: bytes, *, conversation_id: int | None = None,
               to_cc: Iterable[str] = ()) -> tuple[int, int]:
    """Store `raw` as a published post (and fan it out); returns (message pk, conversation)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    name, sender = parseaddr(str(parsed["From"]))
    name = str(make_header(decode_header(name))).replace("\r", " ").replace("\n", " ")
    message_id = str(parsed["Message-ID"]).strip().strip("<>")
    subject = str(make_header(decode_header(str(parsed["Subject"] or ""))))
    with app.session() as session:
        person, _ = ensure_person(session, sender, name)
        item = InboxItem(mail_from=sender, rcpt_to=[f"{world.slug}@{DOMAIN}"], size=len(raw),
                         sha256="0" * 64, raw=raw, header_message_id=message_id,
                         status="done", kind="post")
        session.add(item)
        if conversation_id is None:
            conversation = Conversation(community_id=world.community_id, subject=subject,
                                        normalized_subject=subject.lower(),
                                        author_id=person.id)
            session.add(conversation)
            session.flush()
            conversation_id = conversation.id
        session.flush()
        assert conversation_id is not None
        in_reply_to = str(parsed["In-Reply-To"] or "").strip().strip("<>")
        message = Message(community_id=world.community_id, conversation_id=conversation_id,
                          message_id=message_id, in_reply_to=in_reply_to,
                          author_id=person.id, from_address=sender.lower(), from_name=name,
                          subject=subject, text="...", inbox_id=item.id,
                          to_cc=[a.lower() for a in to_cc])
        session.add(message)
        session.flush()
        assert message.id is not None
        fan_out(session.connection(), message_pk=message.id, community_id=world.community_id,
                conversation_id=conversation_id, author_id=person.id, to_cc=to_cc,
                now=app.clock.now())
        return message.id, conversation_id


def simple_post(sender: str = "Alice Martin <alice@example.com>", subject: str = "Budget 2027",
                message_id: str = "budget-1@example.com", body: str = "Hello team,\n\n"
                "The budget is attached.\n", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: rd@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body.replace(
                "\n", "\r\n").encode("utf-8")


def read_maildir(root: Path) -> list[MimeMessage]:
    """Every message in `root/new`, parsed (files are LF-ended, as a local MDA writes)."""
    return [email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
            for path in sorted((root / "new").iterdir())]


def maildir_bytes(root: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((root / "new").iterdir())]


def by_recipient(messages: list[MimeMessage]) -> dict[str, MimeMessage]:
    return {str(m["Delivered-To"]).strip(): m for m in messages}


# --- a sink MTA that can be told what to answer -----------------------------------------------

class SinkHandler:
    """Answers 250, or what `rcpt_reply(address)` / `data_reply()` say; keeps what arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.rcpt_reply: Callable[[str], str | None] = lambda address: None
        self.data_reply: Callable[[], str | None] = lambda: None
        self.lock = threading.Lock()
        self.keep = True
        self.count = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_reply()
        if reply:
            return reply
        with self.lock:
            self.count += 1
            if self.keep:
                self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                                      bytes(envelope.original_content or b"")))
        return "250 OK queued"


class Sink:
    def __init__(self, handler: SinkHandler | None = None) -> None:
        self.handler = handler or SinkHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     data_size_limit=0)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def addresses(self) -> list[str]:
        return [r for _, rcpts, _ in self.handler.received for r in rcpts]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
