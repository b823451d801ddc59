"""One-click unsubscribe (RFC 8058) and mute links, against the running web service: the
URL is taken from a delivered copy's List-Unsubscribe header and POSTed to with httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from bridge.app import App
from bridge.models import AuditLog, Membership, Mute
from bridge.settings import Settings
from bridge.webwiring import web_service
from outbound.dmarc import StaticTxtResolver
from outbound.sender import Sender
from tests.conftest import free_port, write_settings
from tests.test_outbound_support import (
    by_recipient,
    make_world,
    read_maildir,
    simple_post,
    store_post,
)


@pytest.fixture
async def web(tmp_path: Path, db_url: str) -> AsyncIterator[tuple[App, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings.load(write_settings(tmp_path, db_url, f"""
[web]
host = "127.0.0.1"
port = {port}
"""), environ={"CAUSERIE_INSTANCE__BASE_URL": base})
    app = App(settings)
    service = web_service(app)
    await service.start()
    try:
        yield app, base
    finally:
        await service.stop()
        app.dispose()


async def deliver(app: App) -> dict:  # type: ignore[type-arg]
    world = make_world(app)
    store_post(app, world, simple_post())
    await Sender(app, resolver=StaticTxtResolver()).drain()
    return {"world": world, "copies": by_recipient(read_maildir(app.settings.outbox_dir))}


def members(app: App) -> set[int]:
    with Session(app.engine) as session:
        return {m.person_id for m in session.exec(select(Membership)).all()}


async def test_one_click_post_removes_the_member(web: tuple[App, str]) -> None:
    app, base = web
    state = await deliver(app)
    bob = state["world"].people["bob@example.com"]
    header = state["copies"]["bob@example.com"]["List-Unsubscribe"]
    url = next(part.strip(" <>") for part in header.split(",") if "http" in part)
    assert url.startswith(f"{base}/u/")
    async with httpx.AsyncClient() as client:
        # Following the link (a GET, as a link scanner would) only shows the button.
        page = await client.get(url)
        assert page.status_code == 200 and 'method="post"' in page.text
        assert bob in members(app)
        # One POST, no cookie, no confirmation: what Gmail and Yahoo send.
        response = await client.post(url, content="List-Unsubscribe=One-Click",
                                     headers={"Content-Type":
                                              "application/x-www-form-urlencoded"})
        assert response.status_code == 200
        assert "You are unsubscribed from R&amp;D." in response.text
        assert bob not in members(app)
        again = await client.post(url)  # idempotent
        assert again.status_code == 200 and "not a member" in again.text
        forged = await client.post(url[:-3] + "aaa")
        assert forged.status_code == 404
        french = await client.get(url, headers={"Accept-Language": "fr-FR,fr;q=0.9"})
        assert "Vous n'êtes pas (ou plus) membre" in french.text
    with Session(app.engine) as session:
        actions = [a.actor for a in session.exec(select(AuditLog)).all()
                   if a.action == "member.remove"]
    assert actions == ["one-click-unsubscribe"]
    assert len(members(app)) == 3


async def test_mute_link_mutes_the_conversation(web: tuple[App, str]) -> None:
    app, base = web
    state = await deliver(app)
    copy = state["copies"]["claire@example.com"]
    text = copy.get_payload(decode=True).decode("utf-8")
    url = next(word for word in text.split() if word.startswith(f"{base}/mute/"))
    async with httpx.AsyncClient() as client:
        page = await client.get(url)
        assert 'Mute the conversation "Budget 2027"?' in page.text
        with Session(app.engine) as session:
            assert session.exec(select(Mute)).all() == []
        done = await client.post(url)
        assert done.status_code == 200 and "is muted" in done.text
    with Session(app.engine) as session:
        [mute] = session.exec(select(Mute)).all()
    assert mute.person_id == state["world"].people["claire@example.com"]


async def test_combined_digest_unsubscribe_stops_every_digest(app) -> None:  # type: ignore[no-untyped-def]
    """A combined digest's List-Unsubscribe link (community 0) switches the person's daily
    and weekly memberships to web-only with one POST."""
    import httpx
    from starlette.applications import Starlette

    from bridge.directory import add_member, create_community, find_person
    from bridge.models import Membership
    from bridge.tokens import make_token
    from outbound.unsubscribe import routes

    with app.session() as session:
        for slug in ("rd", "sales"):
            community = create_community(session, slug, slug)
            add_member(session, community, "carol@example.com", delivery="weekly")
        person = find_person(session, "carol@example.com")
        assert person is not None
        person_id = person.id
    token = make_token(app.secret, "unsubscribe", person_id, 0)
    transport = httpx.ASGITransport(app=Starlette(routes=routes(app)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post(f"/u/{token}")).status_code == 200
    with app.session() as session:
        modes = [m.delivery_mode for m in session.exec(
            __import__("sqlmodel").select(Membership))]
    assert modes == ["none", "none"]
