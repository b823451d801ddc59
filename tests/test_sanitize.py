"""The HTML kept for the web view (inbound.sanitize, a bleach allowlist), and the extract
step's handling of HTML-only mail and attachments over the size limit (inbound.extract)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from bridge.blobs import BlobStore
from inbound.extract import extract, store_attachments
from inbound.parse import Attachment, parse
from inbound.sanitize import sanitise_html

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _attributes(html: str) -> list[str]:
    """Every attribute name in `html`, lower-cased."""
    return [name.lower() for name in re.findall(r"\s([a-zA-Z_:-]+)\s*=", html)]


# --- what must go -------------------------------------------------------------------------

@pytest.mark.parametrize("html", [
    "<p>Hello<script>alert(1)</script></p>",
    "<p>Hello</p><SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    '<p>Hello</p><script type="text/javascript">\ndocument.cookie\n</script>',
    "<p>Hello</p><noscript><img src=https://t.example/x.gif></noscript>",
])
def test_scripts_are_removed_with_their_code(html: str) -> None:
    clean = sanitise_html(html)
    assert "<p>Hello</p>" in clean
    assert "script" not in clean.lower()
    assert "alert" not in clean and "document.cookie" not in clean


def test_a_script_split_to_fool_a_filter_leaves_no_script() -> None:
    clean = sanitise_html("<scr<script>ipt>alert(1)</script><p>ok</p>")
    assert "<script" not in clean.lower() and "alert" not in clean
    assert "ok" in clean


@pytest.mark.parametrize("html", [
    '<p onclick="steal()">x</p>',
    '<p ONMOUSEOVER="steal()">x</p>',
    '<a href="https://example.com/" onfocus="steal()">x</a>',
    '<img src="cid:logo@example.com" onerror="steal()">',
    '<td onclick="steal()">x</td>',
    '<body onload="steal()"><p>x</p></body>',
    '<div onpointerenter="steal()" class="note">x</div>',
])
def test_event_handlers_are_removed(html: str) -> None:
    clean = sanitise_html(html)
    assert not any(name.startswith("on") for name in _attributes(clean))
    assert "steal" not in clean
    assert "x" in clean


@pytest.mark.parametrize("url", [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java&#09;script:alert(1)",
    "&#106;avascript:alert(1)",
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "file:///etc/passwd",
])
def test_dangerous_urls_are_removed_from_links(url: str) -> None:
    clean = sanitise_html(f'<p><a href="{url}">click</a></p>')
    assert "href" not in clean
    assert "click" in clean
    assert "script:" not in clean.lower() and "data:" not in clean


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "vbscript:msgbox(1)", "data:image/png;base64,iVBORw0KGgo=",
    "https://tracker.example/open.gif?u=alice", "http://tracker.example/open.gif",
    "HTTPS://TRACKER.EXAMPLE/open.gif", "//tracker.example/open.gif", "open.gif",
])
def test_images_other_than_inline_parts_lose_their_source(url: str) -> None:
    clean = sanitise_html(f'<p>Logo: <img src="{url}" alt="logo"></p>')
    assert "src" not in _attributes(clean)
    assert "tracker" not in clean and "script" not in clean and "data:" not in clean
    assert 'alt="logo"' in clean  # the image's text alternative is still shown


def test_other_ways_of_loading_a_remote_image_are_removed() -> None:
    clean = sanitise_html(
        '<table background="https://t.example/a.png"><tr>'
        '<td background="https://t.example/b.png">x</td></tr></table>'
        '<img src="cid:logo@example.com" srcset="https://t.example/c.png 2x">'
        '<p style="background-image: url(https://t.example/d.png)">y</p>'
        '<p style="background: url(https://t.example/e.png)">z</p>'
        '<video poster="https://t.example/f.png" src="https://t.example/v.mp4"></video>')
    assert "t.example" not in clean
    assert 'src="cid:logo@example.com"' in clean


def test_forms_and_their_controls_are_removed() -> None:
    clean = sanitise_html(
        '<form action="https://evil.example/login" method="post">'
        '<p>Your password:</p><input type="password" name="pw"><input type="hidden" '
        'name="t" value="1"><button type="submit">Sign in</button>'
        '<select name="s"><option>one</option></select><textarea name="m"></textarea>'
        '</form>')
    for tag in ("form", "input", "button", "select", "option", "textarea"):
        assert f"<{tag}" not in clean
    assert "action" not in clean and "evil.example" not in clean
    assert "<p>Your password:</p>" in clean


@pytest.mark.parametrize("html", [
    "<style>p { color: red }</style><p>ok</p>",
    "<STYLE type='text/css'>@import url(https://t.example/x.css);</STYLE><p>ok</p>",
    '<link rel="stylesheet" href="https://t.example/x.css"><p>ok</p>',
    '<iframe src="https://evil.example/"></iframe><p>ok</p>',
    '<object data="https://evil.example/x.swf"></object><p>ok</p>',
    '<embed src="https://evil.example/x.swf"><p>ok</p>',
    '<applet code="X.class"></applet><p>ok</p>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/"><p>ok</p>',
    '<base href="https://evil.example/"><p>ok</p>',
    '<svg onload="alert(1)"><circle r="1"/></svg><p>ok</p>',
    "<head><title>Secret title</title></head><p>ok</p>",
])
def test_active_and_embedding_elements_are_removed(html: str) -> None:
    clean = sanitise_html(html)
    assert clean == "<p>ok</p>"


def test_css_is_limited_to_harmless_properties() -> None:
    clean = sanitise_html(
        '<p style="color: red; position: fixed; top: 0; behavior: url(x.htc); '
        '-moz-binding: url(x.xml#y); width: expression(alert(1))">x</p>')
    assert "color: red" in clean
    for gone in ("position", "behavior", "binding", "expression", "url("):
        assert gone not in clean


def test_comments_are_removed() -> None:
    assert sanitise_html("<p>x<!-- [if mso]><script>alert(1)</script><![endif] --></p>") \
        == "<p>x</p>"


# --- what must stay -----------------------------------------------------------------------

def test_ordinary_formatting_is_kept() -> None:
    html = ('<p>Hello <b>bold</b>, <i>italic</i>, <strong>strong</strong>, <em>em</em>, '
            '<u>u</u>.</p>'
            '<p><a href="https://example.com/budget?year=2027">the budget</a> and '
            '<a href="mailto:alice@example.com">Alice</a></p>'
            '<ul><li>one</li><li>two</li></ul><ol><li>first</li></ol>'
            '<blockquote type="cite">quoted</blockquote>'
            '<table><thead><tr><th colspan="2">Head</th></tr></thead>'
            '<tbody><tr><td>a</td><td align="right">b</td></tr></tbody></table>'
            '<pre>code</pre><h2>Title</h2><br><hr>')
    assert sanitise_html(html) == html


def test_links_keep_their_url_and_lose_only_foreign_attributes() -> None:
    clean = sanitise_html('<a href="https://example.com/a?b=1&c=2" title="t" target="_blank" '
                          'rel="opener" ping="https://t.example/">x</a>')
    assert clean == '<a href="https://example.com/a?b=1&amp;c=2" title="t">x</a>'


def test_inline_images_are_kept() -> None:
    html = '<p><img src="cid:chart@example.com" alt="chart" width="400" height="300"></p>'
    assert sanitise_html(html) == html


def test_harmless_styles_and_classes_are_kept() -> None:
    clean = sanitise_html('<div class="gmail_quote" style="border-left: 1px solid #ccc; '
                          'padding-left: 1ex">q</div>')
    assert 'class="gmail_quote"' in clean
    assert "border-left: 1px solid #ccc" in clean and "padding-left: 1ex" in clean


def test_text_is_escaped_not_interpreted() -> None:
    clean = sanitise_html("<p>a &lt;script&gt; tag and 3 < 4 & 5 > 2</p>")
    assert "<script" not in clean
    assert clean == "<p>a &lt;script&gt; tag and 3 &lt; 4 &amp; 5 &gt; 2</p>"


@pytest.mark.parametrize("html", ["", "   ", "\n\t"])
def test_blank_html_gives_an_empty_string(html: str) -> None:
    assert sanitise_html(html) == ""


@pytest.mark.parametrize("html", ["<p>unclosed <b>bold", "</div></div><p>x", "<<<>>>",
                                  "<a href=", "<script>never closed"])
def test_broken_html_never_raises(html: str) -> None:
    clean = sanitise_html(html)
    assert "<script" not in clean.lower()


# --- extract: HTML-only mail and attachments ------------------------------------------------

def _html_only() -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "rd@lists.example.org"
    message["Subject"] = "Menu"
    message["Message-ID"] = "<menu@example.com>"
    message.set_content(
        "<html><head><style>p { color: red }</style><title>Newsletter</title></head><body>"
        "<p>Bonjour &agrave; tous,</p><p>Le menu du <b>caf&eacute;</b>&nbsp;:</p>"
        "<ul><li>Soupe</li><li>Tarte</li></ul>"
        '<script>track("alice")</script><img src="https://t.example/open.gif">'
        "<p>Alice<br>R&amp;D</p></body></html>", subtype="html")
    return message.as_bytes()


def test_html_only_mail_becomes_readable_text() -> None:
    parsed = parse(_html_only(), received_at=NOW, domain="lists.example.org")
    assert parsed.text == ""
    extracted = extract(parsed, None, 1000)
    assert extracted.text == ("Bonjour à tous,\n\nLe menu du café :\n\n- Soupe\n- Tarte\n\n"
                              "Alice\nR&D")
    assert not extracted.is_empty
    assert extracted.language == "fr"


def test_html_only_mail_keeps_sanitised_html_for_the_web_view() -> None:
    parsed = parse(_html_only(), received_at=NOW, domain="lists.example.org")
    html = extract(parsed, None, 1000).html
    assert "<b>caf&eacute;</b>" in html and "<li>Soupe</li>" in html
    for gone in ("<script", "track(", "t.example", "<style", "Newsletter"):
        assert gone not in html


def test_an_attachment_over_the_limit_is_recorded_not_stored(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["Subject"] = "Files"
    message.set_content("Two files.")
    big, fits = b"x" * 1001, b"y" * 1000
    message.add_attachment(big, maintype="application", subtype="pdf", filename="big.pdf")
    message.add_attachment(fits, maintype="application", subtype="pdf", filename="fits.pdf")
    parsed = parse(message.as_bytes(), received_at=NOW, domain="lists.example.org")
    blobs = BlobStore(tmp_path / "blobs")
    attachments = {a.filename: a for a in extract(parsed, blobs, 1000).attachments}
    assert set(attachments) == {"big.pdf", "fits.pdf"}
    over, kept = attachments["big.pdf"], attachments["fits.pdf"]
    # Both are recorded, with their size and digest; only the one that fits is stored.
    assert (over.kept, over.size, over.content_type) == (False, 1001, "application/pdf")
    assert over.sha256 == hashlib.sha256(big).hexdigest()
    assert not blobs.path(over.sha256).exists()
    assert (kept.kept, kept.size) == (True, 1000)
    assert blobs.get(kept.sha256) == fits


def test_store_attachments_honours_the_limit_and_the_deny_list(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    attachments = [
        Attachment("a.txt", "text/plain", b"a" * 10, False, ""),
        Attachment("b.txt", "text/plain", b"b" * 11, False, ""),
        Attachment("setup.EXE", "application/octet-stream", b"MZ", False, ""),
        Attachment("logo.png", "image/png", b"\x89PNG", True, "logo@example.com"),
    ]
    stored = store_attachments(attachments, blobs, 10, denied=(".exe",))
    assert [(s.filename, s.kept) for s in stored] == [
        ("a.txt", True), ("b.txt", False), ("setup.EXE", False), ("logo.png", True)]
    assert stored[3].inline and stored[3].content_id == "logo@example.com"
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == sorted(
        hashlib.sha256(data).hexdigest() for data in (b"a" * 10, b"\x89PNG"))


def test_nothing_is_written_without_a_store() -> None:
    stored = store_attachments([Attachment("a.txt", "text/plain", b"a", False, "")], None, 10)
    assert stored[0].kept and stored[0].sha256 == hashlib.sha256(b"a").hexdigest()
