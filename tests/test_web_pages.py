"""The pages themselves: languages, folded quotes, unanswered marks, feeds, mbox, settings,
and the French catalogue covering every message of the templates."""

from __future__ import annotations

import mailbox
import xml.etree.ElementTree as ET
from pathlib import Path

from jinja2.ext import babel_extract
from sqlmodel import Session, select

from bridge.app import App
from bridge.i18n import load_catalogue
from bridge.models import Membership, Person
from bridge.webwiring import web_app
from templates import TEMPLATES_DIR
from tests.test_web_world import client_for, csrf_of, make_world, sign_in


def template_messages() -> set[str]:
    found = set()
    for path in (TEMPLATES_DIR / "web").glob("*.*"):
        if path.suffix not in (".html", ".txt"):
            continue
        with path.open("rb") as handle:
            for _, _, message, _ in babel_extract(handle, ("_", "gettext", "ngettext"), [],
                                                  {"trim_blocks": "true",
                                                   "lstrip_blocks": "true"}):
                found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_web_message_has_a_french_translation() -> None:
    french = load_catalogue(TEMPLATES_DIR / "locale/fr/LC_MESSAGES/web.po", "fr").messages
    english = load_catalogue(TEMPLATES_DIR / "locale/en/LC_MESSAGES/web.po", "en").messages
    missing = [m for m in template_messages() if not french.get(m)]
    assert missing == []
    assert template_messages() <= set(english)


async def test_language_from_person_then_accept_language(app: App) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        english = await client.get("/c/pub")
        assert "Conversations" in english.text and 'lang="en"' in english.text
        french = await client.get("/c/pub", headers={"Accept-Language": "de;q=1, fr;q=0.8"})
        assert 'lang="fr"' in french.text and "sans réponse" not in french.text
        assert "Flux Atom" in french.text
        await sign_in(client, app, "alice@example.com")
        with app.session() as session:
            alice = session.exec(select(Person).where(
                Person.display_name == "Alice Martin")).one()
            alice.language = "fr"
            session.add(alice)
        chosen = await client.get("/", headers={"Accept-Language": "en"})
        assert "Communautés" in chosen.text


async def test_conversation_folds_quotes_and_lists_mark_unanswered(app: App) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        await sign_in(client, app, "alice@example.com")
        community = await client.get("/c/team")
        assert 'class="unanswered"' in community.text
        listing = await client.get("/c/pub")
        assert 'class="unanswered"' not in listing.text
        thread = await client.get("/search?q=figures")
        link = thread.text.split('<h2><a href="', 1)[1].split('"', 1)[0].split("#")[0]
        page = await client.get(link)
        assert page.text.index("pineapple budget is due") < page.text.index("I will send")
        assert '<details class="quoted">' in page.text
        assert "<summary>Show quoted text</summary>" in page.text
        assert 'href="mailto:reply+' in page.text
        permalink = await client.get("/m/pub-2@example.com")
        assert permalink.status_code == 302 and permalink.headers["location"].startswith(link)


async def test_atom_feed_and_mbox_downloads(app: App, tmp_path: Path) -> None:
    make_world(app)
    async with client_for(web_app(app)) as client:
        feed = await client.get("/c/pub/atom")
        root = ET.fromstring(feed.content)
        ns = "{http://www.w3.org/2005/Atom}"
        titles = [e.findtext(f"{ns}title") for e in root.iter(f"{ns}entry")]
        assert sorted(titles) == ["Budget pineapple review", "Re: Budget pineapple review"]
        await sign_in(client, app, "alice@example.com")
        download = await client.get("/c/pub/mbox")
        assert download.headers["content-type"].startswith("application/mbox")
        raw = await client.get("/m/pub-1@example.com/raw")
    path = tmp_path / "pub.mbox"
    path.write_bytes(download.content)
    messages = list(mailbox.mbox(str(path)))
    assert [m["Message-ID"] for m in messages] == ["<pub-1@example.com>", "<pub-2@example.com>"]
    assert raw.content.startswith(b"From: Alice Martin <alice@example.com>\r\n")
    assert messages[0].as_bytes().replace(b"\n", b"\r\n").endswith(
        raw.content.split(b"\r\n\r\n", 1)[1])


async def test_settings_validate_and_leave_a_community(app: App) -> None:
    world = make_world(app)
    async with client_for(web_app(app)) as client:
        await sign_in(client, app, "bob@example.com")
        page = await client.get("/settings")
        token = csrf_of(page.text)
        bad = await client.post("/settings", data={"csrf": token, "timezone": "Mars/Base",
                                                   "language": "fr"})
        assert bad.status_code == 400 and "Unknown time zone" in bad.text
        good = await client.post("/settings", data={"csrf": token, "timezone": "Europe/Paris",
                                                    "language": "fr",
                                                    f"mode_{world.communities['pub']}": "weekly"})
        assert good.status_code == 303
        saved = await client.get(good.headers["location"])
        assert "Vos réglages sont enregistrés." in saved.text
        left = await client.post(f"/settings/leave/{world.communities['pub']}",
                                 data={"csrf": token})
        assert left.status_code == 303
    with Session(app.engine) as session:
        bob = session.exec(select(Person).where(Person.display_name == "Bob Durand")).one()
        assert (bob.language, bob.timezone) == ("fr", "Europe/Paris")
        assert session.exec(select(Membership).where(
            Membership.person_id == bob.id)).all() == []
