"""The digest's HTML part in a real headless Chromium, and the scheduler service."""

from __future__ import annotations

import asyncio
import email
import re
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from bridge.app import App
from bridge.clock import FixedClock
from bridge.models import Delivery
from outbound.digest import RunReport, run_digests
from outbound.digest.service import DigestService
from tests.test_digest_fixtures import NOW, build

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"


def first_digest(app: App) -> EmailMessage:
    table = Delivery.__table__  # type: ignore[attr-defined]
    with app.engine.connect() as connection:
        raw = connection.execute(select(table.c.raw).where(table.c.kind == "digest")
                                 .order_by(table.c.id)).scalars().first()
    assert raw is not None
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_html_renders_in_chromium_and_text_has_every_item(app: App) -> None:
    from playwright.sync_api import sync_playwright

    build(app)
    run_digests(app, "daily", NOW)
    message = first_digest(app)
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    links = set(re.findall(r"https://causerie\.example\.com/t/\d+", html))
    replies = set(re.findall(r"reply\+[a-z2-7]+@[a-z.]+", html))
    assert links and links == set(re.findall(r"https://causerie\.example\.com/t/\d+", text))
    assert replies == set(re.findall(r"reply\+[a-z2-7]+@[a-z.]+", text))
    OUTPUT.mkdir(exist_ok=True)
    page_file = OUTPUT / "digest.html"
    page_file.write_text(html, encoding="utf-8")
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.screenshot(path=str(OUTPUT / "digest.png"), full_page=True)
            shown = page.inner_text("body")
        finally:
            browser.close()
    assert problems == []
    assert all(url.startswith("file:") for url in requests)  # nothing remote is loaded
    for subject in ("Pricing question", "Old thread", "Prototype results", "Help needed"):
        assert subject in shown and subject in text
    assert (OUTPUT / "digest.png").stat().st_size > 10_000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_scheduler_service_runs_due_digests_once(app: App) -> None:
    build(app)
    timed = App(app.settings, clock=FixedClock(NOW))
    reports: list[RunReport] = []
    service = DigestService(timed, on_report=reports.append)
    await service.start()
    try:
        for _ in range(100):
            if len(reports) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert sorted((r.cadence, r.queued) for r in reports) == [("daily", 2), ("weekly", 1)]
    assert "apscheduler_jobs" in inspect(timed.engine).get_table_names()
    # started again (a restart): the jobs run at once, and send nothing new
    again = DigestService(timed, on_report=reports.append)
    await again.start()
    try:
        for _ in range(100):
            if len(reports) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        await again.stop()
    assert [r.queued for r in reports[2:]] == [0, 0]
    table = Delivery.__table__  # type: ignore[attr-defined]
    with timed.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(table)).scalar() == 3
    timed.dispose()


def test_items_encoded_once_give_the_bytes_of_encoding_the_whole() -> None:
    """`encode` leaves holes for tokens even where a soft line break cuts one."""
    import binascii

    from bridge.tokens import reply_token
    from outbound.compose import qp
    from outbound.digest.render import TOKEN_LENGTH, TOKEN_SLOT, encode

    token = reply_token(b"secret", 12345, 678)
    assert len(token) == TOKEN_LENGTH
    for column in range(0, 90, 7):
        for prefix in ("x", "é", "="):
            text = (f"{prefix * column}{TOKEN_SLOT}@lists.example.org\n"
                    f"  Répondre: reply+{TOKEN_SLOT} and <a href=\"mailto:{TOKEN_SLOT}\">\n")
            assert encode(text).fill(token.encode()) == qp(text.replace(TOKEN_SLOT, token))
    plain = "no token here = none\n"
    assert encode(plain).fill(b"") == qp(plain)
    assert binascii.a2b_qp(qp(plain)).replace(b"\r\n", b"\n") == plain.encode()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_digest_parts_are_exactly_the_encoding_of_their_text(app: App) -> None:
    """Parts assembled from pieces encoded apart are byte for byte `qp(whole text)`."""
    from outbound.compose import qp

    build(app)
    run_digests(app, "daily", NOW)
    run_digests(app, "weekly", NOW)
    table = Delivery.__table__  # type: ignore[attr-defined]
    with app.engine.connect() as connection:
        raws = connection.execute(select(table.c.raw)).scalars().all()
    assert len(raws) == 3
    for raw in raws:
        message = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        for part in message.iter_parts():
            encoded = str(part.get_payload()).encode("ascii").replace(b"\r\n", b"\n")
            decoded = part.get_content().replace("\r\n", "\n")  # type: ignore[attr-defined]
            assert encoded.rstrip(b"\n") == qp(decoded).replace(b"\r\n", b"\n").rstrip(b"\n")
