"""Corporate clean-up: gateway banners above the text, and rewritten links."""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import pytest

from inbound.corporate import remove_banners, unwrap_links
from inbound.reply_html import split_html_reply

FIXTURES = Path(__file__).parent / "fixtures" / "replies"


# --- banners -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "banner",
    [
        "[EXTERNAL]",
        "*EXTERNAL EMAIL*",
        (
            "CAUTION: This email originated from outside of the organization. Do not click links\n"
            "or open attachments unless you recognize the sender and know the content is safe."
        ),
        (
            "CAUTION: This email originated from outside your organization. Exercise caution when\n"
            "opening attachments or clicking links, especially from unknown senders."
        ),
        (
            "EXTERNAL EMAIL: Do not click any links or open any attachments unless you trust the "
            "sender and know the content is safe."
        ),
        (
            "This Message Is From an External Sender\nThis message came from outside your "
            "organization."
        ),
        (
            "You don't often get email from bob@partner.example. Learn why this is important"
            "<https://aka.ms/LearnAboutSenderIdentification>"
        ),
        "[EXTERNE]",
        (
            "ATTENTION : Ce courriel provient de l'extérieur de l'organisation. Ne cliquez pas\n"
            "sur les liens et n'ouvrez pas les pièces jointes à moins de connaître l'expéditeur."
        ),
        (
            "AVERTISSEMENT : ce message provient d'un expéditeur externe. Soyez prudent avec les "
            "liens et les pièces jointes."
        ),
        "[EXTERN]",
        (
            "ACHTUNG: Diese E-Mail stammt von außerhalb der Organisation. Klicken Sie nicht auf\n"
            "Links und öffnen Sie keine Anhänge, es sei denn, Sie kennen den Absender."
        ),
        "VORSICHT: Diese Nachricht stammt von einem externen Absender.",
    ],
)
def test_banners_above_the_text_are_removed(banner: str) -> None:
    assert remove_banners(f"{banner}\n\nHi Bob,\n\nSee you on Thursday.") == (
        "Hi Bob,\n\nSee you on Thursday."
    )


def test_banner_between_rules_and_several_banners() -> None:
    text = (
        "[EXTERNAL]\n\n-----\nCAUTION: This email originated from outside of the organization."
        "\n-----\n\nHello,"
    )
    assert remove_banners(text) == "Hello,"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("[EXTERNAL] Hi Bob,\nthanks.", "Hi Bob,\nthanks."),
        ("[EXTERN] Hallo Team,", "Hallo Team,"),
        ("[EXTERNE] Bonjour,", "Bonjour,"),
    ],
)
def test_tag_before_the_first_words_is_removed(text: str, clean: str) -> None:
    assert remove_banners(text) == clean


def test_proofpoint_marked_banner_is_removed_wherever_it_is() -> None:
    text = (
        "ZjQcmQRYFpfptBannerStart\nThis Message Is From an External Sender\n"
        "Report Suspicious <https://us-phishalarm-ewt.proofpoint.com/EWT/v1/abc>\n"
        "ZjQcmQRYFpfptBannerEnd\nHello,\n\nAll good."
    )
    assert remove_banners(text) == "Hello,\n\nAll good."


@pytest.mark.parametrize(
    "text",
    [
        "Hi, I got an external email from outside the organization asking for money.",
        "Hi Bob,\n\nCAUTION: This email originated from outside of the organization.",
        "Caution: the floor is wet.\n\nSee you.",
        "External review is done.\n\nThanks.",
        "\n\nHello with leading blank lines",
        "",
    ],
)
def test_text_without_a_banner_on_top_is_unchanged(text: str) -> None:
    assert remove_banners(text) == text


# --- links ---------------------------------------------------------------------------------

ORIGINAL = "https://www.example.com/path/page?a=1&b=two%20words"


def _safelink(url: str) -> str:
    return (
        "https://eur01.safelinks.protection.outlook.com/?url="
        + quote(url, safe="")
        + "&data=05%7C02%7Cbob%40example.com%7C9f8e%7C0%7C0%7C638530&sdata=Zm9v%3D&reserved=0"
    )


