"""`causerie serve`: every part of the service as a task of one asyncio loop.

The parts are listed once, in `services()`. Each is an object with `start()` and `stop()`
coroutines; `run()` starts them in order, waits for SIGTERM/SIGINT (or for one part to
fail), and stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Protocol

from bridge.app import App

if TYPE_CHECKING:
    from inbound.store import InboxWriter

log = logging.getLogger("causerie.serve")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def services(app: App) -> list[Service]:
    """The parts `serve` runs, in start order."""
    from bridge import wiring
    from bridge.webwiring import web_service
    from inbound.imap import imap_services
    from inbound.processor import ProcessorService
    from inbound.smtp import ClientLimits, GatewayHandler, GatewayServer
    from inbound.store import InboxWriter
    from outbound.digest.service import DigestService
    from outbound.service import OutboundService

    settings = app.settings
    writer = InboxWriter(app.engine, app.blobs, settings.processor.inline_raw_limit, app.clock)
    limits = ClientLimits(settings.smtp.max_connections_per_client,
                          settings.smtp.max_messages_per_minute_per_client)
    router = app.router()
    hostname = settings.instance.primary_domain
    parts: list[Service] = [
        _Writer(writer),
        GatewayServer(GatewayHandler(router, writer, settings.smtp, limits, "smtp"),
                      settings.smtp, hostname, host=settings.smtp.host, port=settings.smtp.port),
    ]
    if settings.smtp.lmtp_host or settings.smtp.lmtp_socket:
        parts.append(GatewayServer(
            GatewayHandler(router, writer, settings.smtp, limits, "lmtp"), settings.smtp,
            hostname, host=settings.smtp.lmtp_host, port=settings.smtp.lmtp_port,
            unix_path=settings.smtp.lmtp_socket))
    parts.extend(imap_services(app, writer))
    parts.append(ProcessorService(wiring.processor(app), writer.arrived))
    parts.append(OutboundService(app))
    parts.append(DigestService(app, wiring.digest_functions(app)))
    parts.append(web_service(app))
    return parts


class _Writer:
    """The inbox writer's group-commit task, as a Service."""

    name = "inbox writer"

    def __init__(self, writer: InboxWriter) -> None:
        self.writer = writer

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()


async def run(app: App, parts: list[Service] | None = None,
              stop_event: asyncio.Event | None = None) -> None:
    app.check()
    parts = services(app) if parts is None else parts
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    try:
        for part in parts:
            await part.start()
            started.append(part)
            log.info("started %s", part.name)
        log.info("causerie is running (%s); stop with Ctrl-C or SIGTERM",
                 ", ".join(p.name for p in started) or "no network services")
        await stop.wait()
        log.info("stopping")
    finally:
        for part in reversed(started):
            try:
                await part.stop()
            except Exception:
                log.exception("while stopping %s", part.name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
