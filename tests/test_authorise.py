"""The authorise step (inbound.authorise): posting policies open / members / moderated,
members and non-members, staff and guests (addresses outside `staff_domains`), and the
checks before the policy; then the same decisions reached through the processor, with the
community's own settings and the sender looked up in the database."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from bridge import wiring
from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import Community, Held, InboxItem, Message, Person
from bridge.settings import Settings
from inbound.authorise import ACCEPT, Decision, authorise
from inbound.people import MemberInfo, Sender, find_sender, is_staff_address
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN, STAFF_DOMAIN, write_settings

STAFF = Sender(1, f"alice@{STAFF_DOMAIN}", "staff", "")
GUEST = Sender(2, "carol@customer.example", "guest", "")
MEMBER = MemberInfo("member", "each")
OWNER = MemberInfo("owner", "each")
MODERATOR = MemberInfo("moderator", "each")
READONLY = MemberInfo("readonly", "each")


def decide(policy: str, sender: Sender = STAFF, member: MemberInfo | None = MEMBER, *,
           admits_guests: bool = False, verdict_kind: str = "post", dmarc: str = "none",
           external: tuple[str, ...] = (), visibility: str = "internal") -> Decision:
    return authorise(policy=policy, admits_guests=admits_guests, sender=sender, member=member,
                     verdict_kind=verdict_kind, dmarc=dmarc, external=external,
                     visibility=visibility)


# --- posting policies -----------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "member", "action", "code"), [
    ("open", MEMBER, "accept", ""),
    ("open", None, "accept", ""),
    ("members", MEMBER, "accept", ""),
    ("members", MODERATOR, "accept", ""),
    ("members", OWNER, "accept", ""),
    ("members", None, "hold", "not_member"),
    ("moderated", MEMBER, "hold", "held_moderated"),
    ("moderated", None, "hold", "held_moderated"),
])
def test_posting_policy_for_staff(policy: str, member: MemberInfo | None, action: str,
                                  code: str) -> None:
    decision = decide(policy, STAFF, member)
    assert (decision.action, decision.code) == (action, code)
    assert decision.reason or action == "accept"


def test_accept_has_no_reason_and_no_notice() -> None:
    assert decide("open") == ACCEPT == Decision("accept", "", "")


def test_a_held_non_member_is_told_why() -> None:
    decision = decide("members", STAFF, None)
    assert decision == Decision("hold", "only members may post to this community",
                                "not_member")


@pytest.mark.parametrize("policy", ["open", "members", "moderated"])
def test_read_only_members_are_held_whatever_the_policy(policy: str) -> None:
    assert decide(policy, STAFF, READONLY) == Decision(
        "hold", "read-only members may not post", "held_readonly")


# --- guests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["open", "members", "moderated"])
@pytest.mark.parametrize("member", [None, MEMBER, MODERATOR])
def test_guests_are_held_where_the_community_does_not_admit_them(
        policy: str, member: MemberInfo | None) -> None:
    decision = decide(policy, GUEST, member, admits_guests=False)
    assert (decision.action, decision.code) == ("hold", "guests_not_admitted")


@pytest.mark.parametrize(("policy", "member", "action", "code"), [
    ("open", None, "accept", ""),
    ("members", MEMBER, "accept", ""),
    ("members", None, "hold", "not_member"),
    ("moderated", MEMBER, "hold", "held_moderated"),
])
def test_guests_follow_the_policy_where_the_community_admits_them(
        policy: str, member: MemberInfo | None, action: str, code: str) -> None:
    decision = decide(policy, GUEST, member, admits_guests=True)
    assert (decision.action, decision.code) == (action, code)


def test_a_guest_who_owns_the_community_is_not_held_as_a_guest() -> None:
    assert decide("members", GUEST, OWNER, admits_guests=False) == ACCEPT


# --- the checks before the policy -----------------------------------------------------------

@pytest.mark.parametrize("member", [MEMBER, OWNER])
def test_upstream_spam_is_held_even_from_an_owner(member: MemberInfo) -> None:
    decision = decide("open", STAFF, member, verdict_kind="spam")
    assert (decision.action, decision.code) == ("hold", "held_spam")


def test_failed_dmarc_is_held_before_anything_else() -> None:
    decision = decide("open", GUEST, None, dmarc="fail")
    assert (decision.action, decision.code) == ("hold", "held_dmarc")
    assert decide("open", STAFF, MEMBER, dmarc="pass") == ACCEPT


def test_no_from_address_is_rejected() -> None:
    decision = decide("open", Sender(None, "", "guest", ""), None)
    assert (decision.action, decision.code) == ("reject", "")


@pytest.mark.parametrize(("admits_guests", "visibility", "action"), [
    (False, "internal", "hold"),
    (False, "private", "hold"),
    (False, "public", "accept"),
    (True, "internal", "accept"),
])
def test_a_reply_all_to_people_outside_the_company(admits_guests: bool, visibility: str,
                                                   action: str) -> None:
    external = ("carol@customer.example", "dave@customer.example", "erin@other.example",
                "frank@other.example")
    decision = decide("open", STAFF, MEMBER, admits_guests=admits_guests,
                      external=external, visibility=visibility)
    assert decision.action == action
    if action == "hold":
        assert decision.code == "confirm_external"
        assert "carol@customer.example, dave@customer.example, erin@other.example…" \
            in decision.reason
        assert "frank" not in decision.reason


# --- who is staff ---------------------------------------------------------------------------

@pytest.fixture
def plain_settings(tmp_path: Path) -> Settings:
    return Settings.load(write_settings(tmp_path, f"sqlite:///{tmp_path / 'unused.db'}"),
                         environ={})


@pytest.mark.parametrize(("address", "staff"), [
    (f"alice@{STAFF_DOMAIN}", True),
    (f"bob@eu.{STAFF_DOMAIN}", True),           # a subdomain of a staff domain
    (f"bob@EU.{STAFF_DOMAIN.upper()}", True),
    (f"eve@not{STAFF_DOMAIN}", False),           # merely ends with the same letters
    (f"eve@{STAFF_DOMAIN}.evil.example", False),
    ("carol@customer.example", False),
    (f"rd@{DOMAIN}", False),
])
def test_staff_are_the_addresses_of_staff_domains(plain_settings: Settings, address: str,
                                                  staff: bool) -> None:
    assert is_staff_address(plain_settings, address) is staff


def test_a_person_s_own_kind_overrides_the_domain(app: App) -> None:
    with app.session() as session:
        community = create_community(session, "rd", "R&D")
        add_member(session, community, "contractor@agency.example", name="Contractor")
        add_member(session, community, f"partner@{STAFF_DOMAIN}", name="Partner")
        for address, kind in (("contractor@agency.example", "staff"),
                              (f"partner@{STAFF_DOMAIN}", "guest")):
            person = session.exec(select(Person).where(
                col(Person.display_name) == address.split("@")[0].title())).one()
            person.kind = kind
            session.add(person)
    with app.engine.connect() as connection:
        assert find_sender(connection, app.settings, "contractor@agency.example").kind == \
            "staff"
        assert find_sender(connection, app.settings, f"partner@{STAFF_DOMAIN}").kind == "guest"
        unknown = find_sender(connection, app.settings, "someone@customer.example")
        assert (unknown.person_id, unknown.kind) == (None, "guest")
        newcomer = find_sender(connection, app.settings, f"newcomer@{STAFF_DOMAIN}")
        assert (newcomer.person_id, newcomer.kind) == (None, "staff")


# --- through the processor ------------------------------------------------------------------

ALICE = f"alice@{STAFF_DOMAIN}"           # staff, member of every community below
DAN = f"dan@{STAFF_DOMAIN}"               # staff, member of none
CAROL = "carol@customer.example"          # a guest, member of "rd" and "partners"
ERIN = "erin@customer.example"            # a guest, member of none


@pytest.fixture
def world(app: App) -> App:
    with app.session() as session:
        for slug, policy, guests in (("open", "open", False), ("partners", "open", True),
                                     ("rd", "members", False), ("board", "moderated", False),
                                     ("clients", "members", True)):
            community = create_community(session, slug, slug.title(), policy=policy,
                                         admits_guests=guests)
            add_member(session, community, ALICE, name="Alice")
            if slug in ("rd", "partners", "clients"):
                add_member(session, community, CAROL, name="Carol")
    return app


def post(app: App, sender: str, slug: str) -> tuple[str, str, str]:
    """Post one message from `sender` to `slug`: (inbox status, held code, reason)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"{slug}@{DOMAIN}"
    message["Subject"] = f"Hello {slug}"
    message["Message-ID"] = f"<{sender.split('@')[0]}.{slug}@example.net>"
    message["Date"] = "Wed, 25 Nov 2026 10:00:00 +0000"
    message.set_content("A few words.")
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    inbox_id = writer.accept_sync(message.as_bytes(), Envelope(mail_from=sender,
                                                               rcpt_to=[f"{slug}@{DOMAIN}"]))
    wiring.processor(app, fan_out=False, notify=False).run_until_idle()
    with Session(app.engine) as session:
        item = session.get(InboxItem, inbox_id)
        assert item is not None
        held = session.exec(select(Held).where(Held.inbox_id == inbox_id)).first()
        return item.status, held.code if held else "", item.reason


