"""The hostile-input harness shared by `tests/reliability/test_fuzz.py` (a bounded run in CI)
and `bench/soak/fuzz.py` (10,000+ cases by hand).

Two sources of bad mail, both as hypothesis strategies so a failure shrinks to a small case:

- `mime_messages()`: MIME built from parts chosen to hurt — nested multiparts, odd or
  missing boundaries, broken transfer encodings and charsets, RFC 2047 garbage, missing and
  duplicated headers, NULs, very long lines, mixed line endings;
- `corpus_mutations()`: the real mail under ../shared/corpora/ (CPython's email test
  messages, sisimai's bounces in three line-ending flavours, the reply-stripping suites, a
  sample of the R archives) with bit flips, truncations, splices and header/body swaps.

`Harness` sends each case the way live mail arrives (InboxWriter.row + write_rows, then the
real processor from `bridge.wiring` on the test's database) and reads back what happened to
every row, so the property checked is the production one: nothing escapes `run_once`, every
message ends archived, refused, discarded, held or failed with a reason, and its exact bytes
are kept.
"""

from __future__ import annotations

import lzma
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hypothesis import strategies as st
from sqlmodel import Session

from bridge.app import App
from bridge.directory import add_member, create_community
from bridge.models import InboxItem
from bridge.tokens import make_token, reply_token
from bridge.wiring import processor
from inbound.store import Envelope, InboxWriter

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
DOMAIN = "lists.example.org"  # the domain of tests.conftest.write_settings
MEMBER = "alice@example.com"
FINAL = ("done", "held", "rejected", "discarded", "failed")

# --- the real corpora --------------------------------------------------------------------


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []


def _archive_sample(path: Path, count: int) -> list[bytes]:
    """The first `count` messages of an xz-compressed pipermail mbox, read on the fly."""
    if not path.is_file():
        return []
    found: list[bytes] = []
    current: list[bytes] = []
    with lzma.open(path, "rb") as stream:
        for line in stream:
            if line.startswith(b"From ") and current:
                found.append(b"".join(current))
                if len(found) >= count:
                    break
                current = []
            elif not line.startswith(b"From ") or current:
                current.append(line)
    return found


@cache
def corpus_seeds(archive_messages: int = 200) -> tuple[bytes, ...]:
    """Every real message the mutations start from (empty when the corpora are absent)."""
    seeds: list[bytes] = []
    for pattern, folder in (
            ("data/msg_*.txt", CORPORA / "parser" / "cpython-test_email"),
            ("*/*.eml", CORPORA / "parser" / "sisimai-line-endings"),
            ("maildir/*/*.eml", CORPORA / "bounces" / "sisimai"),
            ("**/*.txt", CORPORA / "reply-stripping")):
        seeds += [p.read_bytes() for p in _files(folder, pattern)]
    # The reply suites are bare bodies: also send them as the body of a plain message.
    for path in _files(CORPORA / "reply-stripping", "**/*.txt")[:60]:
        seeds.append(b"From: Some One <one@example.net>\nSubject: Re: fixture\n\n"
                     + path.read_bytes())
    seeds += _archive_sample(CORPORA / "archives" / "r-sig-mac.mbox.xz", archive_messages)
    return tuple(seeds)


