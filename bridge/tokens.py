"""Signed tokens in sub-addresses (reply+TOKEN@, private+TOKEN@, bounces+TOKEN@, moderate+TOKEN@)
and in links (one-click unsubscribe, mute).

A token carries two numbers (for a reply: the person and the conversation) and an HMAC of
the instance secret over them, the token's kind and a scheme version, truncated to 80 bits.
It is written in lower-case base32 without padding, so an MTA that lower-cases local parts
does not break it, and read case-insensitively. A forged, truncated or retyped token fails
the HMAC; rotating the secret revokes every token; checks that depend on the database
(is the person still a member?) are made by the code that uses the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

VERSION = 1
MAC_BYTES = 10  # 80 bits
KINDS = {"reply": 1, "private": 2, "bounces": 3, "moderate": 4, "unsubscribe": 5, "mute": 6}
_PAYLOAD = struct.Struct(">BBII")  # version, kind, first, second


@dataclass(frozen=True)
class TokenData:
    kind: str
    # reply/private/unsubscribe/mute: person id; bounces: delivery id; moderate: held id
    first: int
    # reply/mute: conversation id; private: message id; moderate: moderator person id;
    # unsubscribe: community id
    second: int


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"causerie-token:" + payload, hashlib.sha256).digest()[:MAC_BYTES]


def make_token(secret: bytes, kind: str, first: int, second: int = 0) -> str:
    payload = _PAYLOAD.pack(VERSION, KINDS[kind], first, second)
    raw = payload + _mac(secret, payload)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode(token: str, size: int) -> bytes | None:
    """The bytes of a base32 token (any case, no padding) when it has `size` of them."""
    text = token.strip().upper()
    if not text or len(text) > 64:
        return None
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        return None
    return raw if len(raw) == size else None


def read_token(secret: bytes, kind: str, token: str) -> TokenData | None:
    """The token's numbers when it is genuine and of `kind`, else None."""
    raw = _decode(token, _PAYLOAD.size + MAC_BYTES)
    if raw is None:
        return None
    payload, mac = raw[:_PAYLOAD.size], raw[_PAYLOAD.size:]
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    version, kind_code, first, second = _PAYLOAD.unpack(payload)
    if version != VERSION or kind_code != KINDS[kind]:
        return None
    return TokenData(kind, first, second)


def reply_token(secret: bytes, person_id: int, conversation_id: int) -> str:
    return make_token(secret, "reply", person_id, conversation_id)


def token_checker(secret: bytes) -> Callable[[str, str], bool]:
    """A `token_valid(route_kind, token)` function for the address router."""
    def valid(route_kind: str, token: str) -> bool:
        kind = {"reply": "reply", "private": "private", "bounce": "bounces",
                "moderate": "moderate"}.get(route_kind)
        return kind is not None and read_token(secret, kind, token) is not None
    return valid


# --- subscription confirmations -------------------------------------------------------------
# A confirmation token proves that whoever answers received mail at `address`: an HMAC over
# the community, the address and the day it was issued (so it expires), written like the
# others in lower-case base32.

_CONFIRM = struct.Struct(">BII")  # version, community, day number
CONFIRM_DAYS = 7


def subscribe_token(secret: bytes, community_id: int, address: str, day: int) -> str:
    """A token confirming that `address` wants to join `community_id`, issued on `day`."""
    payload = _CONFIRM.pack(VERSION, community_id, day)
    mac = _mac(secret, b"confirm:" + payload + address.lower().encode("utf-8"))
    return base64.b32encode(payload + mac).decode("ascii").rstrip("=").lower()


def read_subscribe_token(secret: bytes, token: str, address: str, today: int,
                         max_age_days: int = CONFIRM_DAYS) -> int | None:
    """The community id when `token` was issued to `address` less than `max_age_days` ago."""
    raw = _decode(token, _CONFIRM.size + MAC_BYTES)
    if raw is None:
        return None
    payload, mac = raw[:_CONFIRM.size], raw[_CONFIRM.size:]
    expected = _mac(secret, b"confirm:" + payload + address.lower().encode("utf-8"))
    if not hmac.compare_digest(mac, expected):
        return None
    version, community_id, day = _CONFIRM.unpack(payload)
    if version != VERSION or not 0 <= today - day <= max_age_days:
        return None
    return int(community_id)
