"""Muting a conversation: by replying "mute" to a delivered copy, or by the footer's link.

The inbound processor handles replies to `reply+TOKEN@`; before posting one it calls
`Handlers.extra["mute"]` (built by `outbound.handlers`). That handler answers
`Outcome("done", ...)` when the reply was a mute request and the conversation is now
muted for the token's person, or `Outcome("pass", ...)` when it is an ordinary reply that
the processor should go on posting. `is_mute_request` and `mute` are plain functions the
processor or the web view may also call directly.
"""

from __future__ import annotations

import re

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from bridge.app import App
from bridge.clock import utcnow
from bridge.events import IncomingMail, Outcome
from bridge.models import Mute
from bridge.tokens import read_token
from outbound.notices import person_for

_mute = Mute.__table__  # type: ignore[attr-defined]

MUTE_WORDS = frozenset({"mute", "mute this conversation", "mute conversation", "mute thread",
                        "muet", "sourdine", "en sourdine", "mettre en sourdine", "silence"})
_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|tr|aw|réf|ref)\s*:\s*|\[[^\]]*\]\s*)*", re.I)


def _normal(text: str) -> str:
    return re.sub(r"[\s.!]+", " ", _PREFIX.sub("", text or "")).strip().lower()


def is_mute_request(text: str, subject: str) -> bool:
    """True when the new text is only a mute word, or empty under a "mute" subject."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if lines:
        return len(lines) <= 2 and _normal(lines[0]) in MUTE_WORDS
    return _normal(subject) in MUTE_WORDS


def mute(session: Session, person_id: int, conversation_id: int) -> bool:
    """Mute `conversation_id` for `person_id`; False when it was muted already."""
    values = {"person_id": person_id, "conversation_id": conversation_id,
              "created_at": utcnow()}
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(_mute).values(**values).on_conflict_do_nothing(
        index_elements=["person_id", "conversation_id"])
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def unmute(session: Session, person_id: int, conversation_id: int) -> None:
    session.execute(_mute.delete().where(_mute.c.person_id == person_id,
                                         _mute.c.conversation_id == conversation_id))


class MuteHandler:
    """`Handlers.extra["mute"]`: "done" when it muted, "pass" for an ordinary reply."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, session: Session, mail: IncomingMail) -> Outcome:
        if mail.route.kind != "reply" or not is_mute_request(mail.text, mail.subject):
            return Outcome("pass", "not a mute request")
        data = read_token(self.app.secret, "reply", mail.route.token)
        if data is None:
            return Outcome("pass", "not a valid reply token")
        sender = person_for(session, mail.sender)
        if sender is None or sender.id != data.first:
            return Outcome("pass", "mute request from another person than the token's")
        mute(session, data.first, data.second)
        return Outcome("done", f"conversation {data.second} muted for person {data.first}")
