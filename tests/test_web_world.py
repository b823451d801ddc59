"""A small archive for the web view's tests, written the way live mail writes it: raw
messages accepted into the inbox (InboxWriter.accept_sync) and run through the processor.

Three communities, one of each visibility, and people who see different parts of it:

| person | kind | member of | may read |
|---|---|---|---|
| alice@example.com | staff | pub, team, vault | all three |
| bob@example.com | staff | pub | pub, team (internal: any signed-in staff) |
| gail@partner.example.net | guest | pub | pub |
| anonymous | | | pub |

Each community's messages carry a word found nowhere else ("pineapple" in pub, "walrus"
in team, "zeppelin" in vault), so a leak shows as that word on a page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import Delivery
from bridge.wiring import processor
from inbound.store import Envelope, InboxWriter
from tests.conftest import DOMAIN

SECRET_WORDS = {"pub": "pineapple", "team": "walrus", "vault": "zeppelin"}
PEOPLE = {"alice@example.com": "Alice Martin", "bob@example.com": "Bob Durand",
          "gail@partner.example.net": "Gail Guest"}


@dataclass
class World:
    communities: dict[str, int] = field(default_factory=dict)


def mail(sender: str, to: str, subject: str, message_id: str, body: str, *,
         in_reply_to: str = "", html: str = "", attachment: tuple[str, str, bytes] | None = None,
         date: str = "Thu, 26 Nov 2026 10:00:00 +0000") -> bytes:
    """A raw message (multipart when it has an HTML part or an attachment)."""
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n")
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n"
    text = body.replace("\n", "\r\n")
    if not html and attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + text).encode("utf-8")
    parts = [("text/plain; charset=utf-8", "", text.encode("utf-8"))]
    if html:
        parts.append(("text/html; charset=utf-8", "", html.replace("\n", "\r\n").encode()))
    out = (head + 'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n').encode()
    for kind, _, payload in parts:
        out += (f"--XYZ\r\nContent-Type: {kind}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                .encode() + payload + b"\r\n")
    if attachment is not None:
        name, kind, payload = attachment
        import base64

        out += (f'--XYZ\r\nContent-Type: {kind}; name="{name}"\r\n'
                f'Content-Disposition: attachment; filename="{name}"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n").encode()
        out += base64.encodebytes(payload).replace(b"\n", b"\r\n") + b"\r\n"
    return out + b"--XYZ--\r\n"


def ingest(app: App, messages: list[tuple[str, bytes]]) -> None:
    """(community slug, raw) pairs accepted and processed like live mail."""
    writer = InboxWriter(app.engine, app.blobs, app.settings.processor.inline_raw_limit,
                         app.clock)
    for slug, raw in messages:
        sender = re.search(rb"<([^>]+)>", raw.split(b"\r\n", 1)[0])
        assert sender is not None
        writer.accept_sync(raw, Envelope(sender.group(1).decode(), [f"{slug}@{DOMAIN}"]))
    processor(app).run_until_idle()


def make_world(app: App) -> World:
    world = World()
    with app.session() as session:
        for slug, name, visibility, members in (
                ("pub", "Public square", "public", PEOPLE),
                ("team", "Team room", "internal", ["alice@example.com"]),
                ("vault", "The vault", "private", ["alice@example.com"])):
            community = create_community(session, slug, name, policy="open",
                                         visibility=visibility, admits_guests=True)
            world.communities[slug] = community.id or 0
            for address in members:
                add_member(session, community, address, name=PEOPLE[address])
    alice = "Alice Martin <alice@example.com>"
    ingest(app, [
        ("pub", mail(alice, f"pub@{DOMAIN}", "Budget pineapple review", "pub-1@example.com",
                     "The pineapple budget is due on Friday.\nWrite to alice@example.com.\n")),
        ("pub", mail("Bob Durand <bob@example.com>", f"pub@{DOMAIN}",
                     "Re: Budget pineapple review", "pub-2@example.com",
                     "Agreed, I will send the pineapple figures.\n\n"
                     "On Thu, Alice Martin wrote:\n> The pineapple budget is due on Friday.\n"
                     "> Write to alice@example.com.\n", in_reply_to="pub-1@example.com",
                     date="Thu, 26 Nov 2026 11:00:00 +0000")),
        ("team", mail(alice, f"team@{DOMAIN}", "Walrus roadmap", "team-1@example.com",
                      "The walrus roadmap for the internal team.\n")),
        ("vault", mail(alice, f"vault@{DOMAIN}", "Zeppelin acquisition", "vault-1@example.com",
                       "The zeppelin deal is confidential.\n",
                       html="<p>The <b>zeppelin</b> deal is confidential.</p>",
                       attachment=("zeppelin-plan.pdf", "application/pdf",
                                   b"%PDF-1.4 zeppelin plan"))),
    ])
    return world


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def last_signin_link(app: App, address: str) -> str:
    """The path of the newest sign-in link queued for `address` (read from the delivery row
    the sign-in page wrote, before any sender runs)."""
    import email
    import email.policy

    from sqlmodel import Session, col, select

    with Session(app.engine) as session:
        row = session.exec(select(Delivery).where(
            Delivery.address == address, Delivery.kind == "signin")
            .order_by(col(Delivery.id).desc())).first()
    assert row is not None and row.raw is not None, f"no sign-in mail for {address}"
    message = email.message_from_bytes(row.raw, policy=email.policy.default)
    body = message.get_content()  # type: ignore[attr-defined]
    found = re.search(r"https?://\S+(/signin/\S+)", body)
    assert found, body
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, app: App, address: str) -> None:
    """The whole flow: the form, the mail, the link's page, its button."""
    form = await client.get("/signin")
    sent = await client.post("/signin", data={"address": address,
                                              "csrf": csrf_of(form.text)})
    assert sent.status_code == 200, sent.text
    link = last_signin_link(app, address)
    page = await client.get(link)
    assert page.status_code == 200, page.text
    done = await client.post(link, data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303, done.text


def client_for(asgi: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),  # type: ignore[arg-type]
                             base_url="https://testserver", follow_redirects=False)
