"""The parse step (inbound.parse): raw bytes into `ParsedMail`, never an exception.

Hand-made messages for each rule, and real ones from ../shared/corpora (CPython's email
test messages, sisimai's mail from real MTAs and clients); those skip with a reason when
the corpora are absent.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from bridge.charsets import decode_words
from inbound.parse import ParsedMail, derived_message_id, message_ids, parse
from tests.conftest import CORPORA

DOMAIN = "lists.example.org"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CPYTHON = CORPORA / "parser" / "cpython-test_email" / "data"
SISIMAI = CORPORA / "bounces" / "sisimai" / "maildir"


def parsed(raw: bytes | str) -> ParsedMail:
    if isinstance(raw, str):
        raw = raw.encode("ascii")
    return parse(raw, received_at=NOW, domain=DOMAIN)


def corpus(path: Path) -> bytes:
    if not path.exists():
        pytest.skip(f"corpus file {path} absent (../shared/corpora is not in a user's clone)")
    return path.read_bytes()


def headers(*lines: str, body: str = "Hello.\n") -> str:
    return "\n".join(lines) + "\n\n" + body


# --- RFC 2047 encoded words -----------------------------------------------------------------

@pytest.mark.parametrize(("encoded", "text"), [
    ("=?UTF-8?Q?R=C3=A9union_=C3=A0_Paris?=", "Réunion à Paris"),
    ("=?utf-8?q?R=C3=A9union_=C3=A0_Paris?=", "Réunion à Paris"),
    ("=?UTF-8?B?UsOpdW5pb24gw6AgUGFyaXM=?=", "Réunion à Paris"),
    ("=?ISO-8859-1?Q?R=E9union_=E0_Paris?=", "Réunion à Paris"),
    ("=?iso-8859-1?b?Uul1bmlvbiDgIFBhcmlz?=", "Réunion à Paris"),
    # Adjacent words are joined without the whitespace between them (RFC 2047 6.2).
    ("=?ISO-8859-1?Q?R=E9union?= =?UTF-8?Q?_=C3=A0_Paris?=", "Réunion à Paris"),
    # Encoded and plain text mixed, folded over two lines.
    ("Re: =?UTF-8?Q?R=C3=A9union?=\n =?UTF-8?Q?_=C3=A0?= Paris", "Re: Réunion à Paris"),
    ("=?UTF-8?B?0JLQsNGI0LUg0YHQvtC+0LHRidC10L3QuNC1?=", "Ваше сообщение"),
    ("=?ISO-2022-JP?B?GyRCJEskYyE8JHMbKEI=?=", "にゃーん"),
])
def test_encoded_subjects_are_decoded(encoded: str, text: str) -> None:
    assert parsed(headers("From: a@example.com", f"Subject: {encoded}")).subject == text


@pytest.mark.parametrize(("encoded", "text"), [
    # An unknown charset: read as Latin-1 rather than failed.
    ("=?x-bogus?Q?caf=E9?= ok", "café ok"),
    # Not base64 at all: kept as written.
    ("=?utf-8?B?!!!notbase64?=", "=?utf-8?B?!!!notbase64?="),
    # Base64 without its padding, as some clients write it.
    ("=?utf-8?B?eHB0bw?=", "xpto"),
    # Codecs that are not text encodings, or refuse the "replace" error handler.
    ("=?base64?Q?caf=E9?=", "café"),
    ("=?idna?Q?caf=E9?=", "café"),
])
def test_broken_encoded_words_are_tolerated(encoded: str, text: str) -> None:
    mail = parsed(headers("From: a@example.com", f"Subject: {encoded}"))
    assert mail.subject == text


def test_encoded_display_names_and_header_lookup() -> None:
    mail = parsed(headers(
        "From: =?UTF-8?Q?Ren=C3=A9e_Fran=C3=A7ois?= <Renee@Example.COM>",
        "To: =?ISO-8859-1?Q?Jos=E9?= <jose@example.com>",
        "Subject: x",
        "X-Team: =?UTF-8?B?UiZEIMOJcXVpcGU=?="))
    assert (mail.from_name, mail.from_address) == ("Renée François", "renee@example.com")
    assert mail.to == ["jose@example.com"]
    assert mail.header("X-Team") == "R&D Équipe"
    assert mail.header("X-Absent") == ""


def test_real_exchange_latin1_subject() -> None:
    raw = corpus(SISIMAI / "bsd" / "lhost-exchange2007-06.eml")
    assert parse(raw, received_at=NOW, domain=DOMAIN).subject == \
        "Non remis : Votre deuxième paire de chaussures à 5 euros"


def test_real_mail_ru_utf8_subject() -> None:
    raw = corpus(SISIMAI / "bsd" / "lhost-mailru-05.eml")
    assert parse(raw, received_at=NOW, domain=DOMAIN).subject.startswith(
        "Ваше сообщение не доставлено")


def test_real_apple_mail_with_an_unpadded_encoded_name() -> None:
    mail = parse(corpus(SISIMAI / "not" / "is-not-bounce-02.eml"), received_at=NOW,
                 domain=DOMAIN)
    assert (mail.from_name, mail.from_address) == ("xpto", "dummy@example.com")
    assert mail.to == ["dummy2@example.com"]
    assert mail.message_id == "A3CE5E53-2501-4A47-9E48-ACB6137B9E96@example.com"
    assert mail.date == datetime(2018, 11, 8, 22, 39, 34, tzinfo=UTC)
    # The message forwarded as an attachment is an attachment, not part of the text.
    assert mail.text.strip() == "it shouldn't be considered as bounce"
    assert [(a.filename, a.content_type) for a in mail.attachments] == [
        ("original.eml", "message/rfc822")]
    assert b"Subject: original" in mail.attachments[0].payload


# --- addresses ------------------------------------------------------------------------------

def test_addresses_are_normalised_and_deduplicated() -> None:
    mail = parsed(headers(
        'From: "Martin, Alice (R&D)" <Alice.Martin@EXAMPLE.com>',
        "To: bob@example.com, Bob <BOB@example.com>, rd@lists.example.org",
        "To: carol@example.com",
        "Cc: =?UTF-8?Q?Zo=C3=AB?= <zoe@example.net>, undisclosed-recipients:;",
        "Subject: x"))
    assert mail.from_address == "alice.martin@example.com"
    assert mail.from_name == "Martin, Alice (R&D)"
    assert mail.to == ["bob@example.com", "rd@lists.example.org", "carol@example.com"]
    assert mail.cc == ["zoe@example.net"]


def test_idna_domains_are_written_in_ascii() -> None:
    mail = parsed(headers(
        "From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@XN--MNCHEN-3YA.de>",
        # A client that encoded the whole mailbox, domain included.
        "To: =?UTF-8?Q?Zo=C3=AB_<zoe@b=C3=BCcher.example>?=",
        "Subject: x"))
    assert (mail.from_name, mail.from_address) == ("Jürgen", "juergen@xn--mnchen-3ya.de")
    assert mail.to == ["zoe@xn--bcher-kva.example"]


@pytest.mark.parametrize("value", ["", "Alice", "<>", "alice@", "@example.com"])
def test_no_valid_from_is_recorded(value: str) -> None:
    mail = parsed(headers(f"From: {value}", "Subject: x"))
    assert mail.from_address == ""
    assert "no valid From address" in mail.defects


def test_raw_utf8_headers_are_decoded() -> None:
    raw = ("From: Zoë Martin <zoe@bücher.example>\n"
           "To: José <jose@münchen.de>\n"
           "Subject: Réunion à Paris\n"
           "Message-ID: <utf8@example.com>\n\nBonjour\n").encode()
    mail = parse(raw, received_at=NOW, domain=DOMAIN)
    assert mail.subject == "Réunion à Paris"
    assert (mail.from_name, mail.from_address) == ("Zoë Martin", "zoe@xn--bcher-kva.example")
    assert mail.to == ["jose@xn--mnchen-3ya.de"]


def test_encoded_words_next_to_non_ascii_text() -> None:
    assert decode_words("=?utf-8?q?R=C3=A9union?= à Paris") == "Réunion à Paris"


def test_raw_latin1_headers_are_read_as_windows_1252() -> None:
    """Old clients wrote 8-bit headers in their own charset without encoding them: bytes
    that are not UTF-8 are read as Windows-1252 rather than lost."""
    raw = (b"From: Ren\xe9 Dupont <rene@example.fr>\nSubject: R\xe9union \x96 budget\n"
           b"Message-ID: <latin1@example.com>\n\nBonjour\n")
    mail = parse(raw, received_at=NOW, domain=DOMAIN)
    assert mail.subject == "Réunion – budget"
    assert (mail.from_name, mail.from_address) == ("René Dupont", "rene@example.fr")
    assert mail.header("Subject") == "Réunion – budget"


# --- Date -----------------------------------------------------------------------------------

def test_date_is_read_and_converted_to_utc() -> None:
    mail = parsed(headers("From: a@example.com", "Date: Wed, 25 Nov 2026 09:00:00 -0100"))
    assert mail.date == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert not any("Date" in defect for defect in mail.defects)


def test_date_without_a_zone_is_taken_as_utc() -> None:
    mail = parsed(headers("From: a@example.com", "Date: 25 Nov 2026 09:00:00"))
    assert mail.date == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_missing_date_falls_back_to_the_arrival_time() -> None:
    mail = parsed(headers("From: a@example.com", "Subject: x"))
    assert mail.date == NOW
    assert "no Date header: the arrival time is used" in mail.defects


@pytest.mark.parametrize("value", ["", "not a date at all", "Wed, 32 Nov 2026 09:00:00 +0000",
                                   "Wed, 25 Nov 2026 25:61:00 +0000", "yesterday"])
def test_unreadable_date_falls_back_to_the_arrival_time(value: str) -> None:
    mail = parsed(headers("From: a@example.com", f"Date: {value}"))
    assert mail.date == NOW
    assert any(d.startswith("unreadable Date") for d in mail.defects)


@pytest.mark.parametrize("value", ["Wed, 25 Nov 2026 12:20:00 +0000",
                                   "Wed, 25 Nov 2026 13:10:00 -0500",
                                   "Fri, 01 Jan 2100 00:00:00 +0000"])
def test_date_in_the_future_is_clamped_to_the_arrival_time(value: str) -> None:
    mail = parsed(headers("From: a@example.com", f"Date: {value}"))
    assert mail.date == NOW
    assert "Date in the future: clamped to the arrival time" in mail.defects


def test_a_clock_a_few_minutes_fast_is_tolerated() -> None:
    mail = parsed(headers("From: a@example.com", "Date: Wed, 25 Nov 2026 12:10:00 +0000"))
    assert mail.date == NOW + timedelta(minutes=10)
    assert not mail.defects or all("Date" not in d for d in mail.defects)


def test_date_before_1980_falls_back_to_the_arrival_time() -> None:
    mail = parsed(headers("From: a@example.com", "Date: Thu, 01 Jan 1970 00:00:00 +0000"))
    assert mail.date == NOW
    assert "Date before 1980: the arrival time is used" in mail.defects


# --- Message-ID, In-Reply-To, References ----------------------------------------------------

def test_message_id_without_brackets() -> None:
    assert parsed(headers("From: a@example.com", "Message-ID: <abc@example.com>")) \
        .message_id == "abc@example.com"
    assert parsed(headers("From: a@example.com", "Message-Id: bare@example.com")) \
        .message_id == "bare@example.com"


def test_missing_message_id_is_derived_from_the_content() -> None:
    raw = headers("From: a@example.com", "Subject: x").encode()
    first, again = parsed(raw), parsed(raw)
    other = parsed(headers("From: a@example.com", "Subject: x", body="Other.\n"))
    assert first.message_id == derived_message_id(raw, DOMAIN)
    assert first.message_id.startswith("causerie-") and first.message_id.endswith(f"@{DOMAIN}")
    # An MTA retrying the same message gives the same id; another message another one.
    assert again.message_id == first.message_id
    assert other.message_id != first.message_id
    assert "no Message-ID: one was derived from the content" in first.defects


def test_in_reply_to_and_references() -> None:
    mail = parsed(headers(
        "From: a@example.com", "Message-ID: <me@example.com>",
        "In-Reply-To: <parent@example.com> (Alice's message of Tue, 24 Nov 2026)",
        "References: <root@example.com>\n\t<mid@example.com>\n <parent@example.com>"
        " <root@example.com>"))
    assert mail.in_reply_to == "parent@example.com"
    assert mail.references == ["root@example.com", "mid@example.com", "parent@example.com"]


def test_bare_in_reply_to_and_no_references() -> None:
    mail = parsed(headers("From: a@example.com", "In-Reply-To: parent@example.com"))
    assert mail.in_reply_to == "parent@example.com"
    assert mail.references == []
    assert parsed(headers("From: a@example.com")).in_reply_to == ""


def test_only_the_last_fifty_references_are_kept() -> None:
    refs = " ".join(f"<r{i}@example.com>" for i in range(60))
    mail = parsed(headers("From: a@example.com", f"References: {refs}"))
    assert mail.references == [f"r{i}@example.com" for i in range(10, 60)]


@pytest.mark.parametrize(("value", "ids"), [
    ("<a@x> <b@x>", ["a@x", "b@x"]),
    ("<a@x>,<b@x>,<a@x>", ["a@x", "b@x"]),
    ("a@x", ["a@x"]),
    ("<a@x> (comment <b@x>)", ["a@x", "b@x"]),
    ("", []),
    ("two words", []),
])
def test_message_ids(value: str, ids: list[str]) -> None:
    assert message_ids(value) == ids


# --- bodies and attachments -----------------------------------------------------------------

def _rich_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "rd@lists.example.org"
    message["Subject"] = "Chart"
    message["Message-ID"] = "<chart@example.com>"
    message.set_content("See the chart.\n")
    message.add_alternative('<p>See the <b>chart</b>: <img src="cid:chart@example.com"></p>',
                            subtype="html")
    message.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\nchart", maintype="image",
                                         subtype="png", cid="<chart@example.com>")
    message.add_attachment(b"%PDF-1.4 report", maintype="application", subtype="pdf",
                           filename="report.pdf")
    return message


def test_text_and_html_bodies() -> None:
    mail = parsed(_rich_message().as_bytes())
    assert mail.text == "See the chart.\n"
    assert mail.html.startswith('<p>See the <b>chart</b>: <img src="cid:chart@example.com">')
    assert mail.defects == ["no Date header: the arrival time is used"]


def test_attachments_and_inline_images() -> None:
    mail = parsed(_rich_message().as_bytes())
    by_type = {a.content_type: a for a in mail.attachments}
    assert set(by_type) == {"image/png", "application/pdf"}
    image, pdf = by_type["image/png"], by_type["application/pdf"]
    assert image.inline and image.content_id == "chart@example.com"
    assert image.payload == b"\x89PNG\r\n\x1a\nchart"
    assert not pdf.inline and pdf.content_id == ""
    assert (pdf.filename, pdf.payload) == ("report.pdf", b"%PDF-1.4 report")


def test_body_charsets_and_attachment_names() -> None:
    pdf = base64.b64encode(b"%PDF-1.4").decode()
    mail = parsed(f"""From: a@example.com
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me
--B
Content-Type: application/pdf
Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf
Content-Transfer-Encoding: base64

