"""One test per crash the fuzzing harness found in the parse/classify steps, each the
smallest input that raised before its fix (the processor marked the message failed)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message

from inbound.bounces import part_text
from inbound.classify import ClassifierConfig, classify
from inbound.extract import extract
from inbound.parse import decode_words, parse

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CONFIG = ClassifierConfig(instance_name="Test", our_domains=("lists.example.org",),
                          list_ids=("*.lists.example.org",))


def through(raw: bytes) -> None:
    """parse → classify → extract, as the processor's prepare phase runs them."""
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    verdict = classify(parsed.message, "alice@example.com", CONFIG)
    if verdict.kind not in ("bounce", "feedback", "auto_reply", "loop"):
        extract(parsed, None, 1 << 20)


def test_8bit_address_headers_are_read_as_text() -> None:
    """compat32 returns a `Header` for a To/Cc with raw 8-bit bytes; decode_words used `in`
    on it (TypeError)."""
    raw = (b"From: a@example.com\nTo: =?utf-8?q?x?= \xe9t\xe9 <b@example.com>\n"
           b"Cc: \xff <c@example.com>\n\nbody\n")
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    assert parsed.to == ["b@example.com"] and parsed.cc == ["c@example.com"]
    through(raw)


def test_a_base64_word_that_is_not_base64_is_kept_as_text() -> None:
    """decode_header raises HeaderParseError on it, inside decode_words' own fallback."""
    assert decode_words("=?utf-8?B?!!!notbase64?=") == "=?utf-8?B?!!!notbase64?="
    through(b"From: =?utf-8?B?!!!notbase64?= <a@example.com>\n"
            b"Subject: =?utf-8?B?!!!notbase64?=\nTo: =?utf-8?B?!!?= <b@example.com>\n\nx\n")


def test_bounce_headers_with_bad_base64_words() -> None:
    """inbound.bounces._readable let HeaderParseError out (a DSN with a mangled Subject)."""
    through(b"From: MAILER-DAEMON@example.net\nSubject: =?UTF-8?B?0JLQsN|GI0LU=?= failure\n"
            b"Content-Type: text/plain\n\nThis message was created automatically by mail "
            b"delivery software.\n\nA message that you sent could not be delivered:\n"
            b"  bob@example.com\n    550 5.1.1 user unknown\n")


def test_8bit_parts_with_a_charset_python_cannot_use() -> None:
    """get_payload() raises on 8-bit text declared "idna" or with a NUL in the charset
    (UnicodeError, ValueError) in inbound.bounces' part reading."""
    for charset in (b"idna", b"utf-8\x00"):
        raw = (b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail Returned to "
               b"Sender\nContent-Type: multipart/report; report-type=delivery-status; "
               b'boundary="b"\n\n--b\nContent-Type: text/plain; charset="' + charset
               + b'"\n\nr\xe9sum\xe9 550 5.1.1 <bob@example.com>\r\n--b\n'
               b'Content-Type: message/rfc822; charset="' + charset + b'"\n\n'
               b"To: bob@example.com\n\nr\xe9\n--b--\n")
        through(raw)
    part = Message()
    part.set_payload("caf\udce9\r\n")
    part["Content-Type"] = 'text/plain; charset="idna"'
    assert isinstance(part_text(part), str)


def test_mime_nested_deeper_than_the_recursion_limit() -> None:
    """1,000 nested multiparts: mail-parser and then the stdlib fallback both raised
    RecursionError; the headers are kept and the body is read as text."""
    body = b"Content-Type: text/plain\n\nDeep inside.\n"
    for depth in range(1000):
        body = (b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (depth, depth)
                + body + b"\n--b%d--\n" % depth)
    raw = b"From: a@example.com\nSubject: deep\nMessage-ID: <deep@example.com>\n" + body
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    assert parsed.message_id == "deep@example.com" and parsed.subject == "deep"
    assert "Deep inside." in parsed.text
    through(raw)


