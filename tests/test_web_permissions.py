"""Permissions in every place the archive shows content, on both databases: a private
community's content reaches its members only, an internal one signed-in staff only, and
nothing of either reaches an anonymous reader (pages, permalinks, raw, search results,
counts and snippets, people, feeds, attachments, mbox downloads)."""

from __future__ import annotations

import re

import pytest
from sqlmodel import Session, select

from bridge.app import App
from bridge.models import Attachment, Conversation, Message, Person
from bridge.webwiring import web_app
from tests.test_web_world import SECRET_WORDS, client_for, make_world, sign_in

SUBJECTS = {"pub": "Budget pineapple review", "team": "Walrus roadmap",
            "vault": "Zeppelin acquisition"}
NAMES = {"pub": "Public square", "team": "Team room", "vault": "The vault"}
# reader -> (communities readable, communities the reader is a member of)
READERS = {
    "anonymous": ({"pub"}, set()),
    "gail@partner.example.net": ({"pub"}, {"pub"}),
    "bob@example.com": ({"pub", "team"}, {"pub"}),
    "alice@example.com": ({"pub", "team", "vault"}, {"pub", "team", "vault"}),
}


def leaks(text: str, slug: str) -> bool:
    return (SUBJECTS[slug].lower() in text.lower() or NAMES[slug] in text
            or re.search(rf"\b{SECRET_WORDS[slug]}\b", text, re.IGNORECASE) is not None)


@pytest.mark.parametrize("who", list(READERS))
async def test_each_place_shows_only_what_the_reader_may_read(app: App, who: str) -> None:
    make_world(app)
    readable, member_of = READERS[who]
    with Session(app.engine) as session:
        conversations = {c.community_id: c.id for c in session.exec(select(Conversation))}
        messages = {m.community_id: m for m in session.exec(select(Message))}
        [attachment] = session.exec(select(Attachment)).all()
        alice = session.exec(select(Person).where(Person.display_name == "Alice Martin")).one()
        slugs = {m.community_id: slug for slug in SUBJECTS
                 for m in session.exec(select(Message)) if m.message_id.startswith(
                     {"pub": "pub", "team": "team", "vault": "vault"}[slug])}
    ids = {slug: cid for cid, slug in slugs.items()}
    async with client_for(web_app(app)) as client:
        if who != "anonymous":
            await sign_in(client, app, who)
        pages = {path: await client.get(path) for path in (
            "/", "/people", f"/p/{alice.id}", "/search?q=budget+OR+walrus+OR+zeppelin")}
        for slug in SUBJECTS:
            allowed, member = slug in readable, slug in member_of
            cid = ids[slug]
            mid = messages[cid].message_id
            checks = {
                f"/c/{slug}": 200, f"/c/{slug}/atom": 200, f"/t/{conversations[cid]}": 200,
                f"/m/{mid}": 302,
            }
            for path, status in checks.items():
                response = await client.get(path)
                assert response.status_code == (status if allowed else 404), (who, path)
                if allowed and status == 200:
                    assert SECRET_WORDS[slug] in response.text.lower(), (who, path)
                elif not allowed:
                    assert not leaks(response.text, slug), (who, path)
            for path in (f"/m/{mid}/raw", f"/c/{slug}/mbox", f"/t/{conversations[cid]}/mbox"):
                response = await client.get(path)
                assert response.status_code == (200 if member else 404), (who, path)
                if member:
                    assert SECRET_WORDS[slug].encode() in response.content.lower(), (who, path)
                else:
                    assert not leaks(response.text, slug), (who, path)
            # Search: results, counts and snippets come from visible messages only.
            found = await client.get(f"/search?q={SECRET_WORDS[slug]}")
            assert (SUBJECTS[slug] in found.text) == allowed, (who, slug)
            if not allowed:
                assert "0 matching messages" in found.text
                assert "<mark>" not in found.text
            scoped = await client.get(f"/search?q=community:{slug}")
            assert (SUBJECTS[slug] in scoped.text) == allowed, (who, slug)
            experts = await client.get(f"/people?q={SECRET_WORDS[slug]}")
            assert (SUBJECTS[slug] in experts.text) == allowed, (who, slug)
            for path, page in pages.items():
                if not allowed:
                    text = page.text
                    if path.startswith("/search"):  # the query is echoed in the search box
                        text = text.replace('value="budget OR walrus OR zeppelin"', "")
                    assert not leaks(text, slug), (who, path, slug)
        # The attachment lives in the private community.
        url = f"/a/{attachment.id}/zeppelin-plan.pdf"
        response = await client.get(url)
        assert response.status_code == (200 if "vault" in readable else 404), who
        if "vault" not in readable:
            assert b"zeppelin" not in response.content.lower()
    # Addresses are obscured for anonymous readers, shown to people signed in.
    async with client_for(web_app(app)) as client:
        if who != "anonymous":
            await sign_in(client, app, who)
        thread = await client.get(f"/t/{conversations[ids['pub']]}")
        assert ("alice@example.com" in thread.text) == (who != "anonymous")
        if who == "anonymous":
            assert "alice@…" in thread.text
