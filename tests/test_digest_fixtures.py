"""Not tests: a small archive for the digest tests: three communities, five people, known dates.

`now` is Tuesday 2026-03-10 07:45 UTC. Alice (Europe/Paris, French, daily) is due at 07:30
Paris = 06:30 UTC: her period is 03-09 06:30 to 03-10 06:30 UTC. Bob (America/New_York,
English, daily) is due at 07:30 New York, after the 8 March change to summer time: his
period is 03-08 11:30 to 03-09 11:30 UTC. Carol (UTC, weekly, owner of sales) is due on
Monday 07:30: 03-02 07:30 to 03-09 07:30 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlmodel import Session

from bridge.app import App
from bridge.models import Address, Community, Conversation, Membership, Message, Person

NOW = datetime(2026, 3, 10, 7, 45, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@dataclass
class World:
    communities: dict[str, int] = field(default_factory=dict)
    people: dict[str, int] = field(default_factory=dict)
    conversations: dict[str, int] = field(default_factory=dict)


def person(session: Session, world: World, key: str, **values: object) -> int:
    row = Person(display_name=key.title(), **values)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    assert row.id is not None
    session.add(Address(email=f"{key}@example.com", person_id=row.id))
    world.people[key] = row.id
    return row.id


def member(session: Session, world: World, who: str, slug: str, mode: str,
           role: str = "member") -> None:
    session.add(Membership(community_id=world.communities[slug], person_id=world.people[who],
                           delivery_mode=mode, role=role))


def post(session: Session, world: World, slug: str, who: str, subject: str, when: datetime,
         key: str | None = None, reply_to: str | None = None, text: str = "") -> int:
    """A new conversation (`key`) or a reply in conversation `reply_to`."""
    community_id = world.communities[slug]
    author = world.people[who]
    if reply_to is None:
        conv = Conversation(community_id=community_id, subject=subject,
                            normalized_subject=subject.lower(), started_at=when,
                            last_activity=when, message_count=1, author_id=author)
        session.add(conv)
        session.flush()
        assert conv.id is not None
        world.conversations[key or subject] = conv.id
        parent = None
    else:
        conv = session.get(Conversation, world.conversations[reply_to])
        assert conv is not None and conv.id is not None
        conv.message_count += 1
        conv.last_activity = max(conv.last_activity, when)
        if conv.first_reply_at is None:
            conv.first_reply_at = when
        parent = session.execute(select(Message.id).where(
            Message.conversation_id == conv.id).order_by(Message.date)).scalars().first()
        session.add(conv)
    message = Message(community_id=community_id, conversation_id=conv.id,
                      message_id=f"m{len(world.conversations)}-{when.timestamp()}-{who}@test",
                      parent_id=parent,
                      author_id=author, from_address=f"{who}@example.com",
                      from_name=who.title(), date=when, received_at=when, subject=subject,
                      text=text or f"Words about {subject.lower()} from {who}.")
    session.add(message)
    session.flush()
    assert conv.id is not None
    return conv.id


def build(app: App) -> World:
    world = World()
    with app.session() as session:
        for slug, visibility, goals in (
                ("sales", "internal", {"answered_within_48h": 0.8,
                                       "new_conversations_per_week": 2}),
                ("rnd", "internal", {}), ("secret", "private", {})):
            row = Community(slug=slug, name=slug.upper() if slug == "rnd" else slug.title(),
                            visibility=visibility, goals=goals)
            session.add(row)
            session.flush()
            assert row.id is not None
            world.communities[slug] = row.id
        person(session, world, "alice", timezone="Europe/Paris", language="fr")
        person(session, world, "bob", timezone="America/New_York", language="en")
        person(session, world, "carol", timezone="UTC", language="en")
        person(session, world, "dave")
        person(session, world, "erin")
        member(session, world, "alice", "sales", "daily")
        member(session, world, "alice", "rnd", "daily")
        member(session, world, "bob", "sales", "daily")
        member(session, world, "carol", "sales", "weekly", role="owner")
        member(session, world, "carol", "rnd", "weekly")
        member(session, world, "dave", "secret", "each")
        member(session, world, "erin", "sales", "each")
        member(session, world, "erin", "rnd", "each")

        post(session, world, "sales", "erin", "Old thread", at(1, 9), key="old")
        post(session, world, "sales", "dave", "Re: Old thread", at(5, 10), reply_to="old")
        post(session, world, "sales", "alice", "Re: Old thread", at(9, 20), reply_to="old")
        post(session, world, "sales", "erin", "Help needed with invoices", at(8, 9), key="help")
        post(session, world, "sales", "erin", "Pricing question", at(9, 8), key="pricing")
        post(session, world, "rnd", "erin", "Prototype results", at(9, 12), key="proto")
        post(session, world, "rnd", "erin", "Weekly lab item", at(4, 15), key="lab")
        post(session, world, "secret", "dave", "Confidential plan", at(9, 10), key="secret")
        post(session, world, "sales", "erin", "Ancient history", at(1, 9, month=2),
             key="ancient")
        post(session, world, "sales", "erin", "Too late for today", at(10, 7), key="late")
    return world
