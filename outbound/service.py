"""The one entry outbound adds to `serve`: the sender, with the moderation sweep. (The
one-click unsubscribe and mute routes are served by the web view: bridge.webwiring.)"""

from __future__ import annotations

from bridge.app import App
from outbound.moderation import Moderation
from outbound.notices import Notices
from outbound.sender import Sender


class OutboundService:
    name = "outbound"

    def __init__(self, app: App) -> None:
        self.moderation = Moderation(app, Notices(app))
        self.sender = Sender(app, sweeps=[self.moderation.sweep])

    async def start(self) -> None:
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