def _urldefense_v2(url: str) -> str:
    encoded = quote(url, safe="/").replace("-", "%2D").replace("_", "%5F")
    encoded = encoded.replace("%", "-").replace("/", "_")
    return f"https://urldefense.proofpoint.com/v2/url?u={encoded}&d=DwMFaQ&c=abc&r=def&m=gh&s=ij&e="


@pytest.mark.parametrize(
    ("wrapped", "original"),
    [
        (_safelink(ORIGINAL), ORIGINAL),
        (
            _urldefense_v2("https://www.example.com/path/page?a=1&b=2"),
            "https://www.example.com/path/page?a=1&b=2",
        ),
        (
            "https://urldefense.com/v3/__https://www.example.com/a?b=c*d=e__;Jg!!ABC!def$",
            "https://www.example.com/a?b=c&d=e",
        ),
        (
            "https://urldefense.com/v3/__https://x.example/a**Ab__;JiY!!X!Yz$",
            "https://x.example/a&&b",
        ),
        ("https://urldefense.com/v3/__https://example.com/__;!!Abc!Def$", "https://example.com/"),
        (
            "https://urldefense.proofpoint.com/v1/url?u=http%3A%2F%2Fexample.com%2Fx&k=abc",
            "http://example.com/x",
        ),
        (_safelink(_urldefense_v2("https://example.com/nested")), "https://example.com/nested"),
        (_urldefense_v2("https://my-site.example/a_b"), "https://my-site.example/a_b"),
    ],
)
def test_rewritten_links_are_unwrapped(wrapped: str, original: str) -> None:
    assert unwrap_links(wrapped) == original
    assert unwrap_links(f"see the page <{wrapped}>.") == f"see the page <{original}>."
    assert unwrap_links(f"Link: {wrapped}. Next sentence.") == f"Link: {original}. Next sentence."


@pytest.mark.parametrize(
    "text",
    [
        "Plain https://www.example.com/?url=https%3A%2F%2Fother.example stays.",
        "https://eur01.safelinks.protection.outlook.com/?data=no-url-parameter",
        "https://urldefense.proofpoint.com/v2/url?u=not-a-url&d=x",
        "https://urldefense.com/v3/__https://x.example/a*__;%%%!!X$",
        "No links at all.",
    ],
)
def test_other_links_are_left_alone(text: str) -> None:
    assert unwrap_links(text) == text


def test_unwrapping_a_large_text_is_fast() -> None:
    text = ("Word " * 20 + _safelink(ORIGINAL) + "\n") * 700
    assert len(text) > 200_000
    start = time.perf_counter()
    assert unwrap_links(text).count(ORIGINAL) == 700
    assert time.perf_counter() - start < 10  # linear, not a speed target


def test_long_hostile_lines_are_fast() -> None:
    for text in ("urldefense.com/v3/__" * 20_000, "safelinks " * 30_000, "[EXTERNAL] " * 30_000):
        start = time.perf_counter()
        unwrap_links(text)
        remove_banners(text)
        assert time.perf_counter() - start < 10  # linear, not a speed target


# --- with the HTML split -------------------------------------------------------------------


def _html(name: str) -> str:
    message = message_from_bytes((FIXTURES / name).read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize(
    ("fixture", "clean"),
    [
        (
            "outlook_desktop_fr.eml",
            (
                "Bonjour Alice,\n\nLa livraison est prévue jeudi, voir le suivi du colis "
                "<https://suivi.partenaire.example/colis?id=4821>."
            ),
        ),
        (
            "outlook_desktop_de.eml",
            (
                "Hallo Alice,\n\ndas Angebot ist angenommen. Details unter Angebot 7 "
                "<https://angebote.example.de/a?id=7&nr=3>.\n\nViele Grüße\nHans"
            ),
        ),
    ],
)
def test_corporate_replies_after_the_split(fixture: str, clean: str) -> None:
    text = split_html_reply(_html(fixture)).text
    assert remove_banners(unwrap_links(text)) == clean
