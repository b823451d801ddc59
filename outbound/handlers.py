"""`build_handlers(app)`: outbound's side of the processor's `bridge.events.Handlers`.

| route | handler | what it does |
|---|---|---|
| `SLUG+subscribe/unsubscribe/help@` | `Commands.handle` | commands by email (commands.py) |
| `SLUG+owner@` | `Forwarder.owner` | forwarded to the owners |
| `bounces+TOKEN@` and DSNs | `BounceScores.handle` | bounce scores (bounces.py) |
| `moderate+TOKEN@` | `Moderation.handle` | approve / reject (moderation.py) |
| `private+TOKEN@` | `Forwarder.private` | forwarded to the author, not posted |
| `postmaster@` | `Forwarder.postmaster` | kept and logged |
| notices | `Notices.notify` | one notice per address, reason and day |
| `extra["mute"]` | `MuteHandler` | replies to `reply+TOKEN@`: see below |

`extra["mute"]` is for the processor to call on every reply to a `reply+TOKEN@` address
before posting it: it answers `Outcome("done", ...)` when the reply was "mute" (and the
conversation is now muted for the token's person), or `Outcome("pass", ...)` when it is an
ordinary reply, which the processor then posts as usual.

The same `Moderation` object's `sweep` must run periodically to send held messages to
moderators: `outbound_services(app)` returns the sender with that sweep attached.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlmodel import Session

from bridge.app import App
from bridge.events import Handler, Handlers, IncomingMail, Notifier, Outcome
from outbound.bounces import BounceScores
from outbound.commands import Commands
from outbound.moderation import Moderation
from outbound.mutes import MuteHandler
from outbound.notices import Notices
from outbound.private import Forwarder


def _keep(session: Session) -> None:
    """Keep what a handler wrote when its session is bound to the caller's connection.

    The processor gives handlers `Session(bind=connection)` on a connection inside a
    SAVEPOINT; such a session opens a savepoint of its own and rolls it back when it is
    closed without `commit()`, silently dropping the handler's rows. `commit()` on a
    session joined to an outer connection only releases that savepoint (or, outside a
    savepoint, is not propagated at all), so it is safe here and leaves the caller in
    charge of its transaction.
    """
    if isinstance(session.bind, Connection):
        session.commit()


def _handler(function: Handler) -> Handler:
    def call(session: Session, mail: IncomingMail) -> Outcome:
        outcome = function(session, mail)
        _keep(session)
        return outcome
    return call


def _notifier(function: Notifier) -> Notifier:
    def call(session: Session, mail: IncomingMail, reason: str,
             details: dict[str, str]) -> None:
        function(session, mail, reason, details)
        _keep(session)
    return call


def build_handlers(app: App) -> Handlers:
    notices = Notices(app)
    forwarder = Forwarder(app)
    return Handlers(
        command=_handler(Commands(app, notices).handle),
        owner=_handler(forwarder.owner),
        bounce=_handler(BounceScores(app, notices).handle),
        moderate=_handler(Moderation(app, notices).handle),
        private=_handler(forwarder.private),
        postmaster=_handler(forwarder.postmaster),
        notify=_notifier(notices.notify),
        extra={"mute": _handler(MuteHandler(app))},
    )