def mutate(rng: random.Random, seed: bytes, other: bytes) -> bytes:
    """One to four byte-level mutations of `seed` (`other` is spliced in by some)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        how = rng.choice(("flip", "flip", "truncate", "splice", "swap", "nul", "long",
                          "dup_head", "crlf", "cut_boundary"))
        if how == "flip" and data:
            for _ in range(rng.randint(1, 16)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif how == "truncate" and data:
            del data[rng.randrange(len(data)):]
        elif how == "splice":
            at = rng.randrange(len(data) + 1)
            start = rng.randrange(len(other) + 1)
            data[at:at] = other[start:start + rng.randint(1, 4000)]
        elif how == "swap":
            head, sep, body = bytes(data).partition(b"\n\n")
            if sep:
                data = bytearray(body + sep + head)
        elif how == "nul":
            at = rng.randrange(len(data) + 1)
            data[at:at] = b"\x00" * rng.randint(1, 64)
        elif how == "long":
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes([rng.choice(b"x=?\t <>\xff")]) * rng.randint(1000, 200_000)
        elif how == "dup_head":
            head = bytes(data).partition(b"\n\n")[0]
            data[0:0] = head + b"\n"
        elif how == "crlf":
            data = bytearray(bytes(data).replace(b"\n", rng.choice((b"\r\n", b"\r", b"\n\r"))))
        elif how == "cut_boundary":
            data = bytearray(bytes(data).replace(b"boundary=", b"boundary=\x00", 1))
    return bytes(data)


@st.composite
def corpus_mutations(draw: st.DrawFn) -> bytes:
    seeds = corpus_seeds()
    if not seeds:
        return draw(mime_messages())
    seed = seeds[draw(st.integers(0, len(seeds) - 1))]
    other = seeds[draw(st.integers(0, len(seeds) - 1))]
    return mutate(random.Random(draw(st.integers(0, 2**32))), seed, other)


# --- MIME built to hurt ------------------------------------------------------------------

_GARBAGE_WORDS = ("=?utf-8?q?Hello=0D=0ABcc=3A_x=40y?=", "=?bogus-charset?Q?caf=E9?=",
                  "=?utf-8?B?!!!notbase64?=", "=?iso-8859-1?q?=?=", "=?utf-8?b?4pyI?=",
                  "=?=?utf-8?q??=", "=?utf-7?B?K0FHRUFZZy0?=", "=?UTF-16?B?2D3eAA==?=",
                  "=?x-unknown*fr?q?a?=", "=?utf-8?q?" + "=FF" * 400 + "?=")
_CHARSETS = ("utf-8", "iso-8859-1", "us-ascii", "utf-16", "utf-32", "gb2312", "x-bogus",
             "utf-8\x00", '"', "", "unicode-1-1-utf-7", "cp1252", "koi8-r", "idna")
_ENCODINGS = ("7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode",
              "bogus", "")
_LEAF_TYPES = ("text/plain", "text/html", "application/octet-stream", "message/rfc822",
               "image/png", "application/ms-tnef", "text/calendar", "application/pgp-signature",
               "application/pkcs7-mime", "message/delivery-status", "text/rfc822-headers",
               "application/gzip", "text", "/", "x/y/z")
_HEADER_NAMES = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To",
                 "References", "Reply-To", "Auto-Submitted", "Precedence", "List-Id",
                 "Return-Path", "X-Loop", "Content-Type", "Sender", "Authentication-Results",
                 "X-Autoreply", "Received", "MIME-Version", "Bcc", "Resent-From", "X-Weird")

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_header_value = st.one_of(
    _text,
    st.sampled_from(_GARBAGE_WORDS),
    st.sampled_from(("", "<>", "<@>", "@", "a@b@c", "<" * 50, "Wed, 31 Feb 99999 99:99 +9999",
                     "Thu, 01 Jan 1970 00:00:00 +0000", "Fri, 01 Jan 3000 00:00:00 +0000",
                     '"\\"\x00 <a\x00@b>', "x\r\nBcc: evil@attacker.example", "\u2028\u2029",
                     "undisclosed-recipients:;", "alice@example.com",
                     "Alice Martin <alice@example.com>", "MAILER-DAEMON@example.net")),
    st.builds(lambda c, n: c * n, st.sampled_from("x=?<@ \t\u00e9"), st.integers(900, 20_000)),
)


@st.composite
def _headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = draw(st.lists(st.sampled_from(_HEADER_NAMES), max_size=14))
    headers = [(name, draw(_header_value)) for name in names]
    if draw(st.booleans()):  # usually a sender that can post, so the deeper steps run
        headers.insert(0, ("From", draw(st.sampled_from((
            "Alice Martin <alice@example.com>", "=?utf-8?q?Al=0Aice?= <alice@example.com>",
            "alice@EXAMPLE.com", "Stranger <stranger@elsewhere.example>")))))
    return headers


@st.composite
def _leaf(draw: st.DrawFn) -> tuple[list[tuple[str, str]], bytes]:
    kind = draw(st.sampled_from(_LEAF_TYPES))
    charset = draw(st.sampled_from(_CHARSETS))
    encoding = draw(st.sampled_from(_ENCODINGS))
    payload = draw(st.one_of(
        st.binary(max_size=300),
        _text.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from((b"!!!!not base64!!!!", b"=\n=XX=4", b"begin 644 x\n`\nend\n",
                         b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA1\n\nhi\n",
                         b"BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:x\nDTSTART:bad\n",
                         b"From: inner@example.com\nSubject: inner\n\ninner body\n",
                         b"<html><body><blockquote type=cite><script>x</script>",
                         b"\x1f\x8b\x08\x00" + b"\x00" * 40, b"x" * 5000 + b"\n")),
    ))
    headers = [("Content-Type", f'{kind}; charset="{charset}"' if charset else kind)]
    if encoding:
        headers.append(("Content-Transfer-Encoding", encoding))
    if draw(st.booleans()):
        name = draw(st.sampled_from(("a.pdf", "=?utf-8?q?=0D=0A.exe?=", "", "x\x00.png",
                                     "../../etc/passwd", "n" * 400, "winmail.dat")))
        headers.append(("Content-Disposition",
                        draw(st.sampled_from(("attachment", "inline", "bogus")))
                        + f'; filename="{name}"'))
    return headers, payload


def _render_headers(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\n".encode("utf-8", "surrogatepass")
                    for name, value in headers)


@st.composite
def _part(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A MIME entity: a leaf, or a multipart of parts (recursion bounded by `depth`)."""
    if depth >= 4 or draw(st.integers(0, 2)) > 0:
        headers, payload = draw(_leaf())
        return _render_headers(headers) + b"\n" + payload
    subtype = draw(st.sampled_from(("mixed", "alternative", "related", "signed", "encrypted",
                                    "report", "digest", "")))
    boundary = draw(st.sampled_from(("b1", "", " ", "a b", '"', "=?x?=", "--", "b" * 300,
                                     "b1\x00", "same")))
    children = draw(st.lists(st.deferred(lambda: _part(depth + 1)), max_size=4))
    body = draw(st.sampled_from((b"", b"preamble\n"))) + b"".join(
        f"--{boundary}\n".encode("utf-8", "surrogatepass") + child + b"\n"
        for child in children)
    if draw(st.booleans()):
        body += f"--{boundary}--\n".encode("utf-8", "surrogatepass")
    quoted = draw(st.booleans())
    content_type = (f'multipart/{subtype}; boundary="{boundary}"' if quoted
                    else f"multipart/{subtype}; boundary={boundary}")
    extra = draw(st.sampled_from(((), (("Content-Type", "text/plain"),),
                                  (("Content-Transfer-Encoding", "base64"),))))
    return _render_headers([("Content-Type", content_type), *extra]) + b"\n" + body


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    raw = _render_headers(draw(_headers())) + draw(_part())
    if draw(st.integers(0, 9)) == 0:
        raw = raw.replace(b"\n\n", b"\n", 1)  # no blank line after the headers
    ending = draw(st.sampled_from((b"\r\n", b"\n", b"\r\n", b"\r")))
    return raw.replace(b"\n", ending) if ending != b"\n" else raw


