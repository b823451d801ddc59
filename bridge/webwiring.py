"""Where the web view meets the other packages: the archive's pages (archive.web) and the
one-click unsubscribe and mute routes (outbound.unsubscribe) in one application.

Only `bridge` composes `archive` and `outbound` (DESIGN.md); this is that composition for
the web, used by `serve`.
"""

from __future__ import annotations

from functools import partial

from starlette.applications import Starlette

from bridge.app import App
from bridge.webserver import WebServer


def web_app(app: App) -> Starlette:
    """The ASGI application `serve` runs on `[web]` host/port."""
    from archive.people import rank_people
    from archive.web import build_asgi
    from outbound.unsubscribe import routes as unsubscribe_routes

    return build_asgi(app, extra_routes=list(unsubscribe_routes(app)),
                      rank_people=partial(rank_people,
                                          staff_domains=app.settings.instance.staff_domains))


def web_service(app: App, host: str | None = None, port: int | None = None) -> WebServer:
    """The `serve` service for the web view."""
    return WebServer(app, web_app, host=host, port=port)
