"""Text from mail whose charset a sender named: read one way everywhere, never an exception.

A charset in mail is whatever the sender wrote, and Python's codec machinery refuses many of
them in different ways: an unknown name ("x-bogus": LookupError), a name with a NUL
("utf-8\\x00": ValueError "embedded null character", from `codecs.lookup`, `bytes.decode` and
`str.encode` alike), a codec that is not a text encoding ("base64", "rot13": LookupError on
`bytes.decode`), one that refuses the "replace" handler ("idna": UnicodeError), and an RFC 2231
`charset*=` parameter, which the email package returns as a tuple (TypeError) or decodes with
its own charset (ValueError again). The stdlib lets several of these out of
`Message.get_content_charset()` and `Message.get_payload()`.

Every place that decodes mail text or an RFC 2047 word with a declared charset goes through
this module, in `inbound` and `outbound` alike: an unusable charset falls back to a default,
so a malformed message is read (with replacement characters where need be), never failed.
"""

from __future__ import annotations

from email.errors import HeaderParseError, MessageError
from email.header import Header, decode_header, make_header
from email.message import Message
from functools import lru_cache
from typing import Any

_UNUSABLE = (LookupError, ValueError, TypeError)  # UnicodeError is a ValueError


@lru_cache(maxsize=256)
def _usable(name: str) -> bool:
    try:
        b"a".decode(name, "replace")  # an empty input would not even look the codec up
    except _UNUSABLE:
        return False
    return True


def text_codec(charset: object, default: str = "utf-8") -> str:
    """`charset` when Python can decode mail text with it (lower-cased), else `default`."""
    if not isinstance(charset, str):
        return default
    name = charset.strip().lower()
    return name if name and _usable(name) else default


def decode_text(data: bytes, charset: object, default: str = "utf-8") -> str:
    """`data` as text in its declared `charset`, or in `default` when that cannot be used."""
    try:
        return data.decode(text_codec(charset, default), "replace")
    except _UNUSABLE:  # a codec that fails on some input even with "replace"
        return data.decode(default, "replace")


def content_charset(part: Message, default: str | None = None) -> str | None:
    """`part.get_content_charset(default)`, also for an RFC 2231 `charset*=` parameter whose
    own charset Python refuses (the stdlib lets that ValueError out): its value is kept."""
    try:
        return part.get_content_charset(default)
    except _UNUSABLE:
        value = part.get_param("charset")
        if isinstance(value, tuple):
            value = value[2]
        return str(value).lower() if value else default


def transported(part: Message) -> bytes | None:
    """The body of a non-multipart part as bytes, as it was transported (its
    Content-Transfer-Encoding not undone, 8-bit bytes as they came), whatever charset it
    declares; None for a multipart."""
    raw = part._payload  # text, with the 8-bit bytes kept as surrogate escapes by the parser
    if not isinstance(raw, str):
        return None
    try:
        return raw.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # a message built from text, not parsed from bytes
        return raw.encode("utf-8", "surrogateescape")


def mime_payload(part: Message) -> Any:
    """`part.get_payload()` (the parts of a multipart, else the text as transported), for
    8-bit text too: the stdlib decodes that with the declared charset and lets out what the
    codecs raise; here an unusable charset reads it as ASCII, as the stdlib does for an
    unknown one."""
    try:
        return part.get_payload()
    except _UNUSABLE:
        data = transported(part)
        return part._payload if data is None else decode_text(data, content_charset(part),
                                                              "ascii")


def decode_words(value: str | Header) -> str:
    """A header value with its RFC 2047 encoded words decoded, on one line, whatever their
    charsets and encodings (a word Python cannot decode is read as Latin-1, one that is not
    base64 kept as written).

    `value` may be a `Header`: the compat32 parser returns one for a header with raw 8-bit
    bytes (`get_all("To")` on such mail); it is read as its text.
    """
    value = str(value)
    if "=?" not in value:
        return " ".join(value.split())
    try:
        return " ".join(str(make_header(decode_header(value))).split())
    except (*_UNUSABLE, MessageError):  # HeaderParseError; CharsetError for a non-ASCII name
        try:
            chunks = decode_header(value)
        except HeaderParseError:  # a word that is not base64: keep the text
            return " ".join(value.split())
        # decode_header gives the text between encoded words back as raw-unicode-escape
        # bytes (charset None): read it the same way, or "à" beside a word would be lost.
        parts = [chunk if not isinstance(chunk, bytes)
                 else decode_text(chunk, charset, "latin-1") if charset
                 else chunk.decode("raw-unicode-escape", "replace")
                 for chunk, charset in chunks]
        return " ".join("".join(parts).split())


def raw_header_values(msg: Message, name: str) -> list[str]:
    """The stored values of every `name` header, without running the policy's parser (8-bit
    bytes kept by the parser as surrogate escapes).

    Reading through raw_items() costs the same under compat32 and policy.default, whose
    header objects are parsed on each access (several times slower on a plain post); and
    compat32 turns a header with 8-bit bytes into a `Header` whose text has lost them.
    """
    wanted = name.lower()
    values: list[str] = []
    try:
        items = msg.raw_items()
    except Exception:
        return values
    for key, value in items:
        if key.lower() == wanted:
            values.append(value if isinstance(value, str) else str(value))
    return values


def readable_header(value: str) -> str:
    """A raw header value as one line of text: unfolded, RFC 2047 words decoded, and raw
    8-bit text read as UTF-8 (RFC 6532, what SMTPUTF8 clients send) or, when it is not
    UTF-8, as Windows-1252 (what old clients wrote without encoding)."""
    if any("\udc80" <= char <= "\udcff" for char in value):
        data = value.encode("utf-8", "surrogateescape")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            value = data.decode("cp1252", "replace")
    return decode_words(value)


def header_text(msg: Message, name: str) -> str:
    """The first `name` header as readable text ("" when absent), whatever the policy."""
    values = raw_header_values(msg, name)
    return readable_header(values[0]) if values else ""


def header_values(msg: Message, name: str) -> list[str]:
    """Every `name` header, in order (top-most first), as readable text."""
    return [readable_header(value) for value in raw_header_values(msg, name)]
