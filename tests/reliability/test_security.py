"""Security guarantees that the web tests do not already prove (see docs/RELIABILITY.md):
no open relay at RCPT, reply tokens that cannot be forged, replayed into another community,
used after removal or after the secret rotates.

Proven elsewhere and only referenced here: the web's permissions in every place
(tests/test_web_permissions.py), sign-in links, sessions, CSRF and rate limits
(tests/test_web_security.py), private communities absent from digests
(tests/test_digest.py::test_daily_and_weekly_contain_exactly_their_period_and_communities).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlmodel import Session, select

from bridge.app import App
from bridge.directory import add_member, create_community, remove_member
from bridge.models import Community, Conversation, Held, InboxItem, Message
from bridge.settings import Settings
from bridge.tokens import make_token, read_token, reply_token
from bridge.wiring import processor
from inbound.smtp import ClientLimits, GatewayHandler
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN
from tests.test_web_world import mail

ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "mallory@example.com"

# --- no open relay -------------------------------------------------------------------------

# A foreign domain in any disguise: refused with the relay refusal proper.
FOREIGN = [
    "user@elsewhere.example", "USER@ELSEWHERE.EXAMPLE", "user@bücher.example",
    "user@xn--bcher-kva.example", "user@elsewhere.example.", f"rd@{DOMAIN}.",
    f"rd@{DOMAIN}.elsewhere.example", f"rd@sub.{DOMAIN}", f"rd@{DOMAIN.upper()}X",
    f"<@{DOMAIN}:user@elsewhere.example>", f'"rd@{DOMAIN}"@elsewhere.example',
    "user@[127.0.0.1]", "user@[IPv6:::1]", f"user@elsewhere.example (rd@{DOMAIN})"]
# Not an address at all (a bare source route, two @, a NUL): refused as invalid.
MALFORMED = [f"@{DOMAIN}:user@elsewhere.example", f"rd@{DOMAIN}@elsewhere.example",
             f"user@elsewhere.example\x00@{DOMAIN}", "", "@", f"@{DOMAIN}"]
# Our domain, with a local part written to make a relay forward it (percent hack, bang
# path, quoted address): refused as unknown local parts (5.1.1), which is not relaying
# either. A quoted `"rd"` is refused too, rather than unquoted: no client writes it.
TRICKS = [f"user%elsewhere.example@{DOMAIN}", f"user%elsewhere.example%{DOMAIN}@{DOMAIN}",
          f'"user@elsewhere.example"@{DOMAIN}', f"elsewhere.example!user@{DOMAIN}",
          f'"rd"@{DOMAIN}', f"rd%{DOMAIN}@{DOMAIN}"]
OURS = [f"rd@{DOMAIN}", f"RD@{DOMAIN.upper()}", f"postmaster@{DOMAIN}",
        f"rd+subscribe@{DOMAIN}", f"Rd+Help@{DOMAIN}"]
SENDERS = ["", "<>", ALICE, "user@elsewhere.example", f"rd@{DOMAIN}", "USER@ELSEWHERE.EXAMPLE",
           f"user%elsewhere.example@{DOMAIN}"]


def rcpt(handler: GatewayHandler, sender: str, recipient: str) -> str:
    """MAIL FROM `sender`, RCPT TO `recipient` on the real handler; the RCPT answer."""
    session = SmtpSession(loop=None)  # type: ignore[arg-type]
    session.peer = ("192.0.2.1", 25)
    envelope = SmtpEnvelope()
    answer = asyncio.run(handler.handle_MAIL(None, session, envelope, sender, []))  # type: ignore[arg-type]
    assert answer.startswith("250")
    return asyncio.run(handler.handle_RCPT(None, session, envelope, recipient, []))  # type: ignore[arg-type]


@pytest.fixture
def gateway(app: App) -> GatewayHandler:
    with app.session() as session:
        create_community(session, "rd", "R&D", policy="open")
    writer = InboxWriter(app.engine, app.blobs, 1 << 20, app.clock)
    limits = ClientLimits(max_connections=10, max_messages_per_minute=10_000)
    return GatewayHandler(app.router(), writer, app.settings.smtp, limits)


@pytest.mark.parametrize("sender", SENDERS)
def test_no_open_relay_for_any_sender(gateway: GatewayHandler, sender: str) -> None:
    """Every (sender, recipient) combination: foreign recipients get 550 5.7.1 whatever the
    sender (local, foreign, null); nothing but our own addresses gets 250."""
    for recipient in FOREIGN:
        answer = rcpt(gateway, sender, recipient)
        assert answer.startswith("550 5.7.1") and "relaying denied" in answer, \
            (sender, recipient, answer)
    for recipient in MALFORMED:
        answer = rcpt(gateway, sender, recipient)
        assert answer.startswith("550 5.1.1") and "not a valid" in answer, \
            (sender, recipient, answer)
    for recipient in TRICKS:
        answer = rcpt(gateway, sender, recipient)
        assert answer.startswith("550 5.1.1"), (sender, recipient, answer)
    for recipient in OURS:
        assert rcpt(gateway, sender, recipient).startswith("250"), (sender, recipient)


def test_the_recipient_limit_answers_452_and_keeps_only_the_first(
        gateway: GatewayHandler) -> None:
    """100,000 RCPTs in one envelope: 452 4.5.3 after max_recipients, and the envelope (the
    memory) never holds more than max_recipients addresses."""
    session = SmtpSession(loop=None)  # type: ignore[arg-type]
    session.peer = ("192.0.2.1", 25)
    envelope = SmtpEnvelope()
    limit = gateway.settings.max_recipients

    async def flood() -> list[str]:
        await gateway.handle_MAIL(None, session, envelope, ALICE, [])  # type: ignore[arg-type]
        return [await gateway.handle_RCPT(None, session, envelope, f"rd@{DOMAIN}", [])  # type: ignore[arg-type]
                for _ in range(100_000)]

    answers = asyncio.run(flood())
    assert all(a.startswith("250") for a in answers[:limit])
    assert all(a.startswith("452 4.5.3") for a in answers[limit:])
    assert len(envelope.rcpt_tos) == limit


# --- reply tokens --------------------------------------------------------------------------


@dataclass
class Tokens:
    app: App
    writer: InboxWriter
    people: dict[str, int] = field(default_factory=dict)
    conversations: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def send(self, rcpt: str, *, sender: str = BOB, in_reply_to: str = "",
             body: str = "A reply.\n") -> InboxItem:
        """One message through the real inbox and processor; its inbox row afterwards."""
        self.sent += 1
        raw = mail(f"Sender <{sender}>", rcpt, "Re: topic", f"try-{self.sent}@example.com",
                   body, in_reply_to=in_reply_to)
        [inbox_id] = self.writer.write_rows([self.writer.row(raw, Envelope(sender, [rcpt]))])
        processor(self.app).run_until_idle()
        with Session(self.app.engine) as session:
            item = session.get(InboxItem, inbox_id)
            assert item is not None
            return item

    def where(self, message_id: str) -> tuple[str, int] | None:
        """(community slug, conversation id) where a message was archived, if it was."""
        with Session(self.app.engine) as session:
            row = session.exec(select(Message).where(Message.message_id == message_id)).first()
            if row is None:
                return None
            community = session.get(Community, row.community_id)
            assert community is not None
            return community.slug, row.conversation_id

    def reply_address(self, who: str, conversation: str, secret: bytes | None = None) -> str:
        token = reply_token(secret or self.app.secret, self.people[who],
                            self.conversations[conversation])
        return f"reply+{token}@{DOMAIN}"


@pytest.fixture
def tokens(app: App) -> Tokens:
    """Two communities: `rd` (alice, bob) and the private `vault` (alice only); conversations
    A and B in rd, V in vault."""
    world = Tokens(app, InboxWriter(app.engine, app.blobs, 1 << 20, app.clock))
    with app.session() as session:
        rd = create_community(session, "rd", "R&D", policy="members")
        vault = create_community(session, "vault", "Vault", policy="members",
                                 visibility="private")
        for address in (ALICE, BOB):
            add_member(session, rd, address)
        add_member(session, vault, ALICE)
    for key, slug in (("A", "rd"), ("B", "rd"), ("V", "vault")):
        raw = mail(f"Alice <{ALICE}>", f"{slug}@{DOMAIN}", f"Topic {key}", f"{key}@example.com",
                   f"Conversation {key}.\n")
        world.writer.write_rows([world.writer.row(raw, Envelope(ALICE, [f"{slug}@{DOMAIN}"]))])
    processor(app).run_until_idle()
    with Session(app.engine) as session:
        for message in session.exec(select(Message)):
            world.conversations[message.message_id[0]] = message.conversation_id
    world.people = _people(app)
    assert set(world.conversations) == {"A", "B", "V"}
    return world


def _people(app: App) -> dict[str, int]:
    from bridge.models import Address

    with Session(app.engine) as session:
        return {a.email.split("@")[0]: a.person_id for a in session.exec(select(Address))
                if a.email in (ALICE, BOB)}


def _variants(token: str) -> list[str]:
    """Forgeries of a genuine token: each bit flipped in turn (a sample), truncated,
    lengthened, and random tokens of the right form."""
    raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    forged = []
    for bit in range(0, len(raw) * 8, 7):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        forged.append(base64.b32encode(bytes(flipped)).decode().rstrip("=").lower())
    forged += [token[:-1], token[:16], token + "a", "a" * len(token),
               base64.b32encode(bytes(range(20))).decode().rstrip("=").lower()]
    return [t for t in forged if t != token]


def test_forged_reply_tokens_are_refused_at_rcpt_and_by_the_processor(
        tokens: Tokens) -> None:
    app = tokens.app
    genuine = tokens.reply_address("bob", "A").split("+")[1].split("@")[0]
    bob, conversation = tokens.people["bob"], tokens.conversations["A"]
    other_kinds = [make_token(app.secret, kind, bob, conversation)
                   for kind in ("private", "bounces", "moderate", "unsubscribe", "mute")]
    router = app.router()
    handler = GatewayHandler(router, tokens.writer, app.settings.smtp,
                             ClientLimits(10, 10_000))
    for token in _variants(genuine) + other_kinds:
        assert read_token(app.secret, "reply", token) is None, token
        answer = rcpt(handler, BOB, f"reply+{token}@{DOMAIN}")
        assert answer.startswith("550 5.1.1"), (token, answer)
    # Mail that reaches the inbox anyway (LMTP behind an MTA, an import) is refused too.
    for token in [*_variants(genuine)[:4], other_kinds[0]]:
        item = tokens.send(f"reply+{token}@{DOMAIN}")
        assert item.status == "rejected" and "not valid" in item.reason, item.reason
    assert tokens.send(f"reply+{genuine}@{DOMAIN}").status == "done"


def test_a_token_cannot_carry_a_reply_into_another_community(tokens: Tokens) -> None:
    """Bob's token for conversation A (rd), with In-Reply-To a message of the private vault:
    the message goes to rd, never into the vault."""
    item = tokens.send(tokens.reply_address("bob", "A"), in_reply_to="V@example.com")
    assert item.status == "done", item.reason
    assert tokens.where(f"try-{tokens.sent}@example.com") == ("rd", tokens.conversations["A"])
    with Session(tokens.app.engine) as session:
        vault = session.exec(select(Conversation).where(
            Conversation.id == tokens.conversations["V"])).one()
        assert vault.message_count == 1


def test_a_token_replayed_with_another_conversations_references_stays_in_its_community(
        tokens: Tokens) -> None:
    """Within one community the processor threads by In-Reply-To first (the token only
    authorises the person in that community), so the reply joins B — a conversation the
    sender may post to anyway. Asserted so that a change of this rule is a decision."""
    item = tokens.send(tokens.reply_address("bob", "A"), in_reply_to="B@example.com")
    assert item.status == "done", item.reason
    assert tokens.where(f"try-{tokens.sent}@example.com") == ("rd", tokens.conversations["B"])


def test_a_token_used_from_another_address_is_held(tokens: Tokens) -> None:
    item = tokens.send(tokens.reply_address("bob", "A"), sender=MALLORY)
    assert item.status == "held" and "another address" in item.reason, item.reason
    with Session(tokens.app.engine) as session:
        [held] = session.exec(select(Held)).all()
        assert held.sender == MALLORY
    assert tokens.where(f"try-{tokens.sent}@example.com") is None


def test_a_token_is_dead_once_its_owner_is_removed(tokens: Tokens) -> None:
    address = tokens.reply_address("bob", "A")
    with tokens.app.session() as session:
        rd = session.exec(select(Community).where(Community.slug == "rd")).one()
        remove_member(session, rd, BOB)
    item = tokens.send(address)
    assert item.status == "rejected" and "revoked" in item.reason, item.reason
    assert tokens.where(f"try-{tokens.sent}@example.com") is None


def test_rotating_the_secret_revokes_every_token(tokens: Tokens, settings: Settings) -> None:
    address = tokens.reply_address("bob", "A")
    settings.instance.secret_file.write_bytes(b"a brand new secret, 32 bytes long.")
    rotated = App(settings)
    try:
        assert rotated.secret != tokens.app.secret
        handler = GatewayHandler(rotated.router(), tokens.writer, settings.smtp,
                                 ClientLimits(10, 10_000))
        assert rcpt(handler, BOB, address).startswith("550 5.1.1")
        tokens.app = rotated
        item = tokens.send(address)
        assert item.status == "rejected" and "not valid" in item.reason, item.reason
        assert tokens.send(tokens.reply_address("bob", "A")).status == "done"
    finally:
        rotated.dispose()
