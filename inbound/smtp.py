"""The SMTP and LMTP gateway (aiosmtpd): check recipients, store, answer.

The handler only stores and answers (STYLE.md): RCPT looks the address up and refuses at
once with a precise code; DATA makes the raw bytes durable through the `InboxWriter` and
only then answers 250; an internal error is a temporary 451, never a 500. LMTP answers
one status per recipient.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from bridge.addresses import AddressRouter, NotOurDomain, UnknownAddress
from bridge.settings import SmtpSettings
from inbound.store import Envelope as InboxEnvelope
from inbound.store import InboxWriter

log = logging.getLogger("causerie.inbound.smtp")


@dataclass
class ClientLimits:
    """Per-client (IP address) connection count and message rate, shared by one server."""

    max_connections: int
    max_messages_per_minute: int
    clock: Callable[[], float] = time.monotonic
    connections: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def connect(self, ip: str) -> bool:
        self.connections[ip] += 1
        return self.connections[ip] <= self.max_connections

    def disconnect(self, ip: str) -> None:
        self.connections[ip] -= 1
        if self.connections[ip] <= 0:
            del self.connections[ip]

    def allow_message(self, ip: str) -> bool:
        now = self.clock()
        window = self.recent[ip]
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.max_messages_per_minute:
            return False
        window.append(now)
        return True


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "local"


class GatewayHandler:
    """aiosmtpd handler hooks shared by the SMTP and the LMTP server."""

    def __init__(self, router: AddressRouter, writer: InboxWriter, settings: SmtpSettings,
                 limits: ClientLimits, source: str = "smtp") -> None:
        self.router = router
        self.writer = writer
        self.settings = settings
        self.limits = limits
        self.source = source

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self.limits.allow_message(_peer_ip(session)):
            return ("451 4.7.1 Too many messages from your address in the last minute; "
                    "try again later")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return (f"452 4.5.3 Too many recipients (at most "
                    f"{self.settings.max_recipients} per message)")
        try:
            if self.router.needs_lookup(address):
                await asyncio.to_thread(self.router.route, address)
            else:
                self.router.route(address)
        except NotOurDomain:
            return f"550 5.7.1 <{address}>: relaying denied, this domain is not served here"
        except UnknownAddress as exc:
            return f"550 5.1.1 <{address}>: {exc.reason}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        inbox_envelope = InboxEnvelope(
            mail_from=envelope.mail_from or "", rcpt_to=list(envelope.rcpt_tos),
            source=self.source, peer=_peer_ip(session), helo=session.host_name or "")
        try:
            inbox_id = await self.writer.accept(raw, inbox_envelope)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                status = "452 4.3.1 Insufficient system storage; try again later"
            else:
                status = "451 4.3.0 Could not store the message; try again later"
            log.error("refused a message from %s: %s", inbox_envelope.peer, exc)
            return self._each(envelope, status)
        except Exception as exc:  # the database is down, locked, ...: the sender retries
            log.error("refused a message from %s: %s", inbox_envelope.peer, exc)
            return self._each(envelope,
                              "451 4.3.0 Could not store the message; try again later")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("accepted #%d from %s for %s (%d bytes)", inbox_id, envelope.mail_from,
                      ", ".join(envelope.rcpt_tos), len(raw))
        return self._each(envelope, f"250 2.0.0 Queued as #{inbox_id}")

    def _each(self, envelope: Envelope, status: str) -> str:
        """LMTP answers once per recipient (RFC 2033); SMTP once."""
        if self.source != "lmtp":
            return status
        return "\r\n".join(status for _ in envelope.rcpt_tos)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Temporary server error; try again later"


class _Limited:
    """Connection limits and RFC 3463 codes on aiosmtpd's own size refusals."""

    # RFC 5321 allows 1,000 octets a line, but real mail (HTML newsletters, broken clients)
    # has longer lines and MTAs accept them: be as tolerant as Postfix.
    line_length_limit = 64 * 1024
    limits: ClientLimits
    max_size: int
    _ip: str = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        if not self.limits.connect(self._ip):
            transport.write(b"421 4.7.0 Too many connections from your address; "  # type: ignore[attr-defined]
                            b"try again later\r\n")
            transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self.limits.disconnect(self._ip)
        super().connection_lost(error)  # type: ignore[misc]

    async def push(self, status: Any) -> None:
        text = status if isinstance(status, str) else status.decode("ascii", "replace")
        if text.startswith("552 Error"):
            text = (f"552 5.3.4 Message too big for system (at most {self.max_size} "
                    f"bytes)")
        await super().push(text)  # type: ignore[misc]


class LimitedSMTP(_Limited, SMTP):
    pass


class LimitedLMTP(_Limited, LMTP):
    pass


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert or not settings.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


class GatewayServer:
    """A Service for `serve`: one SMTP or LMTP listener (TCP, or a Unix socket for LMTP)."""

    def __init__(self, handler: GatewayHandler, settings: SmtpSettings, hostname: str, *,
                 host: str = "", port: int = 0, unix_path: Path | None = None) -> None:
        self.handler = handler
        self.settings = settings
        self.hostname = hostname
        self.host, self.port, self.unix_path = host, port, unix_path
        self.name = f"{handler.source} on " + (str(unix_path) if unix_path else f"{host}:{port}")
        self._server: asyncio.base_events.Server | None = None

    def _protocol(self) -> SMTP:
        cls = LimitedLMTP if self.handler.source == "lmtp" else LimitedSMTP
        context = tls_context(self.settings)
        server = cls(self.handler, hostname=self.hostname, ident="Causerie ESMTP",
                     data_size_limit=self.settings.max_message_size, enable_SMTPUTF8=True,
                     decode_data=False, tls_context=context, require_starttls=False,
                     timeout=300)
        server.limits = self.handler.limits
        server.max_size = self.settings.max_message_size
        # A message with bare LF line ends is one long "line" to aiosmtpd: allow lines as
        # long as a whole message (memory is bounded by the size limit anyway).
        server.line_length_limit = max(server.line_length_limit,
                                       self.settings.max_message_size + 1024)
        return server

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)
            self._server = await loop.create_unix_server(self._protocol, str(self.unix_path))
        else:
            self._server = await loop.create_server(self._protocol, self.host, self.port,
                                                    reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
