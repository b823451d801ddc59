"""The addresses this instance answers for, as a table of patterns with named parts.

A recipient is matched against the patterns in order (like Salmon's routes or Mailman's
sub-addresses). The router is an object built from the settings and passed to whoever needs
it; it asks `community_exists` (passed in) whether a slug is a community, and
`token_valid` (passed in, from the reply-token scheme) whether a token is genuine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr

SLUG_RE = r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"
TOKEN_RE = r"[a-z2-7]{16,64}"
COMMANDS = ("subscribe", "unsubscribe", "help", "owner")
# Local parts that can never be community slugs.
RESERVED = frozenset({"reply", "bounces", "private", "postmaster", "abuse", "mailer-daemon",
                      "noreply", "no-reply", "moderate", "digest"})


_TOKEN_LOCALS = frozenset({"reply", "private", "bounces", "moderate", "postmaster", "digest"})


class RouteKind:
    POST = "post"            # SLUG@domain
    COMMAND = "command"      # SLUG+subscribe@, +unsubscribe@, +help@
    OWNER = "owner"          # SLUG+owner@
    REPLY = "reply"          # reply+TOKEN@ (a reply into one conversation)
    PRIVATE = "private"      # private+TOKEN@ (forwarded to an author, never posted)
    BOUNCE = "bounce"        # bounces+TOKEN@ (VERP)
    MODERATE = "moderate"    # moderate+TOKEN@ (a moderator's decision)
    POSTMASTER = "postmaster"  # RFC 5321 requires accepting postmaster@ for our domains
    DIGEST = "digest"        # digest@ (a reply to a digest: explained, never posted)


@dataclass(frozen=True)
class Route:
    kind: str
    address: str
    slug: str = ""
    command: str = ""
    token: str = ""


class NotOurDomain(Exception):
    """The recipient's domain is not served here: relaying is refused."""


class UnknownAddress(Exception):
    """The domain is ours but no pattern (or no community) matches the local part."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"{address}: {reason}")


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (RouteKind.POSTMASTER, re.compile(r"^postmaster$")),
    (RouteKind.DIGEST, re.compile(r"^digest$")),
    (RouteKind.REPLY, re.compile(rf"^reply\+(?P<token>{TOKEN_RE})$")),
    (RouteKind.PRIVATE, re.compile(rf"^private\+(?P<token>{TOKEN_RE})$")),
    (RouteKind.BOUNCE, re.compile(rf"^bounces\+(?P<token>{TOKEN_RE})$")),
    (RouteKind.MODERATE, re.compile(rf"^moderate\+(?P<token>{TOKEN_RE})$")),
    (RouteKind.OWNER, re.compile(rf"^(?P<slug>{SLUG_RE})\+owner$")),
    (RouteKind.COMMAND,
     re.compile(rf"^(?P<slug>{SLUG_RE})\+(?P<command>subscribe|unsubscribe|help)$")),
    (RouteKind.POST, re.compile(rf"^(?P<slug>{SLUG_RE})$")),
)


# A bare ASCII addr-spec (dot-atom local part, LDH labels of at most 63 characters): what SMTP
# envelopes almost always hold, and what the full parse below would give back unchanged.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*")


# RFC 5321 (4.5.3.1.3): a path holds at most 256 octets, so an address at most 254. A longer
# one in a From header is garbage, and costly: the notice answering it folded a 190,000-
# character To header for minutes (the fuzzer's run).
MAX_ADDRESS = 254


def normalise_address(address: str) -> str:
    """Lower-case an address and write its domain in ASCII (IDNA); '' when it is not one."""
    if len(address) <= MAX_ADDRESS and _PLAIN_ADDRESS.fullmatch(address):  # the common case
        return address.lower()
    _, addr = parseaddr(address)
    addr = addr.strip().strip("<>")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or len(addr) > MAX_ADDRESS:
        return ""
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    return f"{local.lower()}@{domain.lower()}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class AddressRouter:
    def __init__(
        self,
        domains: tuple[str, ...],
        community_exists: Callable[[str], bool],
        token_valid: Callable[[str, str], bool] = lambda kind, token: True,
        community_cached: Callable[[str], bool] = lambda slug: False,
    ) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self.primary_domain = domains[0].lower()
        self.community_exists = community_exists
        self.token_valid = token_valid
        self.community_cached = community_cached

    def is_ours(self, address: str) -> bool:
        return domain_of(address) in self.domains

    def needs_lookup(self, recipient: str) -> bool:
        """Whether routing `recipient` may have to ask the database (run it in a thread)."""
        local = normalise_address(recipient).rpartition("@")[0]
        slug = local.partition("+")[0]
        return bool(slug) and slug not in _TOKEN_LOCALS and not self.community_cached(slug)

    def route(self, recipient: str) -> Route:
        """The route for `recipient`, or NotOurDomain / UnknownAddress saying why not."""
        address = normalise_address(recipient)
        if not address:
            raise UnknownAddress(recipient, "not a valid mail address")
        if not self.is_ours(address):
            raise NotOurDomain(address)
        local = address.rpartition("@")[0]
        for kind, pattern in _PATTERNS:
            match = pattern.match(local)
            if match is None:
                continue
            parts = match.groupdict()
            slug = parts.get("slug") or ""
            token = parts.get("token") or ""
            if slug and (slug in RESERVED or not self.community_exists(slug)):
                raise UnknownAddress(address, f"no community named {slug!r} here")
            if token and not self.token_valid(kind, token):
                raise UnknownAddress(address, "this reply address is not valid (expired or"
                                              " mistyped); reply to a recent message")
            return Route(kind=kind, address=address, slug=slug,
                         command=parts.get("command") or "", token=token)
        raise UnknownAddress(address, "no such address here")

    def posting_address(self, slug: str) -> str:
        return f"{slug}@{self.primary_domain}"
