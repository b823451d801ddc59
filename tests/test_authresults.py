"""Authentication-Results parsing, the sender verdict, and DKIM checks without the network."""

from __future__ import annotations

import email
from email import policy
from email.message import Message
from email.policy import Policy
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest

from inbound.authresults import (
    AuthResults,
    parse_authentication_results,
    parse_header,
    sender_verdict,
    verify_dkim,
)

FIXTURES = Path(__file__).parent / "fixtures" / "classify"
TRUSTED = ("mx.corp.example",)
POLICIES = pytest.mark.parametrize(
    "pol", [policy.compat32, policy.default], ids=["compat32", "default"]
)


def message(headers: str, pol: Policy = policy.compat32) -> Message:
    text = headers.strip("\n") + (
        "\nFrom: Alice <alice@bank.example>\nTo: rd@lists.example.net\nSubject: Hi\n\nBody\n"
    )
    return email.message_from_string(text, policy=pol)


GMAIL = """\
Authentication-Results: mx.corp.example;
       dkim=pass header.i=@bank.example header.s=20230601 header.b=AbCdEf12;
       spf=pass (corp.example: domain of alice@bank.example designates 209.85.220.41 as
 permitted sender) smtp.mailfrom=alice@bank.example;
       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=bank.example
"""

# OpenDMARC, OpenDKIM and an SPF policy daemon each add their own header.
MILTERS = """\
Authentication-Results: mx.corp.example; dmarc=fail (p=reject dis=none) header.from=bank.example
Authentication-Results: mx.corp.example;
	dkim=fail reason="signature verification failed" (2048-bit key; unprotected)
	header.d=bank.example header.i=@bank.example header.b="Xy;Z"
Authentication-Results: mx.corp.example 1; spf=softfail smtp.mailfrom=bank.example
Received: from relay.example (relay.example [192.0.2.7]) by mx.corp.example
Authentication-Results: relay.example; dmarc=pass header.from=bank.example
"""

# An attacker wrote a header with our authserv-id; it sits below someone else's.
FORGED = """\
Authentication-Results: mx.corp.example; spf=pass smtp.mailfrom=bank.example
Authentication-Results: relay.attacker.example; none
Authentication-Results: mx.corp.example; dmarc=pass header.from=bank.example;
 dkim=pass header.d=bank.example
"""


@POLICIES
def test_gmail_style_header(pol: Policy) -> None:
    auth = parse_authentication_results(message(GMAIL, pol), TRUSTED)
    assert auth == AuthResults(dkim="pass", spf="pass", dmarc="pass", dmarc_policy="reject",
                               from_domain="bank.example", dkim_domains=("bank.example",),
                               authserv_id="mx.corp.example")
    assert sender_verdict(auth) == "pass"


@POLICIES
def test_one_header_per_milter_and_untrusted_ones_ignored(pol: Policy) -> None:
    auth = parse_authentication_results(message(MILTERS, pol), TRUSTED)
    assert (auth.dkim, auth.spf, auth.dmarc, auth.dmarc_policy) == (
        "fail", "softfail", "fail", "reject")
    assert auth.dkim_domains == ()
    assert sender_verdict(auth) == "fail"


@POLICIES
def test_a_trusted_id_below_a_foreign_header_is_not_believed(pol: Policy) -> None:
    auth = parse_authentication_results(message(FORGED, pol), TRUSTED)
    assert auth.spf == "pass"
    assert auth.dmarc is None and auth.dkim is None
    assert sender_verdict(auth) == "none"


def test_untrusted_only_gives_nothing() -> None:
    auth = parse_authentication_results(message(GMAIL), ("mx.other.example",))
    assert auth == AuthResults(from_domain="bank.example")
    assert sender_verdict(auth) == "none"


def test_authserv_id_is_case_insensitive_and_none_is_understood() -> None:
    auth = parse_authentication_results(
        message("Authentication-Results: MX.Corp.Example; none"), ["mx.corp.example"])
    assert auth.authserv_id is None  # "none" reports no result at all
    assert auth.dmarc is None


def test_parse_header_comments_quotes_and_versions() -> None:
    authserv_id, results = parse_header(
        'mx.corp.example 1; spf = pass (sender; IP is 192.0.2.1) smtp.mailfrom="a;b@x.example";'
        " dkim/1=pass header.d=x.example; iprev=pass policy.iprev=192.0.2.1 (mail.x.example)"
    )
    assert authserv_id == "mx.corp.example"
    assert [(r.method, r.result) for r in results] == [
        ("spf", "pass"), ("dkim", "pass"), ("iprev", "pass")]
    assert results[0].properties == {"smtp.mailfrom": "a;b@x.example"}
    assert results[0].comments == ("sender; IP is 192.0.2.1",)


def test_dkim_passes_if_any_signature_passes() -> None:
    headers = ("Authentication-Results: mx.corp.example; dkim=fail header.d=esp.example;"
               " dkim=pass header.d=bank.example")
    auth = parse_authentication_results(message(headers), TRUSTED)
    assert auth.dkim == "pass" and auth.dkim_domains == ("bank.example",)
    assert sender_verdict(auth) == "pass"  # aligned with From: bank.example


@pytest.mark.parametrize(
    ("auth", "verdict"),
    [
        (AuthResults(dmarc="fail", dkim="pass", dkim_domains=("bank.example",),
                     from_domain="bank.example"), "fail"),
        (AuthResults(dmarc="pass"), "pass"),
        (AuthResults(dmarc="temperror"), "none"),
        (AuthResults(dkim="pass", dkim_domains=("mail.bank.example",),
                     from_domain="bank.example"), "pass"),
        (AuthResults(dkim="pass", dkim_domains=("esp.example",), from_domain="bank.example"),
         "none"),
        (AuthResults(spf="pass", from_domain="bank.example"), "none"),
        (AuthResults(), "none"),
    ],
)
def test_sender_verdict(auth: AuthResults, verdict: str) -> None:
    assert sender_verdict(auth) == verdict


# --- DKIM with dkimpy and a static DNS table ------------------------------------------------

RAW = (
    b"From: Alice <alice@bank.example>\r\nTo: rd@lists.example.net\r\n"
    b"Subject: Quarterly figures\r\nDate: Mon, 3 Jun 2024 08:12:45 +0000\r\n"
    b"Message-ID: <q3@bank.example>\r\n\r\nThe figures are attached.\r\n"
)


def signed(raw: bytes = RAW) -> bytes:
    key = (FIXTURES / "dkim-test-private.pem").read_bytes()
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    return bytes(dkim.sign(raw, b"sel1", b"bank.example", key, include_headers=headers)) + raw


def table(name: str) -> str | None:
    records = {"sel1._domainkey.bank.example":
               (FIXTURES / "dkim-test-public.txt").read_text().strip()}
    return records.get(name)


def test_valid_signature_passes() -> None:
    auth = verify_dkim(signed(), table)
    assert auth == AuthResults(dkim="pass", from_domain="bank.example",
                               dkim_domains=("bank.example",))
    assert sender_verdict(auth) == "pass"


def test_changed_body_fails() -> None:
    tampered = signed().replace(b"attached", b"ATTACHED")
    assert verify_dkim(tampered, table).dkim == "fail"


def test_unsigned_message_is_none() -> None:
    assert verify_dkim(RAW, table).dkim == "none"


def test_missing_key_is_permerror() -> None:
    assert verify_dkim(signed(), lambda name: None).dkim == "permerror"


def test_dns_failure_is_temperror() -> None:
    def broken(name: str) -> str | None:
        raise TimeoutError("resolver timed out")

    assert verify_dkim(signed(), broken).dkim == "temperror"
