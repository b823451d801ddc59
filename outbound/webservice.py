"""A `serve` service running uvicorn on `[web]` host/port with outbound's routes.

Until the archive's web view exists, this serves the one-click unsubscribe and mute
routes (outbound.unsubscribe.routes); the web view will mount those routes in its own
application and take over the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from bridge.app import App
from outbound.unsubscribe import routes

log = logging.getLogger("causerie.web")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebService:
    name = "web"

    def __init__(self, app: App, extra_routes: list[BaseRoute] | None = None,
                 host: str | None = None, port: int | None = None) -> None:
        self.app = app
        self.host = host or app.settings.web.host
        self.port = port or app.settings.web.port
        self.asgi = Starlette(routes=[*routes(app), *(extra_routes or [])])
        self.server: _Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(self.asgi, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off")
        self.server = _Server(config)
        self.task = asyncio.create_task(self.server.serve(), name="causerie-web")
        while not self.server.started:
            if self.task.done():
                with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                    await self.task
                raise RuntimeError(f"the web server could not listen on {self.host}:"
                                   f"{self.port} (see [web] host/port)")
            await asyncio.sleep(0.02)
        log.info("web view on http://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            await self.task
            self.task = None