def hostile_messages() -> st.SearchStrategy[bytes]:
    """Either source, in about equal measure."""
    return st.one_of(mime_messages(), corpus_mutations())


# --- sending them through the real processor ---------------------------------------------


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (inbox id, reason)
    problems: list[str] = field(default_factory=list)              # broken properties

    def merge(self, other: Outcomes) -> None:
        self.counts.update(other.counts)
        self.failures += other.failures
        self.problems += other.problems


class Harness:
    """One community that admits anyone (so hostile mail reaches every step), a member, a
    conversation to reply into, and the addresses mail can be sent to."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.writer = InboxWriter(app.engine, app.blobs,
                                  app.settings.processor.inline_raw_limit, app.clock)
        self.processor = processor(app)
        with app.session() as session:
            community = create_community(session, "fuzz", "Fuzz", policy="open",
                                         visibility="public", admits_guests=True)
            add_member(session, community, MEMBER, name="Alice Martin")
        ids = self.send([(b"From: Alice Martin <alice@example.com>\nSubject: seed\n"
                          b"Message-ID: <seed@example.com>\n\nThe first message.\n",
                          MEMBER, [f"fuzz@{DOMAIN}"])])
        self.processor.run_until_idle()
        with Session(app.engine) as session:
            item = session.get(InboxItem, ids[0])
            assert item is not None and item.status == "done", item
            from sqlmodel import select

            from bridge.models import Message, Person
            person = session.exec(select(Person)).first()
            message = session.exec(select(Message)).first()
            assert person is not None and message is not None
            person_id, conversation = person.id or 0, message.conversation_id
        self.recipients = (
            f"fuzz@{DOMAIN}", f"FUZZ@{DOMAIN.upper()}",
            f"reply+{reply_token(app.secret, person_id, conversation)}@{DOMAIN}",
            f"bounces+{make_token(app.secret, 'bounces', 1)}@{DOMAIN}",
            f"fuzz+subscribe@{DOMAIN}", f"postmaster@{DOMAIN}", f"digest@{DOMAIN}",
            f"nobody@{DOMAIN}", "someone@elsewhere.example", "not an address")

    def envelope(self, rng: random.Random) -> tuple[str, list[str]]:
        sender = rng.choice((MEMBER, MEMBER, "", "stranger@elsewhere.example", "<>"))
        rcpt = [rng.choice(self.recipients[:3]) if rng.random() < 0.8
                else rng.choice(self.recipients) for _ in range(rng.choice((1, 1, 1, 2)))]
        return sender, rcpt

    def send(self, cases: list[tuple[bytes, str, list[str]]]) -> list[int]:
        rows = [self.writer.row(raw, Envelope(sender, rcpt)) for raw, sender, rcpt in cases]
        return self.writer.write_rows(rows)

    def run(self, raws: list[bytes], rng: random.Random) -> Outcomes:
        """Send `raws` as one batch, process until idle, and check every row."""
        cases = [(raw, *self.envelope(rng)) for raw in raws]
        ids = self.send(cases)
        self.processor.run_until_idle()  # an exception here is a processor crash
        return self.check(ids, [raw for raw, _, _ in cases])

    def check(self, ids: list[int], raws: list[bytes]) -> Outcomes:
        outcomes = Outcomes()
        with Session(self.app.engine) as session:
            for inbox_id, raw in zip(ids, raws, strict=True):
                item = session.get(InboxItem, inbox_id)
                assert item is not None
                outcomes.counts[item.status] += 1
                if item.status not in FINAL:
                    outcomes.problems.append(f"#{inbox_id}: left {item.status!r}")
                if not item.reason.strip():
                    outcomes.problems.append(f"#{inbox_id}: {item.status} without a reason")
                if item.status == "failed":
                    outcomes.failures.append((inbox_id, item.reason))
                if self.app.raw_mail(item) != raw:
                    outcomes.problems.append(f"#{inbox_id}: raw bytes not kept")
        return outcomes
