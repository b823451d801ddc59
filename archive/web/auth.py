"""Sign-in by a one-time link sent by email: no passwords.

- A link's token is 256 random bits; only its SHA-256 is stored (`LoginToken.token_hash`),
  so a copy of the database signs nobody in. It expires after `LINK_LIFETIME` and works
  once: using it is one conditional UPDATE (unused and unexpired), so two clicks racing
  each other cannot both win.
- Following the link (GET) shows a button; only the POST signs in. Mail scanners that
  fetch every link would otherwise spend the token before the person clicks.
- The mail goes through the normal delivery queue: a `Delivery` row (kind "signin") whose
  raw bytes are composed here from `web/signin_mail.txt`; the sender sends it as it sends
  notices (VERP, DKIM, or the dev Maildir).
- Requests are rate-limited per address (in the database, so it holds across instances
  and restarts) and per client IP and per typed address (in memory, per process). The
  answer is the same whether the address is known or not, so the form does not tell who
  has an account.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

from sqlalchemy import func, select, update
from sqlmodel import Session

from bridge.app import App
from bridge.directory import find_person, primary_address
from bridge.i18n import Catalogues, normalise_language
from bridge.models import Delivery, LoginToken, Person

LINK_LIFETIME = timedelta(minutes=30)
PER_ADDRESS_PER_HOUR = 5
PER_IP_PER_HOUR = 30

_token = LoginToken.__table__  # type: ignore[attr-defined]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class RateLimiter:
    """At most `limit` events per key in a sliding `window` (seconds); per process."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.events: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self.lock:
            if len(self.events) > 10_000:  # forget idle keys, so memory stays bounded
                for stale in [k for k, v in self.events.items()
                              if not v or v[-1] < now - self.window]:
                    del self.events[stale]
            seen = self.events.setdefault(key, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.limit:
                return False
            seen.append(now)
            return True


@dataclass(frozen=True)
class SignInRequest:
    outcome: str    # "sent" (or silently nothing, for unknown addresses), "limited"


class SignIn:
    """Issues and redeems sign-in links."""

    def __init__(self, app: App, catalogue: Catalogues) -> None:
        self.app = app
        self.catalogue = catalogue
        self.by_ip = RateLimiter(PER_IP_PER_HOUR, 3600)
        self.by_address = RateLimiter(PER_ADDRESS_PER_HOUR, 3600)

    def request(self, address: str, ip: str, language: str) -> SignInRequest:
        """Send a link to `address` when it belongs to someone (the caller answers the same
        way either way, except when rate-limited)."""
        address = address.strip().lower()[:320]
        if not self.by_ip.allow(f"ip:{ip}") or not self.by_address.allow(f"a:{address}"):
            return SignInRequest("limited")
        now = self.app.clock.now()
        with self.app.session() as session:
            person = find_person(session, address) if "@" in address else None
            if person is None or person.id is None or person.forgotten_at is not None:
                return SignInRequest("sent")
            recent = session.execute(select(func.count()).select_from(_token).where(
                _token.c.person_id == person.id,
                _token.c.created_at > now - timedelta(hours=1))).scalar_one()
            if recent >= PER_ADDRESS_PER_HOUR:
                return SignInRequest("limited")
            token = secrets.token_urlsafe(32)
            digest = token_hash(token)
            session.add(LoginToken(token_hash=digest, person_id=person.id,
                                   expires_at=now + LINK_LIFETIME, created_at=now))
            to = primary_address(session, person) or address
            language = normalise_language(person.language, language)
            raw = self.compose(person, to, token, language, now)
            session.add(Delivery(dedupe_key=f"signin:{digest}", kind="signin",
                                 person_id=person.id, address=to, raw=raw, status="pending",
                                 next_attempt_at=now, created_at=now))
        return SignInRequest("sent")

    def compose(self, person: Person, to: str, token: str, language: str,
                now: datetime) -> bytes:
        settings = self.app.settings.instance
        link = f"{settings.base_url.rstrip('/')}/signin/{token}"
        minutes = int(LINK_LIFETIME.total_seconds() // 60)
        body = self.catalogue.render("web/signin_mail.txt", language, link=link,
                                     name=person.display_name, minutes=minutes,
                                     instance=settings.name)
        subject = self.catalogue.gettext(language, "Your sign-in link for %(instance)s",
                                         instance=settings.name)
        mail = EmailMessage()
        mail["From"] = formataddr((settings.name, f"postmaster@{settings.primary_domain}"))
        mail["To"] = to
        mail["Subject"] = subject
        mail["Date"] = format_datetime(now)
        mail["Message-ID"] = make_msgid("signin", settings.primary_domain)
        mail["Auto-Submitted"] = "auto-generated"
        mail["X-Auto-Response-Suppress"] = "All"
        mail.set_content(body, charset="utf-8", cte="quoted-printable")
        mail["Content-Language"] = language
        return mail.as_bytes(policy=policy.SMTP)

    def peek(self, token: str) -> bool:
        """Whether a link is still usable (for the page the GET shows); spends nothing."""
        now = self.app.clock.now()
        with Session(self.app.reader) as session:
            row = session.execute(select(_token.c.id).where(
                _token.c.token_hash == token_hash(token), _token.c.used_at.is_(None),
                _token.c.expires_at > now)).first()
        return row is not None

    def redeem(self, token: str) -> int | None:
        """The person the link signs in, spending it; None when unknown, used or expired."""
        if not token or len(token) > 100:
            return None
        now = self.app.clock.now()
        digest = token_hash(token)
        with self.app.engine.begin() as connection:
            spent = connection.execute(update(_token).where(
                _token.c.token_hash == digest, _token.c.used_at.is_(None),
                _token.c.expires_at > now).values(used_at=now))
            if spent.rowcount != 1:
                return None
            return int(connection.execute(select(_token.c.person_id).where(
                _token.c.token_hash == digest)).scalar_one())
