"""DKIM signing of what we send (dkimpy), and key generation for `causerie dkim keygen`.

Every copy is signed with `c=relaxed/simple` (dkimpy's own default), using dkimpy's
header folding and `b=` handling; the canonicalisation and hashing are written here
because dkimpy's general-purpose parser and regular expressions cost more than the RSA
operation itself for every copy of a fan-out. Every test verifies the result with
`dkim.verify`. The RSA operation: dkimpy does it in pure Python (about 6 ms per 2048-bit
signature, 160 signatures a second per core, below what a fan-out needs), so when the
OpenSSL `libcrypto` that Python's own `hashlib` is linked against can be loaded, the
PKCS#1 v1.5 signature is made by it through ctypes (about 0.35 ms). Both give
byte-identical signatures (RSA PKCS#1 v1.5 is deterministic); the tests check that.

Every copy is signed separately: its Reply-To, List-Unsubscribe and footer name the
recipient, and RFC 8058 requires List-Unsubscribe(-Post) to be covered by the signature.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto

log = logging.getLogger("causerie.delivery")

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"in-reply-to", b"references", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"list-id", b"list-help", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-subscribe", b"list-post", b"list-owner", b"list-archive",
    b"archived-at", b"auto-submitted",
)
# Signed once more than they appear, so nobody can add a second one later (oversigning).
OVERSIGNED: tuple[bytes, ...] = (b"from", b"subject", b"reply-to", b"list-unsubscribe",
                                 b"list-unsubscribe-post")


class DkimError(Exception):
    pass


# --- RSA backends -------------------------------------------------------------------------------

class _OpenSslRsa:
    """PKCS#1 v1.5 SHA-256 signatures by OpenSSL's libcrypto, through ctypes."""

    def __init__(self, pem: bytes) -> None:
        name = ctypes.util.find_library("crypto")
        if not name:
            raise DkimError("libcrypto not found")
        lib = ctypes.CDLL(name)
        vp = ctypes.c_void_p
        lib.BIO_new_mem_buf.restype = vp
        lib.BIO_new_mem_buf.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.BIO_free.argtypes = [vp]
        lib.PEM_read_bio_PrivateKey.restype = vp
        lib.PEM_read_bio_PrivateKey.argtypes = [vp, vp, vp, vp]
        lib.EVP_PKEY_free.argtypes = [vp]
        lib.EVP_PKEY_CTX_new.restype = vp
        lib.EVP_PKEY_CTX_new.argtypes = [vp, vp]
        lib.EVP_PKEY_CTX_free.argtypes = [vp]
        lib.EVP_PKEY_sign_init.argtypes = [vp]
        lib.EVP_PKEY_CTX_set_rsa_padding.argtypes = [vp, ctypes.c_int]
        lib.EVP_sha256.restype = vp
        lib.EVP_PKEY_CTX_set_signature_md.argtypes = [vp, vp]
        lib.EVP_PKEY_sign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                      ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        try:
            self.key = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        finally:
            lib.BIO_free(bio)
        if not self.key:
            raise DkimError("OpenSSL could not read the private key")

    def sign(self, digest: bytes) -> bytes:
        lib = self.lib
        ctx = lib.EVP_PKEY_CTX_new(self.key, None)
        if not ctx:
            raise DkimError("EVP_PKEY_CTX_new failed")
        try:
            if (lib.EVP_PKEY_sign_init(ctx) != 1
                    or lib.EVP_PKEY_CTX_set_rsa_padding(ctx, 1) != 1  # RSA_PKCS1_PADDING
                    or lib.EVP_PKEY_CTX_set_signature_md(ctx, lib.EVP_sha256()) != 1):
                raise DkimError("OpenSSL refused the signing parameters")
            size = ctypes.c_size_t(0)
            if lib.EVP_PKEY_sign(ctx, None, ctypes.byref(size), digest, len(digest)) != 1:
                raise DkimError("EVP_PKEY_sign failed")
            buffer = ctypes.create_string_buffer(size.value)
            if lib.EVP_PKEY_sign(ctx, buffer, ctypes.byref(size), digest, len(digest)) != 1:
                raise DkimError("EVP_PKEY_sign failed")
            return buffer.raw[:size.value]
        finally:
            lib.EVP_PKEY_CTX_free(ctx)

    def __del__(self) -> None:
        key = getattr(self, "key", None)
        if key:
            self.lib.EVP_PKEY_free(key)


class _PurePythonRsa:
    """dkimpy's own RSA (pure Python): always available, slower."""

    def __init__(self, pem: bytes) -> None:
        try:
            self.key = dkim.crypto.parse_pem_private_key(pem)
        except dkim.crypto.UnparsableKeyError as exc:
            raise DkimError(f"cannot read the private key: {exc}") from None

    def sign(self, digest: bytes) -> bytes:
        class _Digest:  # dkimpy's signer takes a hash object
            name = "sha256"

            def digest(self) -> bytes:
                return digest

        return bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(_Digest(), self.key))


def _rsa_backend(pem: bytes, prefer_openssl: bool) -> Any:
    if prefer_openssl:
        try:
            return _OpenSslRsa(pem)
        except (DkimError, OSError, AttributeError) as exc:
            log.info("DKIM: OpenSSL not usable (%s); signing in pure Python", exc)
    return _PurePythonRsa(pem)


# --- the signer ---------------------------------------------------------------------------------

