"""Security of the web view: one-time sign-in links (hashed, expiring, single-use),
sessions rotated at sign-in, CSRF on every POST, rate limits on sign-in mail, and the
headers (CSP, nosniff, cookie flags) on every response."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select
from starlette.routing import Route

from archive.web.app import Web
from archive.web.sessions import COOKIE, SessionCodec
from bridge.app import App
from bridge.clock import FixedClock
from bridge.models import Attachment, Community, Delivery, LoginToken, Membership, Person
from bridge.tokens import make_token
from bridge.webwiring import web_app
from tests.test_web_world import client_for, csrf_of, last_signin_link, make_world, sign_in

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


async def ask_link(client, app: App, address: str):  # type: ignore[no-untyped-def]
    form = await client.get("/signin")
    return await client.post("/signin", data={"address": address, "csrf": csrf_of(form.text)})


async def test_a_link_works_once_and_only_its_hash_is_stored(app: App) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        await ask_link(client, app, "bob@example.com")
        link = last_signin_link(app, "bob@example.com")
        token = link.rsplit("/", 1)[1]
        with Session(app.engine) as session:
            [row] = session.exec(select(LoginToken)).all()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in row.token_hash
        page = await client.get(link)     # following the link spends nothing
        assert (await client.get(link)).status_code == 200
        first = await client.post(link, data={"csrf": csrf_of(page.text)})
        assert first.status_code == 303
        again = await client.get(link)
        assert again.status_code == 410
        second = await client.post(link, data={"csrf": csrf_of(
            (await client.get("/settings")).text)})
        assert second.status_code == 410


async def test_a_link_expires_after_thirty_minutes(app: App) -> None:
    app.clock = FixedClock(NOW)
    make_world(app)
    async with client_for(web_app(app)) as client:
        await ask_link(client, app, "bob@example.com")
        link = last_signin_link(app, "bob@example.com")
        page = await client.get(link)
        assert page.status_code == 200
        app.clock = FixedClock(NOW + timedelta(minutes=31))
        client.cookies.clear()
        late = await client.get(link)
        assert late.status_code == 410 and "expired" in late.text
        # Even with a valid form token, the POST is refused: the link is dead.
        form = await client.get("/signin")
        refused = await client.post(link, data={"csrf": csrf_of(form.text)})
        assert refused.status_code == 410
        assert (await client.get("/settings")).status_code == 303   # still anonymous


async def test_session_id_changes_at_sign_in_and_a_planted_cookie_is_worthless(
        app: App) -> None:
    make_world(app)
    codec = SessionCodec(app.secret, secure=True)
    asgi = web_app(app)
    async with client_for(asgi) as client:
        await client.get("/signin")
        before = client.cookies[COOKIE]
        await sign_in(client, app, "alice@example.com")
        after = client.cookies[COOKIE]
        assert codec.read(before).sid != codec.read(after).sid
        assert codec.read(after).person_id is not None
        assert (await client.get("/settings")).status_code == 200
    async with client_for(asgi) as attacker:   # the cookie fixed before sign-in
        attacker.cookies.set(COOKIE, before, domain="testserver")
        assert (await attacker.get("/settings")).status_code == 303
    async with client_for(asgi) as forger:     # a cookie not signed with the secret
        forged = SessionCodec(b"another secret", secure=True)
        forger.cookies.set(COOKIE, forged.dump(codec.read(after)), domain="testserver")
        assert (await forger.get("/settings")).status_code == 303


async def test_sign_out_ends_the_session(app: App) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        await sign_in(client, app, "alice@example.com")
        signed = client.cookies[COOKIE]
        page = await client.get("/settings")
        out = await client.post("/signout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and client.cookies[COOKIE] != signed
        assert (await client.get("/settings")).status_code == 303


async def test_every_post_refuses_a_missing_or_foreign_csrf_token(app: App) -> None:
    world = make_world(app)
    web = Web(app)
    posts = [r.path for r in web.routes()
             if isinstance(r, Route) and r.methods and "POST" in r.methods]
    assert set(posts) == {"/settings", "/settings/leave/{id:int}", "/signin",
                          "/signin/{token}", "/signout"}
    asgi = web_app(app)
    async with client_for(asgi) as other:
        await sign_in(other, app, "bob@example.com")
        foreign = csrf_of((await other.get("/settings")).text)
    async with client_for(asgi) as client:
        await sign_in(client, app, "alice@example.com")
        own = csrf_of((await client.get("/settings")).text)
        vault = world.communities["vault"]
        for path in ("/settings", f"/settings/leave/{vault}", "/signin", "/signin/x",
                     "/signout"):
            altered = own[:-1] + ("1" if own[-1] == "0" else "0")
            for data in ({}, {"csrf": ""}, {"csrf": foreign}, {"csrf": altered}):
                data = {**data, f"mode_{vault}": "none", "address": "alice@example.com"}
                response = await client.post(path, data=data)
                assert response.status_code == 403, (path, data)
        with Session(app.engine) as session:
            [membership] = session.exec(select(Membership).where(
                Membership.community_id == vault)).all()
            assert membership.delivery_mode == "each"    # nothing was changed
        assert (await client.get("/settings")).status_code == 200  # still signed in
        ok = await client.post("/settings", data={"csrf": own, f"mode_{vault}": "daily",
                                                  "language": "", "timezone": ""})
        assert ok.status_code == 303


async def test_one_click_unsubscribe_needs_no_session_nor_csrf(app: App) -> None:
    world = make_world(app)
    with Session(app.engine) as session:
        bob = session.exec(select(Person).where(Person.display_name == "Bob Durand")).one()
    token = make_token(app.secret, "unsubscribe", bob.id or 0, world.communities["pub"])
    async with client_for(web_app(app)) as client:
        response = await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click",
                                     headers={"content-type":
                                              "application/x-www-form-urlencoded"})
        assert response.status_code == 200
        assert "content-security-policy" in response.headers
    with Session(app.engine) as session:
        assert session.exec(select(Membership).where(
            Membership.person_id == bob.id,
            Membership.community_id == world.communities["pub"])).first() is None


async def test_sign_in_mail_is_rate_limited_per_address_and_per_ip(app: App) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        answers = [(await ask_link(client, app, "alice@example.com")).status_code
                   for _ in range(7)]
        assert answers == [200] * 5 + [429] * 2
        with Session(app.engine) as session:
            assert len(session.exec(select(Delivery).where(
                Delivery.kind == "signin")).all()) == 5
        # Unknown addresses get the same answer, and no mail.
        unknown = await ask_link(client, app, "nobody@example.com")
        assert unknown.status_code == 200 and "If nobody@example.com belongs" in unknown.text
        # One client asking for many addresses is stopped too.
        codes = [(await ask_link(client, app, f"x{i}@example.com")).status_code
                 for i in range(30)]
        assert 429 in codes and codes.index(429) < 30
    with Session(app.engine) as session:
        assert len(session.exec(select(Delivery).where(Delivery.kind == "signin")).all()) == 5


async def test_headers_on_pages_attachments_and_cookies(app: App) -> None:
    make_world(app)
    with Session(app.engine) as session:
        [attachment] = session.exec(select(Attachment)).all()
        attachment_id, message_pk, digest = (attachment.id, attachment.message_id,
                                             attachment.sha256)
        vault = session.exec(select(Community).where(Community.slug == "vault")).one()
        vault.visibility = "public"
        session.add(vault)
        session.commit()
        # An image attachment is shown inline; everything else is downloaded.
        image = Attachment(message_id=message_pk, position=9, filename="x.png",
                           content_type="image/png", size=3, sha256=digest)
        session.add(image)
        session.commit()
        image_id = image.id
    async with client_for(web_app(app)) as client:
        for path in ("/", "/search?q=zeppelin", "/c/pub", "/nowhere", "/signin"):
            response = await client.get(path)
            csp = response.headers["content-security-policy"]
            assert "script-src 'none'" in csp and "unsafe-inline" not in csp.split(
                "style-src")[0], path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        download = await client.get(f"/a/{attachment_id}/zeppelin-plan.pdf")
        assert download.headers["content-disposition"].startswith("attachment;")
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in download.headers["content-security-policy"]
        shown = await client.get(f"/a/{image_id}/x.png")
        assert shown.headers["content-disposition"].startswith("inline;")
        assert shown.headers["content-type"] == "image/png"
        client.cookies.clear()
        signin = await client.get("/signin")
        cookie = signin.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" in cookie
        # Reading the public archive sets no cookie at all.
        assert "set-cookie" not in (await client.get("/c/pub")).headers


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_operations_endpoints(app: App, path: str) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        await client.get("/search?q=pineapple")
        response = await client.get(path)
    assert response.status_code == 200
    if path == "/metrics":
        text = response.text
        assert "causerie_messages_received_total 4" in text
        assert 'causerie_messages{state="processed"} 4' in text
        assert 'causerie_messages{state="held"} 0' in text
        assert 'causerie_deliveries{state="pending"}' in text
        assert 'causerie_search_seconds_bucket{le="+Inf"} 1' in text
        assert "causerie_search_seconds_count 1" in text
