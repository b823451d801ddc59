"""Composed copies, read back from the Maildir outbox the sender writes: every header,
the MIME structure, footers in English and French, From rewriting, DKIM, header injection."""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import dkim
import pytest

from bridge.app import App
from bridge.clock import FixedClock
from bridge.i18n import catalogues
from bridge.models import Person
from bridge.settings import Settings
from bridge.tokens import read_token
from outbound.compose import (
    Composer,
    PostContext,
    PostInfo,
    Recipient,
    build_skeleton,
    list_subject,
)
from outbound.dkim import DkimSigner, generate_key, static_dns
from outbound.dmarc import DmarcPolicies, StaticTxtResolver
from outbound.listheaders import HeaderInjection, clean_text, format_address, header_line
from outbound.sender import Sender
from tests.conftest import DOMAIN, write_settings
from tests.test_outbound_support import (
    FIXTURES,
    by_recipient,
    maildir_bytes,
    make_world,
    read_maildir,
    simple_post,
    store_post,
)

BASE = "https://causerie.example.com"


def run(app: App, *, policies: dict[str, str] | None = None) -> int:
    import asyncio

    sender = Sender(app, resolver=StaticTxtResolver.dmarc(policies or {}))
    return asyncio.run(sender.drain())


@pytest.fixture
def delivered(app: App) -> dict[str, email.message.Message]:
    world = make_world(app, subject_tag="rd")
    store_post(app, world, simple_post())
    assert run(app) == 3
    return by_recipient(read_maildir(app.settings.outbox_dir))


def test_every_list_header_on_delivered_copies(app: App, delivered: dict) -> None:
    assert set(delivered) == {"bob@example.com", "claire@example.com",
                              "dan@partner.example.net"}  # not the author
    copy = delivered["bob@example.com"]
    # Threading headers as the author sent them; the author's From (no strict DMARC).
    assert copy["Message-ID"] == "<budget-1@example.com>"
    assert copy["From"] == "Alice Martin <alice@example.com>"
    assert copy["To"] == f"rd@{DOMAIN}"
    assert copy["Subject"] == "[rd] Budget 2027"
    assert copy["List-Id"] == f"R&D <rd.{DOMAIN}>"
    assert copy["List-Post"] == f"<mailto:rd@{DOMAIN}>"
    assert copy["List-Help"] == f"<mailto:rd+help@{DOMAIN}?subject=help>"
    assert copy["List-Archive"] == f"<{BASE}/c/rd>"
    assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert copy["Archived-At"] == f"<{BASE}/m/budget-1@example.com>"
    assert copy["Precedence"] == "list"
    assert copy["X-Auto-Response-Suppress"] == "All"
    assert copy["X-Causerie-Loop"] == "Test Causerie"
    assert copy["DKIM-Signature"] is None  # not configured here
    # Reply-To: the recipient's personal reply address, for this conversation.
    reply = re.search(r"<reply\+([a-z2-7]+)@" + re.escape(DOMAIN) + ">", copy["Reply-To"])
    assert reply
    token = read_token(app.secret, "reply", reply.group(1))
    bob = people(app)["bob@example.com"]
    assert token is not None and token.first == bob
    # List-Unsubscribe: a mailto and the one-click https URL naming bob and the community.
    mailto, url = [part.strip(" <>") for part in copy["List-Unsubscribe"].split(",")]
    assert mailto == f"mailto:rd+unsubscribe@{DOMAIN}?subject=unsubscribe"
    assert url.startswith(f"{BASE}/u/")
    unsubscribe = read_token(app.secret, "unsubscribe", url.rsplit("/", 1)[1])
    assert unsubscribe is not None and unsubscribe.first == bob
    # VERP envelope sender naming the delivery.
    verp = re.fullmatch(rf"<bounces\+([a-z2-7]+)@{re.escape(DOMAIN)}>", copy["Return-Path"])
    assert verp and read_token(app.secret, "bounces", verp.group(1)) is not None
    # Each copy has its own tokens.
    assert len({m["Reply-To"] for m in delivered.values()}) == 3
    assert len({m["List-Unsubscribe"] for m in delivered.values()}) == 3


