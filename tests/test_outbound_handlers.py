"""The handlers outbound gives the processor: bounces, commands, moderation, mute, private
replies and owner mail, notices. Each is called as the processor calls it (a session and an
`IncomingMail`); the mail it queues is parsed back from the delivery rows."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from bridge.addresses import Route
from bridge.app import App
from bridge.clock import FixedClock
from bridge.events import Bounce, IncomingMail
from bridge.models import Address, Delivery, Held, InboxItem, Membership, Mute, Person
from bridge.settings import Settings
from bridge.tokens import make_token, reply_token, subscribe_token
from outbound.bounces import HARD_POINTS, SOFT_POINTS, THRESHOLD, classify, decayed
from outbound.commands import delivery_request
from outbound.handlers import build_handlers
from outbound.moderation import Moderation, parse_decision
from outbound.mutes import is_mute_request
from outbound.notices import Notices
from tests.conftest import DOMAIN, write_settings
from tests.test_outbound_support import World, make_world, simple_post, store_post

NOW = datetime(2030, 5, 6, 8, 0, tzinfo=UTC)


@pytest.fixture
def capp(tmp_path: Path, db_url: str) -> App:
    app = App(Settings.load(write_settings(tmp_path, db_url), environ={}),
              clock=FixedClock(NOW))
    yield app  # type: ignore[misc]
    app.dispose()


def incoming(app: App, route: Route, *, sender: str = "", subject: str = "", text: str = "",
             envelope: str | None = None, kind: str = "post", language: str = "",
             bounces: tuple[Bounce, ...] = (), raw: bytes = b"") -> IncomingMail:
    with app.session() as session:
        item = InboxItem(mail_from=sender if envelope is None else envelope,
                         rcpt_to=[route.address], size=len(raw), sha256="1" * 64,
                         raw=raw or simple_post(), status="pending")
        session.add(item)
        session.flush()
        inbox_id = item.id or 0
    return IncomingMail(inbox_id=inbox_id, route=route,
                        envelope_sender=sender if envelope is None else envelope,
                        sender=sender, sender_name="", subject=subject,
                        message_id=f"m{inbox_id}@example.com", in_reply_to="", references=(),
                        text=text, language=language, kind=kind, bounces=bounces, raw=raw)


def call(app: App, name: str, mail: IncomingMail):  # type: ignore[no-untyped-def]
    handlers = build_handlers(app)
    handler = getattr(handlers, name, None) or handlers.extra[name]
    with app.session() as session:
        return handler(session, mail)


def queued(app: App, kind: str | None = None) -> list[tuple[Delivery, email.message.Message]]:
    with Session(app.engine) as session:
        rows = session.exec(select(Delivery).order_by(col(Delivery.id))).all()
    return [(row, email.message_from_bytes(row.raw or b"", policy=email.policy.default))
            for row in rows if kind is None or row.kind == kind]


def body(message: email.message.Message) -> str:
    part = message.get_body(("plain",)) if hasattr(message, "get_body") else message
    return part.get_content()  # type: ignore[union-attr]


def membership(app: App, world: World, address: str) -> Membership | None:
    with Session(app.engine) as session:
        return session.exec(select(Membership).where(
            Membership.community_id == world.community_id,
            Membership.person_id == world.people[address])).first()


# --- bounces --------------------------------------------------------------------------------

def test_classification_and_decay() -> None:
    assert classify("5.1.1", True, "userunknown") == "hard"
    assert classify("5.2.2", False, "mailboxfull") == "soft"
    assert classify("4.2.2", False, "mailboxfull") == "soft"
    assert classify("5.7.1", False, "policy") == "policy"
    assert classify("5.0.0", False, "spam") == "policy"
    assert classify("", False, "delayed") == "ignore"
    assert HARD_POINTS > SOFT_POINTS
    assert decayed(4.0, NOW - timedelta(days=7), NOW) == pytest.approx(2.0)
    assert decayed(4.0, NOW - timedelta(days=14), NOW) == pytest.approx(1.0)


def _post_delivery(capp: App, world: World, address: str) -> int:
    store_post(capp, world, simple_post())
    with Session(capp.engine) as session:
        row = session.exec(select(Delivery).where(Delivery.address == address)).one()
        return row.id or 0


def test_dsn_to_verp_address_scores_hard_more_than_soft(capp: App) -> None:
    world = make_world(capp)
    delivery = _post_delivery(capp, world, "bob@example.com")
    route = Route("bounce", f"bounces+{make_token(capp.secret, 'bounces', delivery)}@{DOMAIN}",
                  token=make_token(capp.secret, "bounces", delivery))
    soft = call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
        Bounce("bob@example.com", "5.2.2", False, "mailboxfull"),)))
    assert soft.status == "done" and "soft bounce, score 0.50" in soft.reason
    hard = call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
        Bounce("bob@example.com", "5.1.1", True, "userunknown"),)))
    assert "hard bounce, score 1.50" in hard.reason
    policy = call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
        Bounce("bob@example.com", "5.7.1", False, "spam"),)))
    assert "not counted" in policy.reason
    member = membership(capp, world, "bob@example.com")
    assert member is not None and member.bounce_score == pytest.approx(1.5)
    # A week later the score has halved before the next bounce is added.
    capp.clock.at = NOW + timedelta(days=7)  # type: ignore[attr-defined]
    call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
        Bounce("bob@example.com", "5.1.1", True, "userunknown"),)))
    member = membership(capp, world, "bob@example.com")
    assert member is not None and member.bounce_score == pytest.approx(0.75 + 1.0)


def test_threshold_disables_and_tells_member_and_owners_once(capp: App) -> None:
    world = make_world(capp)
    with capp.session() as session:  # bob has a second address: the "other route"
        session.add(Address(email="bob.durand@home.example", person_id=world.people[
            "bob@example.com"], primary=False))
    delivery = _post_delivery(capp, world, "bob@example.com")
    token = make_token(capp.secret, "bounces", delivery)
    route = Route("bounce", f"bounces+{token}@{DOMAIN}", token=token)
    for _ in range(int(THRESHOLD / HARD_POINTS) + 2):
        call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
            Bounce("bob@example.com", "5.1.1", True, "userunknown"),)))
    member = membership(capp, world, "bob@example.com")
    assert member is not None and member.disabled_reason.startswith(
        "bounces: bob@example.com 5.1.1 userunknown")
    notices = queued(capp, "notice")
    assert sorted(row.address for row, _ in notices) == ["alice@example.com",
                                                         "bob.durand@home.example"]
    to_bob = next(m for row, m in notices if row.address == "bob.durand@home.example")
    assert "bouncing" in str(to_bob["Subject"])
    to_owner = next(m for row, m in notices if row.address == "alice@example.com")
    assert "causerie member set rd bob@example.com --enable" in body(to_owner)
    assert to_owner["Auto-Submitted"] == "auto-generated"
    # Disabled members get no more copies.
    store_post(capp, world, simple_post(message_id="later@example.com"))
    with Session(capp.engine) as session:
        later = session.exec(select(Delivery).where(Delivery.kind == "post")).all()
    assert sum(1 for d in later if d.address == "bob@example.com") == 1


def test_dsn_without_verp_is_matched_within_the_community(capp: App) -> None:
    world = make_world(capp)
    route = Route("post", f"rd@{DOMAIN}", slug="rd")
    outcome = call(capp, "bounce", incoming(capp, route, envelope="", kind="bounce", bounces=(
        Bounce("claire@example.com", "5.1.1", True, "userunknown"),
        Bounce("stranger@example.org", "5.1.1", True, "userunknown"))))
    assert "claire@example.com 5.1.1 userunknown: hard bounce" in outcome.reason
    assert "stranger@example.org 5.1.1: no member matched" in outcome.reason
    member = membership(capp, world, "claire@example.com")
    assert member is not None and member.bounce_score == HARD_POINTS


# --- commands by email ----------------------------------------------------------------------

def command_route(slug: str, command: str) -> Route:
    return Route("command", f"{slug}+{command}@{DOMAIN}", slug=slug, command=command)


def test_subscribe_with_confirmation(capp: App) -> None:
    world = make_world(capp)
    first = call(capp, "command", incoming(capp, command_route("rd", "subscribe"),
                                           sender="eve@example.com", subject="subscribe"))
    assert first.reason == "confirmation sent to eve@example.com for rd"
    [(row, confirm)] = queued(capp, "command")
    assert row.address == "eve@example.com"
    assert confirm["Auto-Submitted"] == "auto-replied"
    assert confirm["Reply-To"] == f"rd+subscribe@{DOMAIN}"
    token = re.search(r"confirm ([a-z2-7]+)", str(confirm["Subject"])).group(1)  # type: ignore[union-attr]
    # A reply from another address, or with a forged token, does not subscribe.
    forged = call(capp, "command", incoming(capp, command_route("rd", "subscribe"),
                                            sender="mallory@example.com",
                                            subject=f"Re: {confirm['Subject']}"))
    assert "invalid confirmation" in forged.reason
    # Replying to the confirmation (mail clients keep the subject) joins.
    done = call(capp, "command", incoming(capp, command_route("rd", "subscribe"),
                                          sender="eve@example.com",
                                          subject=f"Re: {confirm['Subject']}"))
    assert done.reason == "eve@example.com joined rd (confirmed by email)"
    with Session(capp.engine) as session:
        person = session.exec(select(Person).join(Address).where(
            Address.email == "eve@example.com")).one()
        assert session.exec(select(Membership).where(
            Membership.person_id == person.id,
            Membership.community_id == world.community_id)).one().role == "member"
    welcome = queued(capp, "command")[-1][1]
    assert "Welcome to R&D" in str(welcome["Subject"])
    # Tokens expire after a week.
    stale = subscribe_token(capp.secret, world.community_id, "zoe@example.com",
                            NOW.toordinal() - 8)
    old = call(capp, "command", incoming(capp, command_route("rd", "subscribe"),
                                         sender="zoe@example.com", subject=f"confirm {stale}"))
    assert "invalid confirmation" in old.reason
    assert token


def test_guests_cannot_subscribe_to_staff_only_communities(capp: App) -> None:
    make_world(capp)
    outcome = call(capp, "command", incoming(capp, command_route("rd", "subscribe"),
                                             sender="visitor@customer.example"))
    assert outcome.reason == "subscription refused: visitor@customer.example is a guest"


def test_unsubscribe_help_and_delivery_mode_in_french(capp: App) -> None:
    world = make_world(capp)
    with capp.session() as session:
        claire = session.get(Person, world.people["claire@example.com"])
        assert claire is not None
        claire.language = "fr"
        session.add(claire)
    changed = call(capp, "command", incoming(capp, command_route("rd", "help"),
                                             sender="claire@example.com",
                                             subject="livraison quotidienne"))
    assert changed.reason == "claire@example.com: delivery mode daily in rd"
    member = membership(capp, world, "claire@example.com")
    assert member is not None and member.delivery_mode == "daily"
    help_fr = call(capp, "command", incoming(capp, command_route("rd", "help"),
                                             sender="claire@example.com", subject="aide"))
    assert help_fr.reason == "help sent to claire@example.com"
    _, reply = queued(capp, "command")[-1]
    assert str(reply["Subject"]) == "Aide de R&D"
    assert "Publier : écrivez à rd@lists.example.org" in body(reply)
    assert reply["Content-Language"] == "fr"
    help_en = call(capp, "command", incoming(capp, command_route("rd", "help"),
                                             sender="bob@example.com"))
    assert help_en.status == "done"
    _, english = queued(capp, "command")[-1]
    assert str(english["Subject"]) == "Help for R&D"
    gone = call(capp, "command", incoming(capp, command_route("rd", "unsubscribe"),
                                          sender="claire@example.com"))
    assert gone.reason == "claire@example.com left rd by email"
    assert membership(capp, world, "claire@example.com") is None
    _, goodbye = queued(capp, "command")[-1]
    assert str(goodbye["Subject"]) == "Vous avez quitté R&D"


def test_commands_never_answer_the_null_sender(capp: App) -> None:
    make_world(capp)
    outcome = call(capp, "command", incoming(capp, command_route("rd", "help"), sender="",
                                             envelope=""))
    assert outcome.status == "discarded"
    assert queued(capp) == []


def test_delivery_and_mute_words() -> None:
    assert delivery_request("delivery weekly", "") == "weekly"
    assert delivery_request("Re: mode: none", "") == "none"
    assert delivery_request("", "livraison hebdomadaire\n> quoted") == "weekly"
    assert delivery_request("Budget", "see you") == ""
    assert is_mute_request("mute", "Re: Budget")
    assert is_mute_request("", "mute")
    assert is_mute_request("Sourdine.", "Re: [rd] Budget")
    assert not is_mute_request("I think we should mute the alarms", "Re: Budget")
    assert not is_mute_request("", "Re: Budget")


# --- moderation by email --------------------------------------------------------------------

def hold(capp: App, world: World) -> Held:
    raw = simple_post(sender="Visitor <visitor@example.com>", message_id="held-1@example.com",
                      subject="Can I post?")
    with capp.session() as session:
        item = InboxItem(mail_from="visitor@example.com", rcpt_to=[f"rd@{DOMAIN}"],
                         size=len(raw), sha256="2" * 64, raw=raw, status="held")
        session.add(item)
        session.flush()
        held = Held(inbox_id=item.id or 0, community_id=world.community_id,
                    sender="visitor@example.com", subject="Can I post?",
                    reason="only members may post to this community")
        session.add(held)
        session.flush()
        return held


def test_moderators_get_the_held_message_and_first_decision_wins(capp: App) -> None:
    world = make_world(capp)
    held = hold(capp, world)
    moderation = Moderation(capp, Notices(capp))
    assert moderation.sweep() == 2  # alice (owner) and claire (moderator)
    assert moderation.sweep() == 0  # once
    requests = queued(capp, "moderation")
    assert sorted(row.address for row, _ in requests) == ["alice@example.com",
                                                          "claire@example.com"]
    _row, request = requests[0]
    assert "Can I post?" in str(request["Subject"])
    assert "only members may post" in body(request)
    attached = [p for p in request.iter_attachments()]
    assert attached and attached[0].get_content_type() == "message/rfc822"
    reply_to = str(request["Reply-To"])
    assert reply_to.startswith("moderate+")

    def answer(address: str, text: str) -> str:
        person = world.people[address]
        token = make_token(capp.secret, "moderate", held.id or 0, person)
        route = Route("moderate", f"moderate+{token}@{DOMAIN}", token=token)
        return call(capp, "moderate", incoming(capp, route, sender=address,
                                               subject="Re: " + str(request["Subject"]),
                                               text=text)).reason

    assert "not the moderator" in answer_as(capp, world, held, "bob@example.com",
                                            "alice@example.com")
    assert answer("claire@example.com", "approve") == f"held #{held.id} approved by " \
                                                      "claire@example.com"
    assert answer("alice@example.com", "reject spam") == (
        f"held #{held.id} was already approved by claire@example.com")
    with Session(capp.engine) as session:
        decided = session.get(Held, held.id)
        item = session.get(InboxItem, held.inbox_id)
    assert decided is not None and decided.status == "approved"
    assert item is not None and (item.status, item.kind) == ("pending", "approved")
    told = [(row.address, str(m["Subject"])) for row, m in queued(capp, "moderation")
            if row.dedupe_key.startswith(("moderation-decided", "moderation-late"))]
    assert ("alice@example.com", "R&D: moderation done: Can I post?") in told
    assert sum(1 for address, _ in told if address == "alice@example.com") == 2


def answer_as(capp: App, world: World, held: Held, sender: str, token_owner: str) -> str:
    token = make_token(capp.secret, "moderate", held.id or 0, world.people[token_owner])
    route = Route("moderate", f"moderate+{token}@{DOMAIN}", token=token)
    return call(capp, "moderate", incoming(capp, route, sender=sender, text="approve")).reason


def test_rejecting_tells_the_sender_with_the_reason(capp: App) -> None:
    world = make_world(capp)
    held = hold(capp, world)
    token = make_token(capp.secret, "moderate", held.id or 0, world.people["alice@example.com"])
    route = Route("moderate", f"moderate+{token}@{DOMAIN}", token=token)
    outcome = call(capp, "moderate", incoming(capp, route, sender="alice@example.com",
                                              subject="reject", text="reject off topic here"))
    assert outcome.reason == f"held #{held.id} rejected by alice@example.com"
    [(row, notice)] = queued(capp, "notice")
    assert row.address == "visitor@example.com"
    assert "off topic here" in body(notice)
    assert notice["In-Reply-To"] == "<held-1@example.com>"
    with Session(capp.engine) as session:
        item = session.get(InboxItem, held.inbox_id)
        assert item is not None and item.status == "rejected"
    assert parse_decision("Re: [R&D] To moderate", "Approuver") == ("approve", "")
    assert parse_decision("reject", "") == ("reject", "")
    assert parse_decision("Re: something", "maybe later") is None


# --- mute, private replies, owners ----------------------------------------------------------

def test_replying_mute_mutes_the_conversation(capp: App) -> None:
    world = make_world(capp)
    _, conversation = store_post(capp, world, simple_post())
    bob = world.people["bob@example.com"]
    token = reply_token(capp.secret, bob, conversation)
    route = Route("reply", f"reply+{token}@{DOMAIN}", token=token)
    ordinary = call(capp, "mute", incoming(capp, route, sender="bob@example.com",
                                           subject="Re: Budget 2027", text="Looks good"))
    assert ordinary.status == "pass"
    other = call(capp, "mute", incoming(capp, route, sender="claire@example.com",
                                        subject="mute", text=""))
    assert other.status == "pass"
    muted = call(capp, "mute", incoming(capp, route, sender="bob@example.com",
                                        subject="Re: Budget 2027", text="mute"))
    assert muted.status == "done"
    with Session(capp.engine) as session:
        assert session.get(Mute, (bob, conversation)) is not None
    # The next post in that conversation skips bob.
    store_post(capp, world, simple_post(message_id="budget-2@example.com"),
               conversation_id=conversation)
    with Session(capp.engine) as session:
        rows = session.exec(select(Delivery).where(Delivery.kind == "post")).all()
    assert sum(1 for d in rows if d.address == "bob@example.com") == 1


def test_private_reply_goes_to_the_author_only(capp: App) -> None:
    world = make_world(capp)
    message_pk, _ = store_post(capp, world, simple_post())
    bob = world.people["bob@example.com"]
    token = make_token(capp.secret, "private", bob, message_pk)
    route = Route("private", f"private+{token}@{DOMAIN}", token=token)
    raw = simple_post(sender="Bob Durand <bob@example.com>", subject="Re: Budget 2027",
                      message_id="private-1@example.com", body="Just between us.\n")
    outcome = call(capp, "private", incoming(capp, route, sender="bob@example.com", raw=raw))
    assert outcome.status == "done"
    [(row, forwarded)] = queued(capp, "private")
    assert row.address == "alice@example.com"
    assert forwarded["From"] == "Bob Durand <bob@example.com>"
    assert forwarded["Resent-To"] == "alice@example.com"
    assert forwarded["X-Causerie-Loop"] == "Test Causerie"
    assert row.raw is not None and row.raw.endswith(raw)  # the original bytes, untouched
    with Session(capp.engine) as session:
        posts = session.exec(select(Delivery).where(Delivery.kind == "post")).all()
    assert len(posts) == 3  # nothing posted


def test_owner_address_forwards_to_owners(capp: App) -> None:
    make_world(capp)
    route = Route("owner", f"rd+owner@{DOMAIN}", slug="rd")
    outcome = call(capp, "owner", incoming(capp, route, sender="visitor@example.com",
                                           raw=simple_post()))
    assert outcome.reason == "forwarded to 1 owner(s) of rd"
    assert [row.address for row, _ in queued(capp, "owner")] == ["alice@example.com"]


# --- notices --------------------------------------------------------------------------------

def test_notices_once_per_address_reason_and_day_in_the_senders_language(capp: App) -> None:
    make_world(capp)
    route = Route("post", f"rd@{DOMAIN}", slug="rd")
    handlers = build_handlers(capp)
    mail = incoming(capp, route, sender="visitor@example.com", subject="Bonjour",
                    language="fr")
    with capp.session() as session:
        handlers.notify(session, mail, "not_member", {"community": "rd"})
        handlers.notify(session, mail, "not_member", {"community": "rd"})
        handlers.notify(session, mail, "held_moderated", {"community": "rd",
                                                          "reason": "every post is moderated"})
    notices = queued(capp, "notice")
    assert [row.dedupe_key for row, _ in notices] == [
        "notice:visitor@example.com:not_member:2030-05-06",
        "notice:visitor@example.com:held_moderated:2030-05-06"]
    _, first = notices[0]
    assert str(first["Subject"]) == "Votre message n'a pas été publié : Bonjour"
    assert "rd+subscribe@lists.example.org" in body(first)
    assert first["Auto-Submitted"] == "auto-replied"
    assert first["In-Reply-To"] == f"<{mail.message_id}>"
    assert "every post is moderated" in body(notices[1][1])
    # Next day: one more.
    capp.clock.at = NOW + timedelta(days=1)  # type: ignore[attr-defined]
    with capp.session() as session:
        handlers.notify(session, mail, "not_member", {"community": "rd"})
    assert len(queued(capp, "notice")) == 3


def test_no_notice_to_null_sender_or_our_own_addresses(capp: App) -> None:
    make_world(capp)
    route = Route("post", f"rd@{DOMAIN}", slug="rd")
    handlers = build_handlers(capp)
    with capp.session() as session:
        handlers.notify(session, incoming(capp, route, sender="x@example.com", envelope=""),
                        "not_member", {})
        handlers.notify(session, incoming(capp, route, sender=f"rd@{DOMAIN}"), "not_member",
                        {})
        handlers.notify(session, incoming(capp, route, sender="x@example.com",
                                          kind="auto_reply"), "not_member", {})
    assert queued(capp) == []


def test_queued_raw_mail_goes_out_with_verp(capp: App) -> None:
    """Notices, commands and moderation mail are sent as they are, with a VERP envelope."""
    import asyncio

    from outbound.dmarc import StaticTxtResolver
    from outbound.sender import Sender
    from tests.test_outbound_support import read_maildir

    make_world(capp)
    call(capp, "command", incoming(capp, command_route("rd", "help"), sender="bob@example.com"))
    asyncio.run(Sender(capp, resolver=StaticTxtResolver()).drain())
    [copy] = read_maildir(capp.settings.outbox_dir)
    assert copy["Return-Path"].startswith("<bounces+")
    assert copy["Subject"] == "Help for R&D"
    assert isinstance(EmailMessage(), EmailMessage)
