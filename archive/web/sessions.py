"""Sessions in a signed cookie, and the CSRF token derived from them.

The cookie holds a random session id and, once signed in, the person's id, signed with
the instance secret (itsdangerous, with a timestamp so old cookies expire). Nothing is
kept on the server: the session id is a nonce that is replaced at every sign-in and
sign-out (so a cookie planted before sign-in is worth nothing after it: no fixation), and
the CSRF token is an HMAC of that id, so it changes with it too.

Anonymous visitors get a cookie only when a page shows them a form (the sign-in form),
so reading the public archive sets no cookie at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "causerie_session"
MAX_AGE = 30 * 24 * 3600     # a signed-in session lasts 30 days


@dataclass
class SessionData:
    sid: str
    person_id: int | None = None
    fresh: bool = False      # not from the request's cookie: must be sent back
    used: bool = False       # its CSRF token was put in a page: must be kept

    @property
    def must_set(self) -> bool:
        return self.fresh and (self.used or self.person_id is not None)


def new_session(person_id: int | None = None) -> SessionData:
    return SessionData(secrets.token_urlsafe(18), person_id, fresh=True)


class SessionCodec:
    """Reads and writes session cookies, and derives and checks CSRF tokens."""

    def __init__(self, secret: bytes, secure: bool) -> None:
        self.secret = secret
        self.secure = secure
        self.serializer = URLSafeTimedSerializer(secret, salt="causerie-session")

    def read(self, cookie: str | None) -> SessionData:
        if not cookie:
            return new_session()
        try:
            data = self.serializer.loads(cookie, max_age=MAX_AGE)
        except BadSignature:
            return new_session()
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
            return new_session()
        person = data.get("pid")
        return SessionData(data["sid"], person if isinstance(person, int) else None)

    def dump(self, session: SessionData) -> str:
        return self.serializer.dumps({"sid": session.sid, "pid": session.person_id})

    def csrf(self, session: SessionData) -> str:
        session.used = True
        return hmac.new(self.secret, b"causerie-csrf:" + session.sid.encode(),
                        hashlib.sha256).hexdigest()

    def csrf_ok(self, session: SessionData, token: object) -> bool:
        if session.fresh or not isinstance(token, str) or not token:
            return False  # a session made for this request cannot have shown a form
        expected = hmac.new(self.secret, b"causerie-csrf:" + session.sid.encode(),
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, token)

    def cookie_arguments(self, session: SessionData) -> dict[str, object]:
        return {"key": COOKIE, "value": self.dump(session), "max_age": MAX_AGE, "path": "/",
                "httponly": True, "samesite": "lax", "secure": self.secure}
