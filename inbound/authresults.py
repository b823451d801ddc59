"""Sender authentication: Authentication-Results (RFC 8601) from our upstream, and DKIM.

Only the upstream MTA's word counts. Anyone can write an Authentication-Results header into
their message, even with our upstream's authserv-id, so the headers read are the top-most
run of headers whose authserv-id is trusted: the first trusted header from the top and the
trusted ones directly below it (OpenDKIM, OpenDMARC and an SPF milter each add their own).
The first untrusted Authentication-Results header ends the run; a "trusted" one below it
was written before our upstream saw the message, by someone else.

Without such a header, verify_dkim() checks the DKIM signatures itself with dkimpy, through
a DNS lookup function the caller passes in (tests pass a static table).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type hints

from bridge.charsets import header_text, header_values
from inbound.bounces import normalise_address

log = logging.getLogger("causerie.inbound")


@dataclass(frozen=True)
class AuthResults:
    """What our upstream (or our own DKIM check) says about the author's domain.

    Results are RFC 8601 result words in lower case ("pass", "fail", "softfail", "none",
    "temperror", ...), or None when the method was not reported.
    """

    dkim: str | None = None
    spf: str | None = None
    dmarc: str | None = None
    dmarc_policy: str | None = None  # the domain's published p= ("none", "quarantine", ...)
    from_domain: str | None = None  # the author's domain (header.from, else the From header)
    dkim_domains: tuple[str, ...] = ()  # d= of the signatures that passed
    authserv_id: str | None = None  # whose header it was


@dataclass(frozen=True)
class MethodResult:
    """One "method=result" statement of an Authentication-Results header."""

    method: str
    result: str
    properties: dict[str, str] = field(default_factory=dict)  # "header.d" -> "example.org"
    comments: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# RFC 8601 syntax
# ---------------------------------------------------------------------------------------------


def _scan(value: str) -> tuple[list[str], list[list[str]]]:
    """Split a header value at ";" outside quotes and comments.

    Returns the pieces with their comments removed, and each piece's comments.
    """
    pieces: list[str] = []
    comments: list[list[str]] = []
    text: list[str] = []
    piece_comments: list[str] = []
    comment: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            (comment if depth else text).append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            text.append(char)
            quoted = char != '"'
        elif char == "(":
            if depth:
                comment.append(char)
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if depth:
                comment.append(char)
            else:
                piece_comments.append("".join(comment).strip())
                comment = []
                text.append(" ")
        elif depth:
            comment.append(char)
        elif char == '"':
            quoted = True
            text.append(char)
        elif char == ";":
            pieces.append("".join(text))
            comments.append(piece_comments)
            text, piece_comments = [], []
        else:
            text.append(char)
    pieces.append("".join(text))
    comments.append(piece_comments)
    return pieces, comments


_EQUALS_RE = re.compile(r"\s*=\s*")
_SLASH_RE = re.compile(r"\s*/\s*")


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def parse_header(value: str) -> tuple[str, list[MethodResult]]:
    """(authserv-id lower-cased, its results) of one Authentication-Results value."""
    pieces, comments = _scan(" ".join(value.split()))
    head = pieces[0].split()
    authserv_id = head[0].lower() if head else ""
    results: list[MethodResult] = []
    for piece, piece_comments in zip(pieces[1:], comments[1:], strict=True):
        tokens = _SLASH_RE.sub("/", _EQUALS_RE.sub("=", piece.strip())).split()
        if not tokens or "=" not in tokens[0]:
            continue  # "none", or something that is not a result
        method, _, result = tokens[0].partition("=")
        properties: dict[str, str] = {}
        for token in tokens[1:]:
            name, equals, prop = token.partition("=")
            if equals:
                properties.setdefault(name.lower(), _unquote(prop))
        results.append(MethodResult(
            method=method.split("/")[0].lower(),
            result=_unquote(result).lower(),
            properties=properties,
            comments=tuple(piece_comments),
        ))
    return authserv_id, results


# ---------------------------------------------------------------------------------------------
# From headers to AuthResults
# ---------------------------------------------------------------------------------------------

_POLICY_COMMENT_RE = re.compile(r"(?:^|\s)p=([a-z]+)", re.IGNORECASE)


def trusted_results(
    msg: Message, trusted_authserv_ids: Iterable[str]
) -> tuple[str | None, list[MethodResult]]:
    """(authserv-id, results) of the top-most run of trusted Authentication-Results headers."""
    trusted = {tid.strip().lower() for tid in trusted_authserv_ids if tid.strip()}
    results: list[MethodResult] = []
    run_id: str | None = None
    for value in header_values(msg, "Authentication-Results"):
        authserv_id, header_results = parse_header(value)
        if authserv_id in trusted:
            run_id = run_id or authserv_id
            results.extend(header_results)
        elif run_id is not None:
            break
    return run_id, results


def _combined(results: list[MethodResult], method: str) -> MethodResult | None:
    """The result of `method`: the first "pass" if there is one, else the first."""
    mine = [r for r in results if r.method == method]
    return next((r for r in mine if r.result == "pass"), mine[0] if mine else None)


def _dmarc_policy(result: MethodResult) -> str | None:
    for name in ("policy.dmarc", "policy.published-domain-policy"):
        if result.properties.get(name):
            return result.properties[name].lower()
    for comment in result.comments:
        found = _POLICY_COMMENT_RE.search(comment)
        if found:
            return found.group(1).lower()
    return None


def _signing_domain(result: MethodResult) -> str:
    domain = result.properties.get("header.d", "")
    if not domain:
        domain = result.properties.get("header.i", "").rpartition("@")[2]
    return domain.strip().lower()


def _author_domain(msg: Message) -> str | None:
    address = normalise_address(header_text(msg, "From"))
    return address.rpartition("@")[2] or None


def parse_authentication_results(
    msg: Message, trusted_authserv_ids: Iterable[str]
) -> AuthResults:
    """The dkim/spf/dmarc results that our trusted upstream recorded in `msg`."""
    authserv_id, results = trusted_results(msg, trusted_authserv_ids)
    if not results:
        return AuthResults(from_domain=_author_domain(msg))
    dkim_result = _combined(results, "dkim")
    spf = _combined(results, "spf")
    dmarc_result = _combined(results, "dmarc")
    from_domain = (dmarc_result.properties.get("header.from") if dmarc_result else None)
    passing = tuple(dict.fromkeys(
        _signing_domain(r) for r in results if r.method == "dkim" and r.result == "pass"
    ))
    return AuthResults(
        dkim=dkim_result.result if dkim_result else None,
        spf=spf.result if spf else None,
        dmarc=dmarc_result.result if dmarc_result else None,
        dmarc_policy=_dmarc_policy(dmarc_result) if dmarc_result else None,
        from_domain=(from_domain or "").lower() or _author_domain(msg),
        dkim_domains=tuple(d for d in passing if d),
        authserv_id=authserv_id,
    )


def _aligned(signing_domain: str, author_domain: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix list."""
    return (signing_domain == author_domain
            or author_domain.endswith("." + signing_domain)
            or signing_domain.endswith("." + author_domain))


