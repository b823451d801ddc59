"""HTML replies: each client's quote container, and the readable text rendering.

The fixtures in ``tests/fixtures/replies/`` are written after the markup each client produces
(Gmail ``div.gmail_quote``, Apple Mail ``blockquote type="cite"``, Outlook ``#appendonsend``/
``#divRplyFwdMsg`` and the ``border-top:solid #E1E1E1`` header block, Thunderbird
``div.moz-cite-prefix`` with ``blockquote type="cite"``), in English, French and German.
"""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.reply_html import html_to_text, split_html_reply
from inbound.reply_text import ReplyParts

FIXTURES = Path(__file__).parent / "fixtures" / "replies"


def _html(name: str) -> str:
    message = message_from_bytes((FIXTURES / name).read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("html",))
    assert part is not None, f"{name} has no HTML part"
    content = part.get_content()
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize(
    ("fixture", "text", "in_quote", "signature"),
    [
        (
            "gmail_en.eml",
            (
                "Thanks Alice, Thursday works for me.\n\n"
                "I'll bring the figures <https://drive.example.com/d/42>."
            ),
            "Can we meet on Thursday to go through the Q2 figures?",
            "-- \nBob Martin\nSales, Lyon",
        ),
        (
            "gmail_fr.eml",
            "Bonjour Alice,\n\nC'est noté : je réserve le stand B12.\n\nJeanne",
            "Peux-tu réserver le stand pour le salon ?",
            "",
        ),
        (
            "apple_mail_en.eml",
            "Looks good to me.\n\nCould we move the budget item to the morning?\n\nCarol",
            "> Here is the agenda for the offsite.",
            "",
        ),
        (
            "apple_mail_de.eml",
            "Passt, ich buche den Stand am Nachmittag.",
            "> Kannst du den Messestand buchen?",
            "Von meinem iPhone gesendet",
        ),
        (
            "outlook_web_en.eml",
            "Approved, go ahead with the order.",
            "Can I order the new laptops for the Lyon team?",
            "Carol Smith\nFinance",
        ),
        (
            "outlook_web_fr.eml",
            "Bonjour Alice,\n\nLe devis est validé, vous pouvez commander.",
            "Pouvez-vous valider le devis du salon ?",
            "",
        ),
        (
            "outlook_desktop_en.eml",
            (
                "Hi Bob,\n\nThe figures are on the finance page "
                "<https://intranet.example.com/finance/q2>.\nThe Lyon total is before tax.\n\nCarol"
            ),
            "Could you send the Q2 figures?",
            "",
        ),
        (
            "outlook_desktop_de.eml",
            (
                "[EXTERN] Hallo Alice,\n\ndas Angebot ist angenommen. Details unter Angebot 7 "
                "<https://urldefense.com/v3/__https://angebote.example.de/a?id=7*nr=3__;Jg!!ABcDeF"
                "!gHiJkL$>.\n\nViele Grüße\nHans"
            ),
            "Ist das Angebot so in Ordnung?",
            "",
        ),
        (
            "thunderbird_en.eml",
            "Merged, thanks. The nightly build will pick it up.",
            "> Could you merge the importer branch today?",
            "-- \nDave Lee",
        ),
        (
            "thunderbird_fr.eml",
            (
                "Bonjour Alice,\n\nJe serai présent, avec deux collègues :\n\n"
                "- Claire Dubois\n- Luc Martin"
            ),
            "> Qui vient à la réunion de rentrée ?",
            "-- \nPaul Girard\nBureau d'études",
        ),
    ],
)
def test_client_replies(fixture: str, text: str, in_quote: str, signature: str) -> None:
    parts = split_html_reply(_html(fixture))
    assert parts.text == text
    assert in_quote in parts.quoted
    assert in_quote.lstrip("> ") not in parts.text
    assert parts.signature == signature


@pytest.mark.parametrize(
    ("fixture", "attribution"),
    [
        ("gmail_en.eml", "On Mon, 3 Jun 2024 at 09:12, Alice Durand <alice@example.com> wrote:"),
        ("gmail_fr.eml", "Le lun. 3 juin 2024 à 09:12, Alice Durand <alice@example.com> a écrit :"),
        ("apple_mail_de.eml", "> Am 03.06.2024 um 09:12 schrieb Alice Durand <alice@example.com>:"),
        ("thunderbird_en.eml", "On 03/06/2024 09:12, Alice Durand wrote:"),
        ("thunderbird_fr.eml", "Le 03/06/2024 à 09:12, Alice Durand a écrit :"),
    ],
)
def test_attribution_goes_with_the_quote(fixture: str, attribution: str) -> None:
    assert split_html_reply(_html(fixture)).quoted.startswith(attribution)


