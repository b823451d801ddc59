"""The web view (issue 8): the archive read in a browser, sign-in by one-time link, settings.

`routes(app)` lists the web view's routes; `build_asgi(app, extra_routes)` makes the whole
Starlette application (security headers included) around them and any routes another
package contributes (the one-click unsubscribe of `outbound`, mounted by `bridge`).
"""

from archive.web.app import build_asgi, routes

__all__ = ["build_asgi", "routes"]