def people(app: App) -> dict[str, int]:
    from sqlmodel import select

    from bridge.models import Address

    with app.session() as session:
        return {a.email: a.person_id for a in session.exec(select(Address)).all()}


def test_footer_links_and_external_marker(app: App, delivered: dict) -> None:
    copy = delivered["bob@example.com"]
    text = copy.get_payload(decode=True).decode("utf-8")
    assert text.startswith("Hello team,\n\nThe budget is attached.\n")
    footer = text.split("\n-- \n", 1)[1]
    assert f"{BASE}/t/" in footer
    assert "private+" in footer and f"@{DOMAIN}" in footer
    assert f"{BASE}/mute/" in footer and "mute" in footer
    assert f"mailto:rd+help@{DOMAIN}?subject=delivery%20daily" in footer
    assert f"{BASE}/u/" in footer
    assert "external guest" not in footer  # Alice is staff


def test_guest_posts_are_marked_external(app: App) -> None:
    world = make_world(app, admits_guests=True)
    store_post(app, world, simple_post(sender="Dan Guest <dan@partner.example.net>",
                                       message_id="guest-1@partner.example.net",
                                       subject="Re: Budget 2027"))
    run(app)
    copy = by_recipient(read_maildir(app.settings.outbox_dir))["bob@example.com"]
    assert copy["Subject"] == "Re: [EXTERNAL] Budget 2027"
    text = copy.get_payload(decode=True).decode("utf-8")
    assert "Dan Guest is an external guest." in text


def test_subject_tag_not_doubled() -> None:
    assert list_subject("Budget", "rd", False) == "[rd] Budget"
    assert list_subject("Re: [rd] Budget", "rd", False) == "Re: [rd] Budget"
    assert list_subject("RE: [RD] Budget", "rd", False) == "RE: [RD] Budget"
    assert list_subject("Re: Budget", "rd", True) == "Re: [rd] [EXTERNAL] Budget"
    assert list_subject("Re: [rd] [EXTERNAL] Budget", "rd", True) == "Re: [rd] [EXTERNAL] Budget"
    assert list_subject("Budget", "", False) == "Budget"


def test_strict_dmarc_rewrites_from_and_keeps_author_in_cc(app: App) -> None:
    world = make_world(app)
    store_post(app, world, simple_post(extra="Cc: Eve <eve@elsewhere.example>\r\n"))
    run(app, policies={"example.com": "reject"})
    copy = by_recipient(read_maildir(app.settings.outbox_dir))["bob@example.com"]
    assert copy["From"] == f"Alice Martin via R&D <rd@{DOMAIN}>"
    assert copy["Cc"] == "Eve <eve@elsewhere.example>, Alice Martin <alice@example.com>"
    assert copy["X-Original-From"] == "Alice Martin <alice@example.com>"
    assert "reply+" in copy["Reply-To"]
    text = copy.get_payload(decode=True).decode("utf-8")
    assert "Reply privately to Alice Martin" in text


@pytest.mark.parametrize("policy, rewritten", [("none", False), ("quarantine", True),
                                               ("reject", True)])
def test_dmarc_policies(policy: str, rewritten: bool) -> None:
    resolver = StaticTxtResolver.dmarc({"example.com": policy})
    policies = DmarcPolicies(resolver)
    assert policies.rewrite_from("alice@example.com") is rewritten
    assert policies.rewrite_from("alice@example.com") is rewritten
    assert resolver.lookups == ["_dmarc.example.com"]  # cached
    # A sub-domain falls back to the organisational domain's sp= (or p=).
    sub = DmarcPolicies(StaticTxtResolver({"_dmarc.example.com": ["v=DMARC1; p=none; sp=reject"]}))
    assert sub.rewrite_from("x@mail.example.com") and not sub.rewrite_from("x@example.com")
    assert DmarcPolicies(StaticTxtResolver()).policy("nothing.example") == ""