{pdf}
--B
Content-Type: application/pdf
Content-Disposition: attachment; filename="=?UTF-8?Q?d=C3=A9tails.pdf?="
Content-Transfer-Encoding: base64

{pdf}
--B
Content-Type: image/png
Content-Disposition: attachment; filename="logo.png"
Content-ID: <logo@example.com>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--B--
""")
    assert mail.text == "Café crème"
    assert [(a.filename, a.payload, a.inline) for a in mail.attachments] == [
        ("résumé.pdf", b"%PDF-1.4", False), ("détails.pdf", b"%PDF-1.4", False),
        # A Content-ID does not make a part inline when it says it is an attachment.
        ("logo.png", b"\x89PNG\r\n\x1a\n", False)]
    assert mail.attachments[2].content_id == "logo@example.com"


def test_an_unknown_body_charset_is_read_anyway() -> None:
    mail = parsed(b"From: a@example.com\nContent-Type: text/plain; charset=x-bogus\n\n"
                  b"na\xefve\n")
    assert mail.text.startswith("na") and mail.text.rstrip().endswith("ve")


def test_real_gif_attachment_is_decoded() -> None:
    mail = parse(corpus(CPYTHON / "msg_07.txt"), received_at=NOW, domain=DOMAIN)
    assert mail.text == "Hi there,\n\nThis is the dingus fish.\n"
    [gif] = mail.attachments
    assert (gif.filename, gif.content_type, gif.inline) == ("dingusfish.gif", "image/gif", False)
    assert gif.payload.startswith(b"GIF87a")


# --- defects are recorded, not fatal --------------------------------------------------------

def test_missing_mime_boundary_is_recorded() -> None:
    """CPython's msg_41: multipart/alternative without a boundary parameter."""
    mail = parse(corpus(CPYTHON / "msg_41.txt"), received_at=NOW, domain=DOMAIN)
    assert "NoBoundaryInMultipartDefect" in mail.defects
    assert (mail.from_name, mail.from_address) == ("Allison Dunlap", "xxx@example.com")
    assert mail.subject == "64423"
    assert mail.date == datetime(2004, 7, 11, 19, 9, 27, tzinfo=UTC)


