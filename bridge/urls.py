"""The web view's public URLs, the contract between the pages (archive.web) and everything
that links to them (list headers, footers, digests, notices). They are written here once."""

from __future__ import annotations

from urllib.parse import quote


def community_url(base_url: str, slug: str) -> str:
    return f"{base_url}/c/{slug}"


def conversation_url(base_url: str, conversation_id: int) -> str:
    return f"{base_url}/t/{conversation_id}"


def message_url(base_url: str, message_id: str) -> str:
    """The permalink by Message-ID (RFC 5064 Archived-At), like public-inbox's."""
    return f"{base_url}/m/{quote(message_id, safe='@!$&*+-._~')}"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url}/u/{token}"


def mute_url(base_url: str, token: str) -> str:
    return f"{base_url}/mute/{token}"
