"""Signed tokens in sub-addresses: reply+TOKEN@, private+TOKEN@, bounces+TOKEN@, moderate+TOKEN@.

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
KINDS = {"reply": 1, "private": 2, "bounces": 3, "moderate": 4}
_PAYLOAD = struct.Struct(">BBII")  # version, kind, first, second


@dataclass(frozen=True)
class TokenData:
    kind: str
    first: int   # reply/private: person id; bounces: delivery id; moderate: held id
    second: int  # reply: conversation id; private: message id; moderate: moderator person id


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"causerie-token:" + payload, hashlib.sha256).digest()[:MAC_BYTES]


def make_token(secret: bytes, kind: str, first: int, second: int = 0) -> str:
    payload = _PAYLOAD.pack(VERSION, KINDS[kind], first, second)
    raw = payload + _mac(secret, payload)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def read_token(secret: bytes, kind: str, token: str) -> TokenData | None:
    """The token's numbers when it is genuine and of `kind`, else None."""
    text = token.strip().upper()
    if not text or len(text) > 64:
        return None
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        return None
    if len(raw) != _PAYLOAD.size + MAC_BYTES:
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
