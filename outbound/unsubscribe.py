"""One-click unsubscribe (RFC 8058) and mute links: the web view's first routes.

`POST /u/{token}` removes the membership the token names, at once: no session, no
confirmation, no body needed (Gmail and Yahoo POST `List-Unsubscribe=One-Click` to it).
`GET /u/{token}` shows a small page with one button that makes that POST, so a mail
client or scanner that merely follows the link never unsubscribes anybody.
`GET/POST /mute/{token}` do the same for muting a conversation (the footer's link).

The token (bridge.tokens, kind "unsubscribe": person and community; kind "mute": person
and conversation) is the only credential. Both actions are idempotent: a second POST
answers the same page. `routes(app)` is independent of the rest of the web view, which
mounts it.
"""

from __future__ import annotations

from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bridge.app import App
from bridge.directory import audit
from bridge.i18n import Catalogues, catalogues, normalise_language
from bridge.models import Community, Conversation, Membership, Person
from bridge.tokens import read_token
from outbound.mutes import mute


def _language(request: Request, person: Person | None, default: str) -> str:
    if person is not None and person.language:
        return normalise_language(person.language, default)
    header = request.headers.get("accept-language", "")
    for part in header.split(","):
        code = normalise_language(part.split(";")[0].strip(), "")
        if code in ("en", "fr"):
            return code
    return normalise_language(default)


class _Pages:
    def __init__(self, app: App, catalogue: Catalogues) -> None:
        self.app = app
        self.catalogue = catalogue

    def page(self, request: Request, language: str, status: int, **values: object) -> Response:
        html = self.catalogue.render("email/web_action.html", language, **values)
        return HTMLResponse(html, status_code=status,
                            headers={"Cache-Control": "no-store",
                                     "Referrer-Policy": "no-referrer"})

    # -- unsubscribe -------------------------------------------------------------------------
    def _unsubscribe(self, token: str, apply: bool) -> tuple[int, str, str, Person | None]:
        """(status, state, community name, person); state: ask, done, gone, invalid."""
        data = read_token(self.app.secret, "unsubscribe", token)
        if data is None:
            return 404, "invalid", "", None
        with self.app.session() as session:
            person = session.get(Person, data.first)
            if data.second == 0 and person is not None:
                return self._stop_digests(session, person, apply)
            community = session.get(Community, data.second)
            if person is None or community is None:
                return 200, "gone", community.name if community else "", person
            membership = session.exec(select(Membership).where(
                Membership.community_id == community.id,
                Membership.person_id == person.id)).first()
            if membership is None:
                return 200, "gone", community.name, person
            if not apply:
                return 200, "ask", community.name, person
            session.delete(membership)
            audit(session, "member.remove", f"{community.slug}:person#{person.id}",
                  actor="one-click-unsubscribe")
            return 200, "done", community.name, person

    def _stop_digests(self, session: Session, person: Person, apply: bool
                      ) -> tuple[int, str, str, Person | None]:
        """Community 0 in a combined digest's token: stop every digest of this person (their
        daily and weekly memberships become web-only)."""
        memberships = session.exec(select(Membership).where(
            Membership.person_id == person.id,
            col(Membership.delivery_mode).in_(("daily", "weekly")))).all()
        if not memberships:
            return 200, "gone", "", person
        if not apply:
            return 200, "ask", "", person
        for membership in memberships:
            membership.delivery_mode = "none"
            session.add(membership)
        audit(session, "member.digests_off", f"person#{person.id}",
              actor="one-click-unsubscribe", memberships=len(memberships))
        return 200, "done", "", person

    async def unsubscribe(self, request: Request) -> Response:
        token = request.path_params["token"]
        apply = request.method == "POST"
        status, state, name, person = await run_in_threadpool(self._unsubscribe, token, apply)
        language = _language(request, person, self.app.settings.instance.language)
        return self.page(request, language, status, action="unsubscribe", state=state,
                         target=name, url=str(request.url.path))

    # -- mute --------------------------------------------------------------------------------
    def _mute(self, token: str, apply: bool) -> tuple[int, str, str, Person | None]:
        data = read_token(self.app.secret, "mute", token)
        if data is None:
            return 404, "invalid", "", None
        with self.app.session() as session:
            person = session.get(Person, data.first)
            conversation = session.get(Conversation, data.second)
            if person is None or conversation is None:
                return 200, "gone", "", person
            if not apply:
                return 200, "ask", conversation.subject, person
            mute(session, data.first, data.second)
            return 200, "done", conversation.subject, person

    async def mute(self, request: Request) -> Response:
        token = request.path_params["token"]
        apply = request.method == "POST"
        status, state, subject, person = await run_in_threadpool(self._mute, token, apply)
        language = _language(request, person, self.app.settings.instance.language)
        return self.page(request, language, status, action="mute", state=state,
                         target=subject, url=str(request.url.path))


def routes(app: App, catalogue: Catalogues | None = None) -> list[Route]:
    pages = _Pages(app, catalogue or catalogues(("email",)))
    return [
        Route("/u/{token}", pages.unsubscribe, methods=["GET", "POST"],
              name="unsubscribe"),
        Route("/mute/{token}", pages.mute, methods=["GET", "POST"], name="mute"),
    ]