def test_a_bare_message_id_never_carries_a_line_separator() -> None:
    """A bare In-Reply-To with \\x0b, \\x0c or \\x1c-\\x1e (no space) was kept as an id; the notice
    composer (strict header policy) then raised 'Header values may not contain linefeed'."""
    for separator in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e"):
        raw = (f"From: a@example.com\nIn-Reply-To: abc{separator}Bcc:x@y\n"
               f"References: abc{separator}def\n\nbody\n").encode()
        parsed = parse(raw, received_at=NOW, domain="lists.example.org")
        assert parsed.in_reply_to == "" and parsed.references == [], separator


def test_a_long_blank_line_does_not_stall_the_forward_check() -> None:
    """`^\\s*(rule)?\\s*` backtracked quadratically on a long run of blanks (90 KB took
    minutes in inbound.forwarded); the same pattern is now written without the ambiguity."""
    import time

    from inbound.forwarded import has_forward_marker

    started = time.monotonic()
    assert not has_forward_marker(" " * 100_000 + "x")
    assert has_forward_marker("---------- Forwarded message ---------")
    assert has_forward_marker("   Forwarded message")
    assert time.monotonic() - started < 1


def test_no_nul_reaches_a_stored_or_queried_text() -> None:
    """PostgreSQL refuses NUL in text: a From address with NULs made the batch's sender query
    raise outside the per-message savepoint — an exception out of run_once, on every retry."""
    raw = (b"From: A <inter\x00\x00net-drafts@ietf.org>\nTo: b\x00@example.com\n"
           b"Subject: x\x00y\nMessage-ID: <a\x00b@example.com>\n\nte\x00xt\n")
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    values = [parsed.from_address, parsed.from_name, parsed.subject, parsed.message_id,
              parsed.text, *parsed.to]
    assert not any("\x00" in value for value in values), values
    assert parsed.from_address == "internet-drafts@ietf.org"


def test_an_invitation_with_an_unusable_charset_is_still_read() -> None:
    """A text/calendar part whose charset Python cannot use (a NUL in it, "idna", a quote,
    an unknown name) failed the extract step; it is read as UTF-8."""
    for charset in ("utf\x008", "idna", '"', "x-bogus"):
        raw = ("From: a@example.com\r\nTo: rd@lists.example.org\r\nSubject: Invite\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
               "--B\r\nContent-Type: text/plain\r\n\r\nSee the invitation.\r\n"
               f'--B\r\nContent-Type: text/calendar; charset="{charset}"\r\n\r\n'
               "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Review\r\nEND:VEVENT\r\n"
               "END:VCALENDAR\r\n--B--\r\n").encode("latin-1")
        parsed = parse(raw, received_at=NOW, domain="lists.example.org")
        assert "[Invitation] Review" in extract(parsed, None, 10_000_000).text


def test_lone_surrogates_never_reach_the_database() -> None:
    """Bytes a broken charset leaves as lone surrogates made the UTF-8 encoder of the
    database driver raise; every stored text is now valid Unicode."""
    raw = ("From: =?utf-8?b?QWxpY2Ug7aCA?= <a@example.com>\r\nTo: rd@lists.example.org\r\n"
           "Subject: bad \udcff bytes\r\n\r\nBody \udcfe here.\r\n").encode("utf-8",
                                                                       "surrogateescape")
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    extracted = extract(parsed, None, 10_000_000)
    for value in (parsed.subject, parsed.from_name, parsed.text, extracted.text):
        value.encode("utf-8")  # raises on a lone surrogate


def test_a_bounce_with_a_huge_rule_line_is_read_in_linear_time() -> None:
    """A report whose text holds a line of tens of thousands of dashes made the separator
    search quadratic (the fuzzer's run stalled on it); it is now linear."""
    import time

    line = "-" * 60_000
    raw = ("From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@lists.example.org\r\n"
           "Subject: Undelivered Mail Returned to Sender\r\n\r\n"
           f"This is the mail system.\r\n{line}\r\n<bob@example.com>: user unknown\r\n"
           ).encode("ascii")
    start = time.perf_counter()
    through(raw)
    assert time.perf_counter() - start < 10  # a linearity guard, not a speed target
