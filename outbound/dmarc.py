"""DMARC policy lookups, to decide whether a post's From must be rewritten.

When the author's domain publishes `p=quarantine` or `p=reject` (or `sp=` for a
sub-domain), a copy sent by us with the author's From would fail DMARC at the recipient
(our footer breaks the author's DKIM signature and our servers are not in their SPF), so
the copy goes out "From: Author via Community <slug@domain>".

Two resolvers implement the `TxtResolver` protocol: `DnsTxtResolver` (dnspython) and
`StaticTxtResolver` (a table, for tests and for administrators who want to pin a policy).
`DmarcPolicies` adds a cache with a time to live, so one lookup serves a whole fan-out.
Nothing here reaches the network unless a `DnsTxtResolver` is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bridge.clock import Clock, SystemClock

log = logging.getLogger("causerie.delivery")

STRICT = frozenset({"quarantine", "reject"})


class TxtResolver(Protocol):
    def txt(self, name: str) -> list[str]:
        """The TXT strings published at `name` ([] when none or the lookup failed)."""
        ...


class DnsTxtResolver:
    """TXT lookups through dnspython, with a short timeout: a slow DNS must not stall mail."""

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout

    def txt(self, name: str) -> list[str]:
        import dns.exception
        import dns.resolver

        try:
            answer = dns.resolver.resolve(name, "TXT", lifetime=self.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            log.debug("TXT %s: %s", name, type(exc).__name__)
            return []
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


class StaticTxtResolver:
    """A fixed table of TXT records: `{"_dmarc.example.org": ["v=DMARC1; p=reject"]}`."""

    def __init__(self, records: Mapping[str, list[str]] | None = None) -> None:
        self.records = {name.lower().rstrip("."): list(values)
                        for name, values in (records or {}).items()}
        self.lookups: list[str] = []  # what was asked, so tests can count lookups

    def txt(self, name: str) -> list[str]:
        self.lookups.append(name)
        return list(self.records.get(name.lower().rstrip("."), []))

    @classmethod
    def dmarc(cls, policies: Mapping[str, str]) -> StaticTxtResolver:
        """A resolver publishing `v=DMARC1; p=<policy>` for each domain given."""
        return cls({f"_dmarc.{domain}": [f"v=DMARC1; p={policy}"]
                    for domain, policy in policies.items()})


def parse_record(text: str) -> dict[str, str]:
    """The tags of a DMARC record ({} when it is not one)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip().lower()
    return tags if tags.get("v") == "dmarc1" else {}


@dataclass(frozen=True)
class _Cached:
    policy: str
    expires: datetime


class DmarcPolicies:
    """`policy(domain)`: "none", "quarantine", "reject", or "" when nothing is published.

    The organisational domain is approximated by walking up the labels (a public-suffix list
    would be exact; walking up only ever finds a policy the owner published). Thread-safe:
    composing runs in worker threads.
    """

    def __init__(self, resolver: TxtResolver, clock: Clock | None = None,
                 ttl: timedelta = timedelta(hours=1)) -> None:
        self.resolver = resolver
        self.clock = clock or SystemClock()
        self.ttl = ttl
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _lookup(self, domain: str) -> dict[str, str]:
        for record in self.resolver.txt(f"_dmarc.{domain}"):
            tags = parse_record(record)
            if tags:
                return tags
        return {}

    def _resolve(self, domain: str) -> str:
        tags = self._lookup(domain)
        if tags:
            return tags.get("p", "none")
        labels = domain.split(".")
        for start in range(1, len(labels) - 1):
            parent = ".".join(labels[start:])
            tags = self._lookup(parent)
            if tags:
                return tags.get("sp", tags.get("p", "none"))
        return ""

    def policy(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        if not domain:
            return ""
        now = self.clock.now()
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None and cached.expires > now:
                return cached.policy
        policy = self._resolve(domain)
        with self._lock:
            self._cache[domain] = _Cached(policy, now + self.ttl)
        return policy

    def rewrite_from(self, address: str) -> bool:
        """Whether a copy of mail From `address` must be sent From the community."""
        return self.policy(address.rpartition("@")[2]) in STRICT