@pytest.mark.parametrize(
    ("fixture", "header"),
    [
        ("outlook_web_en.eml", "From: Bob Martin <bob@example.com>\nSent: Monday, June 3, 2024"),
        ("outlook_web_fr.eml", "De : Alice Durand <alice@example.com>\nEnvoyé : lundi 3 juin"),
        ("outlook_desktop_en.eml", "From: Bob Martin <bob@example.com>\nSent: Monday, June 3"),
        ("outlook_desktop_fr.eml", "De : Alice Durand <alice@example.com>\nEnvoyé : lundi 3 juin"),
        ("outlook_desktop_de.eml", "Von: Alice Durand <alice@example.com>\nGesendet: Montag"),
    ],
)
def test_outlook_header_block_starts_the_quote(fixture: str, header: str) -> None:
    assert split_html_reply(_html(fixture)).quoted.startswith(header)


def test_outlook_desktop_french_with_banner_signature_and_safe_link() -> None:
    parts = split_html_reply(_html("outlook_desktop_fr.eml"))
    assert parts.text.startswith("ATTENTION : Ce courriel provient de l'extérieur")
    assert parts.text.endswith(
        "La livraison est prévue jeudi, voir le suivi du colis "
        "<https://eur03.safelinks.protection.outlook.com/?url=https%3A%2F%2Fsuivi.partenaire"
        ".example%2Fcolis%3Fid%3D4821&data=05%7C02%7Calice%40example.com%7C1a2b3c%7C0%7C638"
        "530000000000000&sdata=abcDEF123%3D&reserved=0>."
    )
    assert parts.signature == (
        "Cordialement,\nMarc Petit\nResponsable logistique\n+33 1 23 45 67 89"
    )
    assert "Quand la livraison est-elle prévue ?" in parts.quoted


@pytest.mark.parametrize(
    ("fixture", "text"),
    [
        (
            "apple_mail_inline_en.eml",
            (
                "Answers below.\n\n> Can you host the Lyon visit on Tuesday?\n\n"
                "Yes, in the morning.\n\n> Do we need a projector?\n\nNo, the room has a screen."
            ),
        ),
        (
            "thunderbird_de.eml",
            (
                "> Läuft der Testlauf heute Abend?\n\nJa, ab 20 Uhr.\n\n"
                "> Brauchst du noch Zugang zum Server?\n\nNein, danke."
            ),
        ),
    ],
)
def test_inline_html_replies_keep_the_questions(fixture: str, text: str) -> None:
    parts = split_html_reply(_html(fixture))
    assert parts.text == text
    assert "> Can you host" in parts.quoted or "> Läuft der Testlauf" in parts.quoted


def test_apple_mail_inline_reply_leaves_the_unanswered_tail_quoted() -> None:
    parts = split_html_reply(_html("apple_mail_inline_en.eml"))
    assert parts.quoted.endswith("> Thanks,\n> Alice")
    assert "Thanks," not in parts.text


def test_no_quote_container_falls_back_to_the_text_rules() -> None:
    html = (
        "<div>Sure.</div><div><br></div><div>On Mon, 3 Jun 2024 at 09:12, Al "
        "&lt;al@example.com&gt; wrote:</div><div>&gt; Ok?</div>"
    )
    assert split_html_reply(html) == ReplyParts(
        "Sure.", "On Mon, 3 Jun 2024 at 09:12, Al <al@example.com> wrote:\n> Ok?", ""
    )


def test_plain_html_without_quote() -> None:
    assert split_html_reply("<p>Just a note.</p>") == ReplyParts("Just a note.", "", "")