class DkimSigner:
    """`signer(message) -> b"DKIM-Signature: ...\\r\\n"` to put in front of the message."""

    def __init__(self, selector: str, domain: str, private_key: bytes, *,
                 headers: Sequence[bytes] = SIGNED_HEADERS,
                 prefer_openssl: bool = True,
                 now: Callable[[], float] = time.time) -> None:
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        self.headers = tuple(headers)
        self.rsa = _rsa_backend(private_key, prefer_openssl)
        self.backend = type(self.rsa).__name__.strip("_")
        self.now = now
        _PurePythonRsa(private_key)  # dkimpy must be able to read the key too (verification)

    @classmethod
    def from_file(cls, selector: str, domain: str, path: Path, **kw: Any) -> DkimSigner:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise DkimError(f"cannot read DKIM key {path}: {exc.strerror}") from None
        return cls(selector, domain, key, **kw)

    def __call__(self, message: bytes) -> bytes:
        return self.sign(message)

    def sign(self, message: bytes) -> bytes:
        """The DKIM-Signature line for `message` (CRLF line ends, header and body)."""
        end = message.find(b"\r\n\r\n")
        head, body = (message[:end + 2], message[end + 4:]) if end >= 0 else (message, b"")
        fields = _header_fields(head)
        names = [name.lower() for name, _ in fields]
        present = set(names)
        include = [h for h in self.headers if h in present]
        include += [h for h in OVERSIGNED if h in present or h == b"from"]
        # Body: "simple" canonicalisation (RFC 6376 3.4.3): trailing empty lines reduced
        # to one line end. Our bodies are 7-bit quoted-printable or base64 with CRLF line
        # ends, which relays leave alone.
        size = len(body)
        while body.endswith(b"\r\n", 0, size):
            size -= 2
        hasher = hashlib.sha256(memoryview(body)[:size])
        hasher.update(b"\r\n")
        body_hash = base64.b64encode(hasher.digest())
        tags = [
            (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"),
            (b"d", self.domain), (b"s", self.selector),
            (b"t", str(int(self.now())).encode("ascii")),
            (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b""),
        ]
        value = b"; ".join(b"=".join(pair) for pair in tags)
        value = dkim.fold(value, namelen=len(b"DKIM-Signature"), linesep=b"\r\n")
        value = dkim.RE_BTAG.sub(b"\\1", value)
        # Headers: "relaxed" canonicalisation (RFC 6376 3.4.2) of the selected fields, each
        # taken from the bottom up (as dkimpy's select_headers), then the signature itself.
        digest = hashlib.sha256()
        last: dict[bytes, int] = {}
        for name in include:
            index = last.get(name, len(fields))
            while index > 0:
                index -= 1
                if names[index] == name:
                    digest.update(_relaxed(*fields[index]))
                    break
            last[name] = index
        digest.update(_relaxed(b"DKIM-Signature", b" " + value).rstrip())
        signature = base64.b64encode(self.rsa.sign(digest.digest()))
        tags[-1] = (b"b", signature)
        value = b"; ".join(b"=".join(pair) for pair in tags)
        value = dkim.fold(value, namelen=len(b"DKIM-Signature"), linesep=b"\r\n")
        return b"DKIM-Signature: " + value + b"\r\n"


_WSP = re.compile(rb"[\t ]+")


def _relaxed(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed canonical form, ending in CRLF (RFC 6376 3.4.2)."""
    return (name.lower().rstrip() + b":"
            + _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip() + b"\r\n")


def _header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) of each field; a value keeps its folding, without the final CRLF."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        name, _, value = line.partition(b":")
        fields.append((name, value))
    return fields


# --- key generation -----------------------------------------------------------------------------

def _probably_prime(n: int, rounds: int = 40) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        a = secrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, e: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if math.gcd(candidate - 1, e) == 1 and _probably_prime(candidate):
            return candidate


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_int(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")  # leading zero keeps it positive
    return _der(0x02, raw)


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"
            ).encode("ascii")


def generate_key(bits: int = 2048) -> tuple[bytes, bytes]:
    """(PKCS#1 private key PEM, SubjectPublicKeyInfo DER) of a new RSA key."""
    e = 65537
    while True:
        p, q = _prime(bits // 2, e), _prime(bits - bits // 2, e)
        n = p * q
        if p != q and n.bit_length() == bits:
            break
    if p < q:
        p, q = q, p
    d = pow(e, -1, (p - 1) * (q - 1) // math.gcd(p - 1, q - 1))
    private = _der(0x30, b"".join(_der_int(v) for v in (
        0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    rsa_public = _der(0x30, _der_int(n) + _der_int(e))
    algorithm = _der(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
    public = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public))
    return _pem("RSA PRIVATE KEY", private), public


def dns_record_value(public_der: bytes) -> str:
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode("ascii")


def dns_record(selector: str, domain: str, public_der: bytes) -> str:
    """The TXT record to publish, in zone-file syntax (strings of at most 255 characters)."""
    value = dns_record_value(public_der)
    parts = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
    return f"{selector}._domainkey.{domain}. IN TXT ( {parts} )"


def write_key(path: Path, pem: bytes) -> None:
    """Write the private key, readable by its owner only; never overwrite an existing key."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def static_dns(selector: str, domain: str, public_der: bytes) -> Callable[..., bytes | None]:
    """A `dnsfunc` for `dkim.verify` that answers with our own record (tests, self-checks)."""
    name = f"{selector}._domainkey.{domain}.".encode("ascii")
    value = dns_record_value(public_der).encode("ascii")

    def lookup(query: bytes, timeout: int = 5) -> bytes | None:
        return value if query.rstrip(b".") + b"." == name else None
    return lookup
