"""One test per crash the fuzzing harness found in the parse/classify/extract steps and the
commit step, each the smallest input that raised before its fix (the processor marked the
message failed)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message as MimeMessage

from sqlmodel import Session, select

from bridge.app import App
from bridge.models import Message
from inbound.bounces import part_text
from inbound.classify import ClassifierConfig, classify
from inbound.extract import extract
from inbound.parse import decode_words, parse
from tests.reliability.fuzzing import DOMAIN, MEMBER, Harness

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
    part = MimeMessage()
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


def test_an_encoded_word_whose_charset_holds_a_nul() -> None:
    """A NUL in the charset of an RFC 2047 word in From, To or Cc (what the fuzzer's NUL
    insertion does to a corpus header): decode_words' fallback decoded the word with that name
    and let ValueError "embedded null character" out (UnicodeError for "idna"), and the
    message failed; the word is now read as Latin-1."""
    for charset in (b"iso-8859-1\x00", b"\x00", b"idna"):
        word = b"=?" + charset + b"?q?Ren=E9e?="
        raw = (b"From: " + word + b" <renee@example.com>\nTo: " + word + b" <b@example.com>\n"
               b"Cc: " + word + b" <c@example.com>\nSubject: " + word + b"\n\nbody\n")
        parsed = parse(raw, received_at=NOW, domain="lists.example.org")
        assert parsed.from_address == "renee@example.com" and parsed.from_name == "Renée"
        assert parsed.to == ["b@example.com"] and parsed.cc == ["c@example.com"]
        through(raw)


def test_an_encoded_word_whose_charset_name_is_not_ascii() -> None:
    """A flipped bit in an RFC 2047 word's charset ("=?UT\\xc6-8?B?", a mutated sisimai bounce
    of `bench.soak.fuzz --seed 1`, case 6188): the email package refuses a non-ASCII charset
    name with CharsetError, which decode_words let out of parse (the Subject), and the
    message failed; the word is now read as Latin-1."""
    word = b"=?UT\xc6-8?B?0JLQsNGI0LUg0YHQvtC+0LHRidC10L3QuNC1?="
    raw = (b"From: " + word + b" <mailer-daemon@example.net>\r\nTo: b@example.com\r\n"
           b"Subject: " + word + b". Mail failure.\r\n\r\nThis message was created "
           b"automatically by mail delivery software.\r\n")
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    assert parsed.from_address == "mailer-daemon@example.net"
    assert parsed.subject.endswith(". Mail failure.")
    through(raw)

def test_an_rfc2231_charset_parameter_the_email_package_cannot_read() -> None:
    """`charset*=` (RFC 2231) on an 8-bit part: the email package returns the parameter as a
    tuple, which get_payload() handed to bytes.decode (TypeError, reading a report in
    inbound.bounces); with a NUL in the parameter's own charset, get_content_charset() let
    ValueError "embedded null character" out (reading an invitation)."""
    for wrapper in (b"utf-8", b"utf-8\x00"):
        charset = b"charset*=" + wrapper + b"''utf-8"
        report = (b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail Returned to "
                  b"Sender\nContent-Type: multipart/report; report-type=delivery-status; "
                  b'boundary="b"\n\n--b\nContent-Type: text/plain; ' + charset
                  + b"\n\nr\xc3\xa9sum\xc3\xa9 550 5.1.1 <bob@example.com>\r\n--b--\n")
        through(report)
        invitation = (b"From: a@example.com\nSubject: Invite\nContent-Type: multipart/mixed; "
                      b"boundary=B\n\n--B\nContent-Type: text/plain\n\nSee it.\n--B\n"
                      b"Content-Type: text/calendar; " + charset + b"\n\nBEGIN:VCALENDAR\n"
                      b"BEGIN:VEVENT\nSUMMARY:R\xc3\xa9vision\nEND:VEVENT\nEND:VCALENDAR\n--B--\n")
        parsed = parse(invitation, received_at=NOW, domain="lists.example.org")
        assert "[Invitation] Révision" in extract(parsed, None, 10_000_000).text


def test_a_forwarded_thread_already_archived_is_not_stored_twice(app: App) -> None:
    """The same forwarded thread in a later batch (many of the fuzzer's cases carry one inner
    message): its Message-ID was not among those a batch looks up, so storing it again broke
    the unique key (IntegrityError: the row failed, on every retry). A message that carries
    itself as a forwarded attachment (same Message-ID) did the same within one message."""
    harness = Harness(app)

    def forward(message_id: str) -> bytes:
        return (f"From: Alice Martin <{MEMBER}>\nTo: fuzz@{DOMAIN}\nSubject: Fwd: inner\n"
                f"Message-ID: <{message_id}>\n\nSee below.\n\n---------- Forwarded message "
                "---------\nFrom: inner@example.com\nSubject: inner\n\ninner body\n").encode()

    itself = (f"From: Alice Martin <{MEMBER}>\nTo: fuzz@{DOMAIN}\nSubject: Fwd: itself\n"
              "Message-ID: <itself@example.com>\nContent-Type: multipart/mixed; boundary=B\n\n"
              "--B\nContent-Type: text/plain\n\nMyself.\n--B\nContent-Type: message/rfc822\n"
              "Content-Disposition: attachment\n\n"
              "From: inner@example.com\nMessage-ID: <itself@example.com>\nSubject: itself\n\n"
              "Me again.\n--B--\n").encode()
    for batch in ([forward("fwd-1@example.com")],
                  [forward("fwd-2@example.com"), forward("fwd-3@example.com"), itself]):
        ids = harness.send([(raw, MEMBER, [f"fuzz@{DOMAIN}"]) for raw in batch])
        harness.processor.run_until_idle()
        outcomes = harness.check(ids, batch)
        assert outcomes.counts == {"done": len(batch)}, outcomes.failures
    with Session(app.engine) as session:
        inner = session.exec(select(Message).where(Message.subject == "inner")).all()
        assert len(inner) == 1
        assert len(session.exec(select(Message).where(
            Message.message_id == "itself@example.com")).all()) == 1


def test_a_long_blank_line_in_a_forward_does_not_stall_the_field_match() -> None:
    """`^\\s*\\*?\\s*` (and `\\s*\\*?\\s*:`) around a forwarded header's name split a run of
    blanks between the two `\\s*` in every way: quadratic on a long blank line (30,000
    characters took seconds; the fuzzer's run stalled on a longer one in inbound.forwarded);
    the same pattern is now written without the ambiguity."""
    import time

    from inbound.forwarded import split_forward

    started = time.monotonic()
    forward = split_forward("Have a look.\n\n---------- Forwarded message ---------\n"
                            "From: Bob <bob@example.com>\nSubject: Hi\n\nHello.\n"
                            + " " * 100_000 + "x\n")
    assert time.monotonic() - started < 2  # a linearity guard, not a speed target
    assert forward is not None and forward.messages[0].author_address == "bob@example.com"


def test_a_report_with_a_huge_line_of_angle_brackets_is_read_in_linear_time() -> None:
    """flufl.bounce's GroupWise detector searches `<[^>]*>` in each line, quadratic on a run of
    "<" (a fuzzed report held the processor for minutes in the commit step's bounce handler);
    flufl is no longer asked about a message with a line longer than any report has."""
    import time

    raw = (b"From: MAILER-DAEMON@example.net\nTo: bounces@lists.example.org\n"
           b"Subject: Undeliverable\nX-Mailer: Novell GroupWise Internet Agent 5.5.3.1\n"
           b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
           b"The message could not be delivered.\n" + b"<" * 100_000 + b"\n--B--\n")
    start = time.perf_counter()
    through(raw)
    assert time.perf_counter() - start < 5  # a linearity guard, not a speed target


def test_a_from_address_longer_than_any_address_is_not_one(app: App) -> None:
    """A From address of 190,000 characters (a run of 0xFF bytes in "barry@...", `--seed 2`):
    parse kept it as the sender's address, and the notice answering the empty post folded it
    into a To header for minutes (the email package folds a long non-ASCII header word by
    word), stalling the processor's batch. An address longer than RFC 5321 allows (254
    characters) is none: the post is refused without a notice."""
    import time

    raw = (b"From: barr" + b"\xff" * 30_000 + b"y@example.com\nTo: fuzz@" + DOMAIN.encode()
           + b"\nSubject: Here is your dingus fish\n\n\n")
    parsed = parse(raw, received_at=NOW, domain="lists.example.org")
    assert parsed.from_address == ""
    harness = Harness(app)
    started = time.monotonic()
    ids = harness.send([(raw, MEMBER, [f"fuzz@{DOMAIN}"])])
    harness.processor.run_until_idle()
    assert time.monotonic() - started < 10  # a linearity guard, not a speed target
    assert harness.check(ids, [raw]).counts == {"rejected": 1}


def test_a_from_name_with_a_long_run_of_address_characters_is_read_in_linear_time() -> None:
    """A DSN whose From name holds 100,000 "?" and whose address the parsers refuse (a 0xF0
    byte in its domain, a mutated sisimai bounce of `--seed 1`): the last-resort address
    search of inbound.bounces tried its pattern from every position of the run, quadratic
    (30 s to classify the message); a match now starts only where a run starts."""
    import time

    raw = (b"From: Mail Delivery Subsys" + b"?" * 100_000 + b"tem <postmaster@example.co.j"
           b"\xf0>\nTo: <shironeko@example.org>\nSubject: Returned mail: see transcript for "
           b"details\n\nThe original message was received at Sat, 28 Nov 2015.\n")
    start = time.perf_counter()
    through(raw)
    assert time.perf_counter() - start < 5  # a linearity guard, not a speed target