def test_community_reply_policy(app: App) -> None:
    world = make_world(app, reply_to="community")
    store_post(app, world, simple_post())
    run(app)
    copy = by_recipient(read_maildir(app.settings.outbox_dir))["bob@example.com"]
    assert copy["Reply-To"] == f"R&D <rd@{DOMAIN}>"
    assert len(copy.get_all("Reply-To")) == 1


def test_mime_structure_kept_and_both_parts_get_footers(app: App) -> None:
    world = make_world(app)
    raw = (FIXTURES / "alternative-with-attachment.eml").read_bytes()
    store_post(app, world, raw)
    run(app)
    copies = by_recipient(read_maildir(app.settings.outbox_dir))
    copy = copies["bob@example.com"]
    # Threading as sent; the author's DKIM signature and read-receipt request removed.
    assert copy["In-Reply-To"] == "<reunion-1@example.com>"
    assert copy["References"] == "<reunion-0@example.com> <reunion-1@example.com>"
    assert copy["Cc"] == "Bob Durand <bob@example.com>"
    assert copy["DKIM-Signature"] is None and copy["Disposition-Notification-To"] is None
    assert copy["Received"] is not None
    parsed = email.message_from_bytes(copy.as_bytes(), policy=email.policy.default)
    assert str(parsed["Subject"]) == "Réunion de l'équipe"
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html",
        "application/pdf"]
    assert parsed.get_boundary() == "outer-boundary"
    plain, html, pdf = [p for p in parsed.walk() if not p.is_multipart()]
    text = plain.get_content()
    assert text.startswith("Bonjour à tous,\n\nLa réunion est déplacée à jeudi.\n\n-- \n")
    assert "Reply privately to Amélie Durand:" in text
    markup = html.get_content()
    assert markup.startswith("<html><body><p>Bonjour à tous,</p>")
    assert markup.rstrip().endswith("</div>\n</body></html>")
    assert 'class="causerie-footer"' in markup and "/u/" in markup
    original = email.message_from_bytes(raw)
    original_pdf = next(p for p in original.walk() if p.get_content_type() == "application/pdf")
    assert pdf.get_payload(decode=True) == original_pdf.get_payload(decode=True)
    assert pdf.get_filename() == "ordre-du-jour.pdf"


def test_signed_mail_is_wrapped_not_modified(app: App) -> None:
    world = make_world(app)
    raw = (FIXTURES / "pgp-signed.eml").read_bytes()
    store_post(app, world, raw)
    run(app)
    copy = email.message_from_bytes(maildir_bytes(app.settings.outbox_dir)[0],
                                    policy=email.policy.default)
    assert copy.get_content_type() == "multipart/mixed"
    signed, footer = copy.get_payload()
    assert signed.get_content_type() == "multipart/signed"
    assert signed.get_param("protocol") == "application/pgp-signature"
    original_body = raw.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    assert original_body.rstrip(b"\n") in maildir_bytes(app.settings.outbox_dir)[0]
    assert "/u/" in footer.get_content()


def test_html_only_message(app: App) -> None:
    world = make_world(app)
    store_post(app, world, (FIXTURES / "html-only.eml").read_bytes())
    run(app)
    copy = email.message_from_bytes(maildir_bytes(app.settings.outbox_dir)[0],
                                    policy=email.policy.default)
    assert copy.get_content_type() == "text/html"
    html = copy.get_content()
    assert "Only <b>HTML</b> here, été.</p>" in html
    assert html.index("causerie-footer") < html.index("</BODY>")