@pytest.mark.parametrize(("sender", "slug", "status", "code"), [
    (DAN, "open", "done", ""),                        # open: anyone of the company
    (ERIN, "open", "held", "guests_not_admitted"),    # ... but no guest there
    (ERIN, "partners", "done", ""),                   # open, and admits guests
    (ALICE, "rd", "done", ""),                        # members: a member
    (DAN, "rd", "held", "not_member"),                # ... a non-member is held
    (CAROL, "rd", "held", "guests_not_admitted"),     # ... a guest member, no guests here
    (CAROL, "clients", "done", ""),                   # members admitting guests: a guest member
    (ERIN, "clients", "held", "not_member"),          # ... a guest who is not a member
    (ALICE, "board", "held", "held_moderated"),       # moderated: even a member
    (f"bob@eu.{STAFF_DOMAIN}", "open", "done", ""),   # a staff subdomain is staff
])
def test_posting_policies_through_the_processor(world: App, sender: str, slug: str,
                                                status: str, code: str) -> None:
    got_status, got_code, reason = post(world, sender, slug)
    assert (got_status, got_code) == (status, code), reason
    with Session(world.engine) as session:
        archived = session.exec(select(Message)).all()
        community = session.exec(select(Community).where(Community.slug == slug)).one()
    assert [(m.from_address, m.community_id) for m in archived] == (
        [(sender, community.id)] if status == "done" else [])