def sender_verdict(auth: AuthResults) -> str:
    """"pass", "fail" (DMARC failed: the caller holds the post) or "none".

    DMARC decides when it was evaluated. Without a DMARC result, a passing DKIM signature of
    the author's own domain (relaxed alignment) is a pass; anything else says nothing.
    """
    if auth.dmarc == "fail":
        return "fail"
    if auth.dmarc == "pass":
        return "pass"
    if auth.dkim == "pass" and auth.from_domain and any(
        _aligned(domain, auth.from_domain) for domain in auth.dkim_domains
    ):
        return "pass"
    return "none"


# ---------------------------------------------------------------------------------------------
# DKIM verification with dkimpy
# ---------------------------------------------------------------------------------------------

DnsLookup = Callable[[str], "str | bytes | None"]


class _LookupFailed(dkim.DnsTimeoutError):  # type: ignore[misc]
    """The caller's DNS lookup raised: a temporary error, not a bad signature."""


def verify_dkim(raw: bytes, dns_lookup: DnsLookup) -> AuthResults:
    """Check every DKIM-Signature of the raw message; never touches the network itself.

    `dns_lookup(name)` gets a TXT name like "sel._domainkey.example.org" and returns the
    record's text (or None when there is none); it may raise OSError or TimeoutError, which
    gives "temperror". dkim is "pass" when one signature verifies, "fail" when they do not,
    "permerror" when no signature's key is published, "none" without any signature.
    """
    failures: list[str] = []
    missing: list[str] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text_name = name.decode("ascii", "replace").rstrip(".")
        try:
            record = dns_lookup(text_name)
        except (OSError, TimeoutError) as error:
            failures.append(str(error))
            raise _LookupFailed(str(error)) from error
        if record is None:
            missing.append(text_name)
            return None
        return record if isinstance(record, bytes) else record.encode("ascii", "replace")

    from_domain = None
    with contextlib.suppress(Exception):
        from_domain = _author_domain(message_from_bytes(raw))
    try:
        checker = dkim.DKIM(raw, logger=log)
    except dkim.DKIMException:
        return AuthResults(dkim="permerror", from_domain=from_domain)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    if not count:
        return AuthResults(dkim="none", from_domain=from_domain)
    passing: list[str] = []
    outcome = "fail"
    for index in range(count):
        try:
            ok = checker.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.ValidationError:  # body hash mismatch and the like: the signature fails
            continue
        except dkim.DKIMException:  # a malformed signature or key
            outcome = "permerror"
            continue
        if ok and checker.domain:
            passing.append(checker.domain.decode("ascii", "replace").lower())
    if passing:
        outcome = "pass"
    elif failures:
        outcome = "temperror"
    elif len(missing) == count:
        outcome = "permerror"  # no key published for any signature (RFC 6376 §6.1.2)
    return AuthResults(dkim=outcome, from_domain=from_domain, dkim_domains=tuple(passing))