def test_french_and_english_footers(app: App) -> None:
    world = make_world(app)
    with app.session() as session:
        claire = session.get(Person, world.people["claire@example.com"])
        assert claire is not None
        claire.language = "fr"
        session.add(claire)
    store_post(app, world, (FIXTURES / "alternative-with-attachment.eml").read_bytes())
    run(app)
    copies = by_recipient(read_maildir(app.settings.outbox_dir))
    french = email.message_from_bytes(copies["claire@example.com"].as_bytes(),
                                      policy=email.policy.default)
    english = email.message_from_bytes(copies["bob@example.com"].as_bytes(),
                                       policy=email.policy.default)
    fr_text = next(p for p in french.walk() if p.get_content_type() == "text/plain")
    en_text = next(p for p in english.walk() if p.get_content_type() == "text/plain")
    assert "Répondre en privé à Amélie Durand :" in fr_text.get_content()
    assert "Se désinscrire :" in fr_text.get_content()
    assert "ou répondez par le mot « sourdine »" in fr_text.get_content()
    assert "Reply privately to Amélie Durand:" in en_text.get_content()
    fr_html = next(p for p in french.walk() if p.get_content_type() == "text/html")
    assert "Mettre cette conversation en sourdine" in fr_html.get_content()


# --- header injection ------------------------------------------------------------------------

def test_header_line_refuses_cr_and_lf() -> None:
    for bad in ("x\r\nBcc: victim@example.org", "x\nBcc: victim@example.org", "x\rBcc: v"):
        with pytest.raises((HeaderInjection, ValueError)):
            header_line("Subject", bad)
    with pytest.raises(HeaderInjection):
        header_line("Subject\r\nBcc", "x")


def test_crafted_names_and_subjects_never_make_headers(app: App) -> None:
    world = make_world(app, name="R&D\r\nBcc: evil@attacker.example")
    evil_subject = "=?utf-8?q?Hello=0D=0ABcc=3A_evil=40attacker=2Eexample?="
    evil_from = ('=?utf-8?q?Mallory=0D=0ABcc=3A_evil2=40attacker=2Eexample?= '
                 '<alice@example.com>')
    store_post(app, world, simple_post(sender=evil_from, subject=evil_subject,
                                       message_id="evil-1@example.com"))
    run(app, policies={"example.com": "reject"})  # From rewritten: the name goes in headers
    raw = maildir_bytes(app.settings.outbox_dir)[0]
    head = raw.split(b"\n\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\n")
             if line and line[:1] not in b" \t"]
    assert b"bcc" not in names
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
    assert "Mallory" in str(parsed["From"]) and "\n" not in str(parsed["From"])
    assert "\n" not in str(parsed["List-Id"])
    assert clean_text("a\r\nb\x00c\u2028d") == "a b c d"
    assert "\n" not in format_address("x\r\nBcc: y@z", "a@b.c")


# --- DKIM ------------------------------------------------------------------------------------

def test_copies_are_dkim_signed_and_verify(tmp_path: Path, db_url: str) -> None:
    private, public = generate_key(2048)
    key = tmp_path / "dkim.pem"
    key.write_bytes(private)
    settings = Settings.load(write_settings(tmp_path, db_url, f"""
[outbound]
dkim_selector = "s2026"
dkim_key_file = "{key}"
"""), environ={})
    app = App(settings)
    try:
        world = make_world(app)
        store_post(app, world, (FIXTURES / "alternative-with-attachment.eml").read_bytes())
        run(app)
        lookup = static_dns("s2026", DOMAIN, public)
        copies = maildir_bytes(settings.outbox_dir)
        assert len(copies) == 4  # the author is no member: everybody gets a copy
        for data in copies:
            message = data.replace(b"\n", b"\r\n")  # the Maildir stores LF line ends
            assert message.count(b"DKIM-Signature:") == 1
            assert dkim.verify(message, dnsfunc=lookup)
            signature = email.message_from_bytes(message)["DKIM-Signature"]
            tags = dict(t.strip().split("=", 1) for t in signature.replace("\r\n", "")
                        .split(";") if "=" in t)
            signed = [h.strip() for h in tags["h"].split(":")]
            for header in ("from", "subject", "reply-to", "list-unsubscribe",
                           "list-unsubscribe-post", "message-id", "list-id"):
                assert header in signed
            assert tags["d"] == DOMAIN and tags["s"] == "s2026"
            # Any change to the body or a signed header breaks it.
            tampered = message.replace(b"Reply privately", b"Reply publicly")
            assert not dkim.verify(tampered, dnsfunc=lookup)
    finally:
        app.dispose()


