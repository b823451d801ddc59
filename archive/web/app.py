"""Routes, the per-request wrapper (session, viewer, CSRF), and the ASGI application.

Every page goes through `Web.endpoint`: it reads the session cookie, builds the `Viewer`
(who reads, what they may see), refuses a POST whose CSRF token is not the session's, runs
the handler in a worker thread, and sends the session cookie back when it changed. The
security headers (CSP without inline scripts, nosniff, frame and referrer policies) are
added to every response by `SecurityHeaders`, the mounted routes of other packages too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archive.web import metrics
from archive.web.auth import SignIn
from archive.web.metrics import Histogram
from archive.web.sessions import COOKIE, SessionCodec, new_session
from archive.web.viewer import Viewer, load_viewer
from archive.web.views import Pages, PeopleRanker
from bridge.app import App
from bridge.i18n import Catalogues
from templates import TEMPLATES_DIR

log = logging.getLogger("causerie.web")

CSP = ("default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'; img-src 'self'; "
       # Inline style attributes are kept in sanitised mail HTML (bleach's CSS allowlist):
       # styles only, never scripts.
       "style-src 'self' 'unsafe-inline'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}

Handler = Callable[[Request, Viewer, FormData | None], Response]


class SecurityHeaders:
    """Adds the security headers to every HTTP response (a response's own CSP wins)."""

    def __init__(self, asgi: ASGIApp) -> None:
        self.asgi = asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.asgi(scope, receive, sending)


class Web:
    """The web view: its pages, sign-in, and the per-process state (rate limits, the
    search latency histogram), owned by this object, not by the module."""

    def __init__(self, app: App, catalogue: Catalogues | None = None,
                 rank_people: PeopleRanker | None = None) -> None:
        self.app = app
        self.catalogue = catalogue or Catalogues(TEMPLATES_DIR, ("web",))
        self.codec = SessionCodec(app.secret,
                                  app.settings.instance.base_url.startswith("https://"))
        self.signin = SignIn(app, self.catalogue)
        self.search_latency = Histogram()
        self.pages = Pages(app, self.catalogue, self.signin, self.search_latency, rank_people)
        self.css = (TEMPLATES_DIR / "web" / "style.css").read_bytes()

    # -- the wrapper ------------------------------------------------------------------------
    def endpoint(self, handler: Handler, *, csrf: bool = True
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            form = await request.form() if request.method == "POST" else None
            try:
                viewer = await run_in_threadpool(
                    load_viewer, self.app, self.codec, request.cookies.get(COOKIE),
                    request.headers.get("accept-language", ""))
                if form is not None and csrf and not self.codec.csrf_ok(
                        viewer.session, form.get("csrf")):
                    response: Response = await run_in_threadpool(self.refused, viewer)
                else:
                    response = await run_in_threadpool(handler, request, viewer, form)
            finally:
                if form is not None:
                    await form.close()
            if viewer.session.must_set:
                response.set_cookie(**self.codec.cookie_arguments(viewer.session))  # type: ignore[arg-type]
            if "cache-control" not in response.headers:
                response.headers["cache-control"] = (
                    "private, no-cache" if viewer.signed_in or viewer.session.used
                    else "public, max-age=60")
            response.headers["vary"] = "Cookie, Accept-Language"
            return response
        return run

    def refused(self, v: Viewer) -> Response:
        return self.pages.page(v, "error.html", 403, title=self.pages._("Refused", v),
                               message=self.pages._(
                                   "This form has expired or did not come from this site. "
                                   "Go back, reload the page and try again.", v))

    # -- sign-in ----------------------------------------------------------------------------
    def signin_form(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        if form is None:
            return self.pages.page(v, "signin.html", address="")
        address = str(form.get("address", "")).strip()
        if "@" not in address:
            return self.pages.page(v, "signin.html", 400, address=address,
                                   error=self.pages._("Please type your email address.", v))
        ip = request.client.host if request.client else ""
        outcome = self.signin.request(address, ip, v.language)
        if outcome.outcome == "limited":
            return self.pages.page(v, "signin.html", 429, address=address,
                                   error=self.pages._("Too many sign-in links were asked "
                                                      "for. Try again in an hour.", v))
        return self.pages.page(v, "signin_sent.html", address=address)

    def signin_link(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        token = request.path_params["token"]
        if form is None:
            if not self.signin.peek(token):
                return self._link_dead(v)
            return self.pages.page(v, "signin_confirm.html", token=token)
        person_id = self.signin.redeem(token)
        if person_id is None:
            return self._link_dead(v)
        v.session = new_session(person_id)   # a new session id: no fixation
        log.info("person #%s signed in", person_id)
        return RedirectResponse("/", 303)

    def _link_dead(self, v: Viewer) -> Response:
        return self.pages.page(v, "error.html", 410, title=self.pages._(
            "This sign-in link cannot be used", v), message=self.pages._(
            "It has expired or was used already. Ask for a new one.", v), signin=True)

    def signout(self, request: Request, v: Viewer, form: FormData | None) -> Response:
        v.session = new_session()
        v.session.used = True   # replace the signed-in cookie with an anonymous one
        return RedirectResponse("/", 303)

    # -- operations -------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        def check() -> bool:
            try:
                with self.app.reader.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return True
            except Exception:
                log.exception("health check failed")
                return False
        ok = await run_in_threadpool(check)
        return PlainTextResponse("ok\n" if ok else "database unavailable\n",
                                 status_code=200 if ok else 503,
                                 headers={"cache-control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(metrics.render, self.app.reader, self.search_latency)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4",
                                 headers={"cache-control": "no-store"})

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css",
                        headers={"cache-control": "public, max-age=3600"})

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204, headers={"cache-control": "public, max-age=86400"})

    def routes(self) -> list[BaseRoute]:
        e, p = self.endpoint, self.pages
        get, both = ["GET", "HEAD"], ["GET", "HEAD", "POST"]
        return [
            Route("/", e(p.home), methods=get, name="home"),
            Route("/c/{slug}", e(p.community), methods=get, name="community"),
            Route("/c/{slug}/atom", e(p.feed), methods=get, name="feed"),
            Route("/c/{slug}/mbox", e(p.community_mbox), methods=get, name="community_mbox"),
            Route("/t/{id:int}", e(p.conversation), methods=get, name="conversation"),
            Route("/t/{id:int}/mbox", e(p.conversation_mbox), methods=get,
                  name="conversation_mbox"),
            Route("/m/{mid:path}/raw", e(p.raw), methods=get, name="raw"),
            Route("/m/{mid:path}", e(p.permalink), methods=get, name="permalink"),
            Route("/a/{id:int}/{name}", e(p.attachment), methods=get, name="attachment"),
            Route("/search", e(p.search), methods=get, name="search"),
            Route("/people", e(p.people), methods=get, name="people"),
            Route("/p/{id:int}", e(p.person), methods=get, name="person"),
            Route("/settings", e(p.settings), methods=both, name="settings"),
            Route("/settings/leave/{id:int}", e(p.leave), methods=["POST"], name="leave"),
            Route("/signin", e(self.signin_form), methods=both, name="signin"),
            Route("/signin/{token}", e(self.signin_link), methods=both, name="signin_link"),
            Route("/signout", e(self.signout), methods=["POST"], name="signout"),
            Route("/healthz", self.healthz, methods=get, name="healthz"),
            Route("/metrics", self.metrics, methods=get, name="metrics"),
            Route("/style.css", self.stylesheet, methods=get, name="style"),
            Route("/favicon.ico", self.favicon, methods=get, name="favicon"),
        ]


def routes(app: App, rank_people: PeopleRanker | None = None) -> list[BaseRoute]:
    """The web view's routes."""
    return Web(app, rank_people=rank_people).routes()


def build_asgi(app: App, extra_routes: list[BaseRoute] | None = None,
               rank_people: PeopleRanker | None = None, **options: Any) -> Starlette:
    """The whole web application: `extra_routes` (e.g. outbound's one-click unsubscribe)
    first, so their paths win, then the web view; security headers on everything."""
    web = Web(app, rank_people=rank_people)
    asgi = Starlette(routes=[*(extra_routes or []), *web.routes()], **options)
    asgi.add_middleware(SecurityHeaders)
    asgi.state.web = web
    return asgi
