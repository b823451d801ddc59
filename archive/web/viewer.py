"""Who is reading: the session, the person, what they may see, their language and time zone.

Built once per request (`load_viewer`) and passed to every handler and template, so the
permission rule is decided in one place: `visible` holds the ids of the communities this
reader may read (public: anyone; internal: signed-in staff; private: members only, as
`archive.search.visible_communities` defines it), and every page, feed, attachment, raw
view and search checks against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, select

from archive.search import Reader, reader_for, visible_communities
from archive.web.sessions import SessionCodec, SessionData
from bridge.app import App
from bridge.directory import person_kind
from bridge.i18n import LANGUAGES, normalise_language
from bridge.models import Membership, Person

_ADDRESS = re.compile(r"([\w.+'-]+)@([\w-]+(?:\.[\w-]+)+)")


def obscure(text: str) -> str:
    """Addresses cut to their local part ("alice@…"), as archives show them to strangers."""
    return _ADDRESS.sub(r"\1@…", text)


def zone(name: str, default: str = "UTC") -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def accepted_language(header: str) -> str:
    """The first supported language of an Accept-Language header ("" when none is)."""
    weighted = []
    for index, part in enumerate(header.split(",")[:20]):
        code, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        weighted.append((-quality, index, code.strip()))
    for _, _, code in sorted(weighted):
        base = code.replace("-", "_").split("_")[0].lower()
        if base in LANGUAGES:
            return base
    return ""


@dataclass
class Viewer:
    session: SessionData
    codec: SessionCodec
    person: Person | None
    staff: bool
    reader: Reader
    visible: frozenset[int]
    roles: dict[int, str] = field(default_factory=dict)   # community id -> role
    language: str = "en"
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    @property
    def signed_in(self) -> bool:
        return self.person is not None

    @property
    def csrf(self) -> str:
        """The token forms carry (reading it keeps the session cookie)."""
        return self.codec.csrf(self.session)

    def member_of(self, community_id: int) -> bool:
        return community_id in self.roles

    def when(self, moment: datetime | None) -> str:
        if moment is None:
            return ""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")

    def iso(self, moment: datetime) -> str:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.isoformat()

    def text(self, value: str) -> str:
        """Text as this reader may see it: addresses obscured unless signed in."""
        return value if self.signed_in else obscure(value)

    def name(self, display: str, address: str) -> str:
        return display or self.text(address) or "?"


def load_viewer(app: App, codec: SessionCodec, cookie: str | None,
                accept_language: str) -> Viewer:
    session = codec.read(cookie)
    settings = app.settings.instance
    with Session(app.reader) as db:
        person = db.get(Person, session.person_id) if session.person_id else None
        if person is not None and person.forgotten_at is not None:
            person = None
        if person is None and session.person_id is not None:
            session = SessionData(session.sid, None, fresh=True)
        staff = person is not None and person_kind(db, app.settings, person) == "staff"
        connection = db.connection()
        reader = reader_for(connection, person.id if person else None, staff)
        visible = frozenset(visible_communities(connection, reader) or ())
        roles = {}
        if person is not None:
            roles = {m.community_id: m.role for m in db.exec(
                select(Membership).where(Membership.person_id == person.id)).all()}
    language = ""
    if person is not None and person.language in LANGUAGES:
        language = person.language
    language = language or accepted_language(accept_language) or normalise_language(
        settings.language)
    tz = zone(person.timezone if person else "", settings.timezone)
    return Viewer(session=session, codec=codec, person=person, staff=staff, reader=reader,
                  visible=visible, roles=roles, language=language, tz=tz)
