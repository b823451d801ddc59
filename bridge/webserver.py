"""A `serve` service running uvicorn on `[web]` host/port for an ASGI application built by
a function passed in (so `bridge` serves the web view without this module knowing which
packages make it up: `bridge.webwiring.web_app` composes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from bridge.app import App

log = logging.getLogger("causerie.web")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    name = "web"

    def __init__(self, app: App, build: Callable[[App], ASGIApp], host: str | None = None,
                 port: int | None = None) -> None:
        self.app = app
        self.host = host or app.settings.web.host
        self.port = port or app.settings.web.port
        self.asgi = build(app)
        self.server: _Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(self.asgi, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", proxy_headers=False)
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
