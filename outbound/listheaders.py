"""Header lines we write, and the list headers of RFC 2369, 2919, 5064 and 8058.

Every header whose value comes from people (names, subjects, community names) goes through
`header_line`, which folds and RFC 2047-encodes it with the stdlib's SMTP policy. That policy
refuses CR and LF in a value (`ValueError`), and `clean_text` turns every control character
into a space before we get there, so a display name or subject can never start a header of
its own (header injection). Values built only from our own safe alphabets (tokens in base32,
slugs, validated domains and URLs) are written directly, which keeps the per-recipient path
fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address

from bridge import urls

POLICY = policy.SMTP  # CRLF line ends, 78-character folding, refuses CR/LF in values
LOOP_HEADER = "X-Causerie-Loop"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
_SAFE_VALUE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


class HeaderInjection(ValueError):
    """A header value that would have produced another header line."""


def clean_text(value: str) -> str:
    """One line of text: control characters (CR, LF, tabs, NUL...) become single spaces."""
    return _CONTROL.sub(" ", value).strip()


def header_line(name: str, value: str) -> bytes:
    """`Name: value` folded and encoded as bytes ending in CRLF; CR/LF are refused."""
    if "\r" in value or "\n" in value:
        raise HeaderInjection(f"{name}: a header value may not hold CR or LF")
    if not re.fullmatch(r"[!-9;-~]+", name):
        raise HeaderInjection(f"{name!r} is not a header name")
    _, parsed = POLICY.header_store_parse(name, value)
    folded = POLICY.header_factory(name, parsed).fold(policy=POLICY)  # type: ignore[arg-type]
    return folded.encode("ascii")


def raw_line(name: str, value: str) -> bytes:
    """A header line from trusted ASCII parts (tokens, slugs, domains, URLs): not folded."""
    if not _SAFE_VALUE.match(value):
        raise HeaderInjection(f"{name}: {value!r} is not a plain ASCII header value")
    return f"{name}: {value}\r\n".encode("ascii")


def format_address(name: str, address: str) -> str:
    """`"Name" <address>` with the quoting RFC 5322 needs; the name cleaned to one line."""
    name = clean_text(name)
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def list_id(name: str, slug: str, domain: str) -> str:
    """RFC 2919: a phrase, and the list's identifier `<slug.domain>`."""
    phrase = clean_text(name).replace("<", "").replace(">", "").replace('"', "")
    return f"{phrase} <{slug}.{domain}>" if phrase else f"<{slug}.{domain}>"


@dataclass(frozen=True)
class ListAddresses:
    """The addresses and URLs of one community, from which every list header is built."""

    slug: str
    name: str
    domain: str
    base_url: str

    @property
    def posting(self) -> str:
        return f"{self.slug}@{self.domain}"

    def command(self, command: str) -> str:
        return f"{self.slug}+{command}@{self.domain}"

    @property
    def owner(self) -> str:
        return self.command("owner")

    @property
    def archive_url(self) -> str:
        return urls.community_url(self.base_url, self.slug)

    def conversation_url(self, conversation_id: int) -> str:
        return urls.conversation_url(self.base_url, conversation_id)

    def message_url(self, message_id: str) -> str:
        return urls.message_url(self.base_url, message_id)

    def unsubscribe_url(self, token: str) -> str:
        return urls.unsubscribe_url(self.base_url, token)

    def mute_url(self, token: str) -> str:
        return urls.mute_url(self.base_url, token)

    def static_headers(self) -> bytes:
        """The list headers that are the same for every recipient of every post."""
        return b"".join((
            header_line("List-Id", list_id(self.name, self.slug, self.domain)),
            raw_line("List-Post", f"<mailto:{self.posting}>"),
            raw_line("List-Help", f"<mailto:{self.command('help')}?subject=help>"),
            raw_line("List-Subscribe", f"<mailto:{self.command('subscribe')}?subject=subscribe>"),
            raw_line("List-Owner", f"<mailto:{self.owner}>"),
            raw_line("List-Archive", f"<{self.archive_url}>"),
            raw_line("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            raw_line("Precedence", "list"),
            raw_line("X-Auto-Response-Suppress", "All"),
        ))

    def unsubscribe_header(self, token: str) -> bytes:
        """RFC 2369 + 8058: a mailto and the one-click https link (which names the recipient)."""
        return raw_line("List-Unsubscribe",
                        f"<mailto:{self.command('unsubscribe')}?subject=unsubscribe>, "
                        f"<{self.unsubscribe_url(token)}>")