def test_openssl_and_pure_python_signatures_agree() -> None:
    private, public = generate_key(1024)
    message = simple_post()
    at = int(time.time())
    fast = DkimSigner("s", DOMAIN, private, now=lambda: at)
    slow = DkimSigner("s", DOMAIN, private, prefer_openssl=False, now=lambda: at)
    assert slow.backend == "PurePythonRsa"
    assert fast.sign(message) == slow.sign(message)
    assert dkim.verify(fast.sign(message) + message, dnsfunc=static_dns("s", DOMAIN, public))


# --- composing once per message --------------------------------------------------------------

def composed(raw: bytes, message_id: str) -> tuple[Composer, PostContext]:
    """A composer without an app, and the post context of `raw` as community "rd"'s."""
    composer = Composer(secret=b"s" * 32, domain=DOMAIN, base_url=BASE, instance_name="C",
                        catalogues=catalogues(("email",)))
    info = PostInfo(message_pk=7, message_id=message_id, conversation_id=3,
                    community_id=1, community_slug="rd", community_name="R&D", subject_tag="",
                    reply_policy="personal", author_id=1, author_name="Amélie",
                    author_address="amelie@example.com", author_external=False,
                    author_organisation="", subject="", raw=raw)
    return composer, composer.post_context(info)


def test_skeleton_is_shared_and_copies_differ_only_per_recipient() -> None:
    raw = (FIXTURES / "alternative-with-attachment.eml").read_bytes()
    skeleton = build_skeleton(raw)
    assert skeleton.slots == ("text", "html")
    composer, context = composed(raw, "reunion-2@example.com")
    one = composer.compose_post(context, Recipient(1, 10, "a@example.com", "en"))
    two = composer.compose_post(context, Recipient(2, 11, "b@example.com", "fr"))
    assert one.startswith(context.head) and two.startswith(context.head)
    for chunk in context.skeleton.chunks:
        assert chunk in one and chunk in two
    assert one != two


def test_clock_is_injected_for_retries(tmp_path: Path, db_url: str) -> None:
    """Delivery rows take their times from the app's clock (no sleeping in tests)."""
    clock = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
    app = App(Settings.load(write_settings(tmp_path, db_url), environ={}), clock=clock)
    try:
        world = make_world(app)
        store_post(app, world, simple_post())
        assert run(app) == 3
    finally:
        app.dispose()


def test_archived_at_quotes_message_id(app: App) -> None:
    world = make_world(app)
    store_post(app, world, simple_post(message_id="a/b c%d@example.com"))
    run(app)
    copy = read_maildir(app.settings.outbox_dir)[0]
    url = copy["Archived-At"].strip("<>")
    assert " " not in url and unquote(url.rsplit("/m/", 1)[1]) == "a/b c%d@example.com"


@pytest.mark.parametrize("charset", ["utf-8\x00", "idna", "base64", "x-bogus"])
def test_a_body_in_a_charset_python_cannot_use_is_still_composed(charset: str) -> None:
    """A text part declaring a charset with a NUL (codecs.lookup raised ValueError), "idna"
    or "base64" (bytes.decode raised UnicodeError, LookupError), and a Subject word that is
    not base64 (HeaderParseError), made every copy of the post fail; the text is read as
    UTF-8, else as Windows-1252 (as for an undeclared charset), the Subject's word as text."""
    raw = (b"From: a@example.com\r\nSubject: =?utf-8?B?!!!notbase64?=\r\n"
           b"Message-ID: <charset@example.com>\r\nContent-Type: text/plain; charset=\""
           + charset.encode("ascii") + b"\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           b"R\xe9sum\xe9 du projet.\r\n")
    composer, context = composed(raw, "charset@example.com")
    data = composer.compose_post(context, Recipient(1, 10, "b@example.com", "en"))
    copy = email.message_from_bytes(data, policy=email.policy.default)
    assert "notbase64" in str(copy["Subject"])
    assert copy.get_content().startswith("Résumé du projet.\r\n")
