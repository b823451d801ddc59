"""Translations (bridge.i18n) and the `causerie dkim keygen` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from babel.messages.extract import extract_from_dir

from bridge.i18n import Catalogues, catalogues, normalise_language, render, translations
from outbound.dkim import DkimSigner
from templates import TEMPLATES_DIR
from tests.conftest import DOMAIN

OPTIONS = {"**": {"extensions": "jinja2.ext.i18n", "newstyle_gettext": "true",
                  "trim_blocks": "true", "lstrip_blocks": "true"}}


# The templates of the "email" catalogue (other catalogues, such as digests, keep theirs).
EMAIL_TEMPLATES = ("footer.*", "notice_*", "command_*", "moderation_*", "bounce_*",
                   "web_action.html")


def template_messages() -> set[str]:
    method_map = [(pattern, "jinja2") for pattern in EMAIL_TEMPLATES]
    return {message for _, _, message, _, _ in extract_from_dir(
        str(TEMPLATES_DIR / "email"), method_map=method_map, options_map=OPTIONS)
        if isinstance(message, str)}


def test_every_email_message_is_translated_into_french() -> None:
    french = translations("fr")
    missing = sorted(m for m in template_messages() if french.gettext(m) == m)
    assert missing == []


def test_french_and_english_rendering() -> None:
    values = {"community": "R&D", "conversation_url": "https://x/c/1", "author": "Alice",
              "external": True, "organisation": "Acme", "private_address": "private+t@x",
              "mute_url": "https://x/mute/t", "delivery_mailto": "mailto:rd+help@x",
              "unsubscribe_url": "https://x/u/t", "posting_address": "rd@x",
              "help_address": "rd+help@x", "archive_url": "https://x/community/rd",
              "reply_address": "reply+t@x", "mute_mailto": "mailto:reply+t@x?subject=mute"}
    english = render("email/footer.txt", "en", **values)
    french = render("email/footer.txt", "fr", **values)
    assert english.startswith("-- \nAlice is an external guest (Acme).\n")
    assert "Unsubscribe: https://x/u/t" in english
    assert french.startswith("-- \nAlice est un invité externe (Acme).\n")
    assert "Se désinscrire : https://x/u/t" in french
    html = render("email/footer.html", "fr", **{**values, "author": "<b>Eve</b>"})
    assert "&lt;b&gt;Eve&lt;/b&gt;" in html  # HTML templates are autoescaped
    assert "Voir la conversation" in html


def test_language_codes() -> None:
    assert normalise_language("fr_CA") == "fr"
    assert normalise_language("FR-be") == "fr"
    assert normalise_language("de") == "en"
    assert normalise_language("", "fr") == "fr"
    assert catalogues(("email",)).translations("xx").gettext("Unsubscribe") == "Unsubscribe"


def test_catalogues_read_po_files_from_any_folder(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "page.html").write_text(
        "{{ _('Hello %(n)s', n=name) }}{{ ngettext('%(num)d item', '%(num)d items', 3) }}")
    folder = tmp_path / "locale" / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "web.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
        '"Plural-Forms: nplurals=2; plural=(n > 1);\\n"\n\n'
        'msgid "Hello %(n)s"\nmsgstr "Bonjour %(n)s"\n\n'
        'msgid "%(num)d item"\nmsgid_plural "%(num)d items"\n'
        'msgstr[0] "%(num)d élément"\nmsgstr[1] "%(num)d éléments"\n', encoding="utf-8")
    own = Catalogues(tmp_path, domains=("web",))
    assert own.render("web/page.html", "fr", name="<Zoé>") == "Bonjour &lt;Zoé&gt;3 éléments"
    assert own.render("web/page.html", "en", name="Zoe") == "Hello Zoe3 items"


# --- causerie dkim keygen ----------------------------------------------------------------------

def test_dkim_keygen_writes_a_key_and_prints_the_record(tmp_path: Path,
                                                        settings_path: Path) -> None:
    key = tmp_path / "keys" / "s1.pem"
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(settings_path), "dkim", "keygen",
         "--selector", "s1", "--out", str(key), "--bits", "1024"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    record = result.stdout.strip().splitlines()[-1]
    assert record.startswith(f"s1._domainkey.{DOMAIN}. IN TXT ( \"v=DKIM1; k=rsa; p=")
    value = "".join(part for part in record.split('"')[1::2])

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name.rstrip(b".") == f"s1._domainkey.{DOMAIN}".encode()
        return value.encode()

    message = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    signer = DkimSigner("s1", DOMAIN, key.read_bytes())
    assert dkim.verify(signer.sign(message) + message, dnsfunc=dns)
    again = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(settings_path), "dkim", "keygen",
         "--selector", "s1", "--out", str(key)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists already" in again.stderr


@pytest.mark.parametrize("selector", ["bad selector", "x_"])
def test_dkim_keygen_refuses_bad_selectors(settings_path: Path, selector: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(settings_path), "dkim", "keygen",
         f"--selector={selector}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not a DKIM selector" in result.stderr
