"""Browser tests (marked `browser`-style by their folder): the web view in a real headless
Chromium (Debian's /usr/bin/chromium driven by Playwright for Python), against the web
service on a free port, with mail caught in the dev Maildir outbox.

Skipped, with the reason shown, when Playwright or Chromium is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email
import email.policy
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from bridge.app import App
from bridge.models import Membership, Person
from bridge.settings import Settings
from bridge.webwiring import web_service
from tests.conftest import DOMAIN, ROOT, free_port, write_settings
from tests.test_web_world import ingest, mail, make_world

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
OUTPUT = ROOT / "test-output"

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="Playwright for Python is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]

XSS = [
    '<script>alert("subject")</script><img src=x onerror=alert("subject-img")>',
    "'><svg onload=alert('name')><script>alert('name')</script>",
    "<script>alert('text')</script>\n<img src=x onerror=alert('text-img')>\n"
    "javascript:alert('link')",
    '<img src=x onerror=alert("html-img")><script>alert("html-script")</script>'
    '<a href="javascript:alert(\'html-href\')">click</a><svg onload=alert("svg")></svg>'
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>'
    '<p style="background:url(javascript:alert(7))" onmouseover="alert(8)">styled</p>'
    '<form action="javascript:alert(9)"><button>go</button></form>',
    '"><img src=x onerror=alert("file")>.html',
]


@pytest.fixture
def site(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[App, str]]:
    """The web service (archive pages + one-click unsubscribe) on a free port, in a thread
    with its own event loop, over a SQLite archive built through the processor."""
    database = tmp_path / "var" / "causerie.db"
    database.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, database)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings.load(write_settings(tmp_path, f"sqlite:///{database}",
                                            f'[web]\nhost = "127.0.0.1"\nport = {port}\n'),
                             environ={"CAUSERIE_INSTANCE__BASE_URL": base})
    app = App(settings)
    make_world(app)
    payload = XSS
    ingest(app, [("pub", mail(f'"{payload[1]}" <mallory@evil.example.net>',
                              f"pub@{DOMAIN}", payload[0], "xss-1@evil.example.net",
                              payload[2], html=payload[3],
                              attachment=(payload[4], "text/html", b"<script>x</script>"),
                              date="Fri, 27 Nov 2026 10:00:00 +0000"))])
    loop = asyncio.new_event_loop()
    service = web_service(app, port=port)
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        await service.start()
        ready.set()
        await stop.wait()
        await service.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20), "the web service did not start"
    try:
        yield app, base
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()
        app.dispose()


def send_queued(app: App) -> list[email.message.EmailMessage]:
    """Run the sender once (no relay: the Maildir outbox) and read what it wrote."""
    from outbound.dmarc import StaticTxtResolver
    from outbound.sender import Sender

    # Playwright's sync API keeps an event loop in this thread: the sender gets its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, Sender(app, resolver=StaticTxtResolver()).drain()).result()
    return [email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in sorted((app.settings.outbox_dir / "new").iterdir())]


class Watch:
    """Dialogs, console errors and page errors seen by a page (none may happen)."""

    def __init__(self, page: Page) -> None:
        self.events: list[str] = []
        page.on("dialog", self.dialog)
        page.on("console", lambda m: m.type == "error" and self.events.append(
            f"console: {m.text}"))
        page.on("pageerror", lambda e: self.events.append(f"pageerror: {e}"))

    def dialog(self, dialog: Any) -> None:
        self.events.append(f"dialog: {dialog.message}")
        dialog.dismiss()


def test_sign_in_search_read_fold_settings_unsubscribe(site: tuple[App, str]) -> None:
    app, base = site
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            watch = Watch(page)
            # Sign in with a link caught from the dev Maildir.
            page.goto(f"{base}/signin")
            page.get_by_label("Your email address").fill("alice@example.com")
            page.get_by_role("button", name="Send me a sign-in link").click()
            assert "Check your mail" in page.locator("h1").inner_text()
            outbox = send_queued(app)
            [signin] = [m for m in outbox if "sign-in link" in str(m["Subject"])]
            assert str(signin["To"]) == "alice@example.com"
            link = re.search(r"http://\S+/signin/\S+", signin.get_content()).group(0)
            page.goto(link)
            page.get_by_role("button", name=re.compile("Sign in to")).click()
            assert "Signed in as Alice Martin" in page.locator("footer").inner_text()
            # Search (keyboard only), open the conversation.
            page.locator("#q").fill("pineapple")
            page.locator("#q").press("Enter")
            result = page.get_by_role("link", name="Budget pineapple review")
            assert page.locator("mark").first.inner_text().lower() == "pineapple"
            result.click()
            assert page.locator("h1").inner_text() == "Budget pineapple review"
            reply = page.get_by_role("link", name="Reply by email").get_attribute("href")
            assert reply is not None and reply.startswith("mailto:reply+")
            # Quotes are folded (<details>), and unfold and fold again.
            quoted = page.locator("details.quoted .body").first
            assert not quoted.is_visible()
            page.locator("details.quoted summary").first.click()
            assert quoted.is_visible() and "due on Friday" in quoted.inner_text()
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "conversation.png"), full_page=True)
            page.locator("details.quoted summary").first.click()
            assert not quoted.is_visible()
            # Change the delivery mode.
            page.goto(f"{base}/settings")
            page.get_by_label("Public square").select_option("daily")
            page.get_by_role("button", name="Save").click()
            assert "Your settings are saved." in page.content()
            with Session(app.engine) as session:
                alice = session.exec(select(Person).where(
                    Person.display_name == "Alice Martin")).one()
                modes = {m.community_id: m.delivery_mode for m in session.exec(
                    select(Membership).where(Membership.person_id == alice.id))}
            assert sorted(modes.values()) == ["daily", "each", "each"]
            # One-click unsubscribe: the URL from a delivered copy's List-Unsubscribe.
            copy = next(m for m in outbox if str(m["Delivered-To"]).strip()
                        == "gail@partner.example.net")
            url = next(part.strip(" <>") for part in str(copy["List-Unsubscribe"]).split(",")
                       if "http" in part)
            answer = page.request.post(url, form={"List-Unsubscribe": "One-Click"})
            assert answer.status == 200 and "unsubscribed" in answer.text()
            with Session(app.engine) as session:
                gail = session.exec(select(Person).where(
                    Person.display_name == "Gail Guest")).one()
                assert session.exec(select(Membership).where(
                    Membership.person_id == gail.id)).first() is None
            assert watch.events == []
        finally:
            browser.close()


def test_xss_payloads_sent_by_email_execute_nothing(site: tuple[App, str]) -> None:
    _app, base = site
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            watch = Watch(page)
            page.goto(f"{base}/c/pub")
            page.locator("ol.conversations a").first.click()
            assert "alert" in page.locator("h1").inner_text()   # shown, as text
            for summary in page.locator("summary").all():
                summary.click()                                   # unfold everything
            page.locator(".html").first.wait_for()
            assert "styled" in page.locator(".html").first.inner_text()
            assert page.locator(".html script, .html iframe, .html svg, .html form").count() == 0
            for link in page.locator("a").all():
                href = link.get_attribute("href") or ""
                assert not href.lower().startswith("javascript:"), href
            page.locator(".html p").first.hover()
            for path in ("/search?q=alert", "/people", "/people?q=alert", "/c/pub/atom",
                         "/"):
                page.goto(base + path)
            page.goto(f"{base}/search?q=alert")
            page.locator("ol.hits a").first.click()
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "xss-conversation.png"), full_page=True)
            assert watch.events == []
        finally:
            browser.close()