# --- html_to_text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>One</p><p>Two</p>", "One\n\nTwo"),
        ("<div>One</div><div><br></div><div>Two</div>", "One\n\nTwo"),
        ("Line one<br>Line two<br/>Line three", "Line one\nLine two\nLine three"),
        (
            '<p class="MsoNormal">A</p><p class="MsoNormal">&nbsp;</p><p class="MsoNormal">B</p>',
            "A\n\nB",
        ),
        ("<p>Spaces   and\n  newlines\tcollapse</p>", "Spaces and newlines collapse"),
        ("<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>", "- one\n- two\n  - nested"),
        ("<ol><li>first<li>second</ol>", "1. first\n2. second"),
        ('<a href="https://example.com/doc">the doc</a>', "the doc <https://example.com/doc>"),
        ('<a href="https://example.com/">example.com</a>', "example.com"),
        ('<a href="mailto:bob@example.com">bob@example.com</a>', "bob@example.com"),
        ('<a href="https://example.com/"><img src="x.png"></a>', ""),
        ('<a href="#top">top</a>', "top"),
        ("<p>&lt;tag&gt; &amp; &eacute;t&eacute; &#8364;</p>", "<tag> & été €"),
        ("<head><title>T</title><style>p{}</style></head><script>x()</script><p>Body</p>", "Body"),
        ('<div style="display: none">preheader</div><p>Body</p>', "Body"),
        ("<pre>  x = 1\n  y  = 2</pre>", "  x = 1\n  y  = 2"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a b\nc d"),
        (
            "<blockquote>q1<br>q2<blockquote>qq</blockquote></blockquote>after",
            "> q1\n> q2\n>\n>> qq\n\nafter",
        ),
        ("<h1>Title</h1><p>Text</p><hr><p>More</p>", "Title\n\nText\n\n-----\n\nMore"),
        ("<p>unclosed <b>bold <i>both</p><p>next", "unclosed bold both\n\nnext"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_deeply_nested_html_does_not_recurse() -> None:
    html = "<div>" * 5000 + "deep" + "</div>" * 5000
    assert html_to_text(html) == "deep"
    assert split_html_reply(html).text == "deep"


def test_large_html_is_fast() -> None:
    paragraph = "<p>Some <b>bold</b> and <a href='https://example.com/x'>a link</a>.</p>"
    quote = '<div class="gmail_quote"><blockquote>' + "<div>quoted line</div>" * 4000
    html = paragraph * 1700 + quote + "</blockquote></div>"
    assert len(html) > 200_000
    start = time.perf_counter()
    parts = split_html_reply(html)
    assert time.perf_counter() - start < 10  # linear, not a speed target
    assert parts.text.startswith("Some bold and a link <https://example.com/x>.")


@pytest.mark.parametrize(
    "unit",
    [
        "<",
        "<a",
        "<a\n",
        '<a b="c" ',
        "<a b=",
        "<a <a ",
        "</a",
        "<?",
        "<!",
        "<!--",
        "<![CDATA[",
        "<blockquote>",
        "<div>",
        "<ul><li>x",
        '<a "',
        "&#",
        "&",
        "<img alt=don't>",
    ],
)
def test_hostile_html_is_linear(unit: str) -> None:
    """The standard parser rescans the document for each unclosed tag; we must not."""
    html = unit * (200_000 // len(unit))
    start = time.perf_counter()
    split_html_reply(html)
    assert time.perf_counter() - start < 10  # linear, not a speed target


def test_tags_with_angle_brackets_in_values_and_comments() -> None:
    html = (
        '<img alt="<logo>" src="x.png"><p title="a>b">text</p>'
        "<!--[if mso]><p>hidden</p><![endif]-->a < b and c<d <!-- unclosed"
    )
    assert html_to_text(html) == "text\n\na < b and c<d <!-- unclosed"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "<div>",
                    "</div>",
                    "<p>",
                    "</p>",
                    "<br>",
                    "<blockquote type=cite>",
                    "</blockquote>",
                    '<div class="gmail_quote">',
                    "<ul><li>",
                    "</li></ul>",
                    "<pre>",
                    "</pre>",
                    '<a href="https://x.y/">',
                    "</a>",
                    "<hr>",
                    "&nbsp;",
                    '<div id="divRplyFwdMsg">',
                    "<script>",
                    "</script>",
                    "<",
                    ">",
                    "&",
                ]
            ),
            st.text(max_size=20),
        ),
        max_size=40,
    )
)
def test_any_html_is_rendered_without_error(pieces: list[str]) -> None:
    html = "".join(pieces)
    assert isinstance(html_to_text(html), str)
    assert isinstance(split_html_reply(html), ReplyParts)
