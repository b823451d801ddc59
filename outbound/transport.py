"""How composed copies leave: an SMTP relay (aiosmtplib) or the dev Maildir (maildir.py).

Both implement `Transport`: `open()`, `send_many(items) -> results` and `close()`; the
sender opens one per batch, so a batch of deliveries shares one relay connection. A
transport never raises for a refused message: each item gets a `Result` saying sent,
temporary failure (4xx, connection trouble) or permanent failure (5xx), with the reply
code and its enhanced status. When the connection drops, the item in flight and every
later item of the batch are temporary failures, and `down` says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from bridge.settings import OutboundSettings

log = logging.getLogger("causerie.delivery")

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    sender: str      # envelope MAIL FROM (VERP)
    recipient: str
    data: bytes


@dataclass(frozen=True)
class Result:
    delivery_id: int
    outcome: str     # sent, temporary, permanent, cancelled
    code: int = 0
    status: str = ""  # enhanced status code ("5.1.1"), "" when the reply had none
    message: str = ""

    @classmethod
    def sent(cls, delivery_id: int) -> Result:
        return cls(delivery_id, "sent", 250)

    @classmethod
    def temporary(cls, delivery_id: int, message: str, code: int = 0,
                  status: str = "") -> Result:
        return cls(delivery_id, "temporary", code, status, message)

    @classmethod
    def from_reply(cls, delivery_id: int, code: int, message: str) -> Result:
        match = _ENHANCED.search(message)
        status = match.group(1) if match else f"{str(code)[:1]}.0.0"
        outcome = "permanent" if 500 <= code < 600 else "temporary"
        return cls(delivery_id, outcome, code, status, message.strip()[:500])


class Transport(Protocol):
    name: str
    down: str

    async def open(self) -> None: ...

    async def send_many(self, items: list[Outgoing]) -> list[Result]: ...

    async def close(self) -> None: ...


class SmtpTransport:
    """One connection to the relay; STARTTLS / implicit TLS and AUTH as configured."""

    name = "smtp"

    def __init__(self, settings: OutboundSettings, timeout: float = 60.0,
                 environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.timeout = timeout
        self.environ = environ if environ is not None else dict(os.environ)
        self.smtp: aiosmtplib.SMTP | None = None
        self.down = ""
        self.eight_bit = False

    async def open(self) -> None:
        s = self.settings
        self.down = ""
        smtp = aiosmtplib.SMTP(hostname=s.relay_host, port=s.relay_port,
                               use_tls=s.relay_tls == "implicit",
                               start_tls=s.relay_tls == "starttls",
                               timeout=self.timeout)
        try:
            await smtp.connect()
            if s.relay_user:
                password = self.environ.get(s.relay_password_env, "")
                await smtp.login(s.relay_user, password)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.down = f"relay {s.relay_host}:{s.relay_port}: {_describe(exc)}"
            with contextlib.suppress(Exception):
                smtp.close()
            return
        self.smtp = smtp
        self.eight_bit = smtp.supports_extension("8bitmime")

    async def _send(self, item: Outgoing) -> Result:
        smtp = self.smtp
        assert smtp is not None
        options = ["BODY=8BITMIME"] if self.eight_bit and not item.data.isascii() else []
        try:
            await smtp.mail(item.sender, options=options)
            await smtp.rcpt(item.recipient)
            await smtp.data(item.data)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code in (421,) or isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                raise
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()
            return Result.from_reply(item.delivery_id, exc.code, exc.message)
        return Result.sent(item.delivery_id)

    async def send_many(self, items: list[Outgoing]) -> list[Result]:
        results: list[Result] = []
        for item in items:
            if self.down or self.smtp is None:
                results.append(Result.temporary(item.delivery_id, self.down or "not connected"))
                continue
            try:
                results.append(await self._send(item))
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                self.down = f"relay {self.settings.relay_host}: {_describe(exc)}"
                code = getattr(exc, "code", 0) or 0
                results.append(Result.temporary(item.delivery_id, self.down, code))
        return results

    async def close(self) -> None:
        if self.smtp is not None:
            try:
                if not self.down:
                    await self.smtp.quit()
                else:
                    self.smtp.close()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self.smtp.close()
            self.smtp = None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


TransportFactory = Callable[[], Transport]
