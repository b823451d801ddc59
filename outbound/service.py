"""The one entry outbound adds to `serve`: the sender (with the moderation sweep) and,
until the archive's web view serves them, the one-click unsubscribe routes."""

from __future__ import annotations

from bridge.app import App
from outbound.moderation import Moderation
from outbound.notices import Notices
from outbound.sender import Sender
from outbound.webservice import WebService


class OutboundService:
    name = "outbound"

    def __init__(self, app: App, web: bool = True) -> None:
        self.moderation = Moderation(app, Notices(app))
        self.sender = Sender(app, sweeps=[self.moderation.sweep])
        self.web = WebService(app) if web else None

    async def start(self) -> None:
        if self.web is not None:
            await self.web.start()
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
        if self.web is not None:
            await self.web.stop()