@pytest.mark.parametrize(("name", "words"), [("msg_41.txt", "Blah blah blah"),
                                             ("msg_31.txt", "message 1")])
def test_body_of_a_multipart_without_its_boundary_is_kept_as_text(name: str,
                                                                   words: str) -> None:
    mail = parse(corpus(CPYTHON / name), received_at=NOW, domain=DOMAIN)
    assert words in mail.text


def test_undecodable_attachment_is_recorded_and_the_rest_kept() -> None:
    """CPython's msg_15: an Outlook Express message whose GIF is not base64, with an
    inner boundary equal to the outer one."""
    mail = parse(corpus(CPYTHON / "msg_15.txt"), received_at=NOW, domain=DOMAIN)
    assert "attachment 'xx.gif' could not be decoded" in mail.defects
    assert "StartBoundaryNotFoundDefect" in mail.defects
    assert mail.text.strip() == "Some removed test."
    assert "Some removed text." in mail.html
    assert mail.message_id == "xxxx"


def test_missing_header_body_separator_is_recorded() -> None:
    mail = parse(corpus(CPYTHON / "msg_35.txt"), received_at=NOW, domain=DOMAIN)
    assert "MissingHeaderBodySeparatorDefect" in mail.defects
    assert (mail.from_address, mail.subject) == ("aperson@dom.ain", "here's something interesting")
    assert "there's no separating newline here" in mail.text


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe", b"no headers at all",
                                 b"Content-Type: multipart/mixed; boundary=x\n\n--x\n--x--",
                                 b"From: a@example.com\nContent-Transfer-Encoding: base64\n\n"
                                 b"@@@not base64@@@"])
def test_garbage_never_raises(raw: bytes) -> None:
    mail = parse(raw, received_at=NOW, domain=DOMAIN)
    assert mail.date == NOW
    assert mail.message_id == derived_message_id(raw, DOMAIN)
    assert mail.defects
