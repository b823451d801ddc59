"""A digest as mail: view data for the templates, and the multipart/alternative bytes.

The HTML part (`email/digest.html`) is a table layout with inline CSS only, no script and
no image, because that is what renders the same in Outlook, Gmail and Apple Mail. The
text part (`email/digest.txt`) is made from the same view data, so it has every item the
HTML part has. Dates and numbers are formatted here with Babel, in the reader's language
and time zone, so templates only place strings.

Ten thousand readers share a few hundred items: each item is rendered once per language
and time zone (`email/digest_item.*`, with a slot where the reader's reply token goes,
like the fan-out's footers), and a reader's digest only fills the slots and renders the
frame around its items. A `Renderer` holds those renderings for one run (no global cache).

The MIME structure is written by hand (two quoted-printable UTF-8 parts in a
multipart/alternative) with the outbound package's header helpers: building an
`EmailMessage` per reader costs more than the rest of a digest, and ten thousand readers
get one each.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import format_datetime, make_msgid
from urllib.parse import quote
from zoneinfo import ZoneInfo

from babel.dates import format_date
from babel.dates import format_datetime as babel_datetime
from babel.numbers import format_decimal, format_percent
from markupsafe import Markup, escape

from bridge.i18n import Catalogues
from bridge.tokens import make_token, reply_token
from bridge.urls import conversation_url, unsubscribe_url
from outbound.compose import qp
from outbound.digest.content import GoalLike, Item
from outbound.listheaders import (
    LOOP_HEADER,
    ListAddresses,
    clean_text,
    format_address,
    header_line,
    list_id,
    raw_line,
)

DIGEST_LOCAL_PART = "digest"
# Where a rendered text takes the reader's token (reply or unsubscribe): a private-use
# character that HTML escaping keeps as it is; taken out of names, subjects and excerpts.
TOKEN_SLOT = "\ue000"
TOKEN_LENGTH = len(make_token(b"length", "reply", 0, 0))   # every token has this length
ITEM_MARK = "\ue001"     # where a section's template placed an item
SECTIONS_MARK = "\ue002"  # where the digest's template placed the sections
SUBJECT_MARK = "\ue003"   # where it placed the subject
_MARKS = re.compile("[\ue000-\ue003]")
# A display name that needs neither quoting nor encoding in a header (the common case).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .'-]{0,60}")


@dataclass(frozen=True)
class ItemView:
    """What `email/digest_item.*` shows of one item (reply address with `TOKEN_SLOT`)."""

    subject: str
    url: str
    reply_address: str
    reply_mailto: str
    author: str
    excerpt: str
    when: str
    new_replies: int
    repliers: str


@dataclass(frozen=True)
class Encoded:
    """Quoted-printable bytes with holes where a reader's token goes.

    `chunks[k]` is followed by `token[holes[k][0]:holes[k][1]]` (a token may be cut by a
    soft line break, so a hole can be part of one). See `encode`.
    """

    chunks: tuple[bytes, ...]
    holes: tuple[tuple[int, int], ...] = ()

    def fill(self, token: bytes) -> bytes:
        if not self.holes:
            return self.chunks[0]
        out = [self.chunks[0]]
        for (start, end), chunk in zip(self.holes, self.chunks[1:], strict=True):
            out += (token[start:end], chunk)
        return b"".join(out)


def encode(text: str) -> Encoded:
    """`qp(text)` with a hole for each `TOKEN_SLOT`, so that `encode(t).fill(token)` is
    exactly `qp(t.replace(TOKEN_SLOT, token))`.

    A token has a fixed length and only characters QP keeps as they are, so encoding the
    text with two different fillers of that length gives the same bytes except where the
    token's characters go (soft line breaks fall in the same places): those are the holes.
    Quoted-printable is line-based, so texts that end with a line end can be encoded apart
    and joined: items and sections are encoded once per run, not once per reader.
    """
    if TOKEN_SLOT not in text:
        return Encoded((qp(text),))
    first = qp(text.replace(TOKEN_SLOT, "a" * TOKEN_LENGTH))
    second = qp(text.replace(TOKEN_SLOT, "b" * TOKEN_LENGTH))
    if len(first) != len(second):  # pragma: no cover - QP keeps [a-z] as they are
        raise AssertionError("token fillers changed the encoding's length")
    chunks: list[bytes] = []
    holes: list[tuple[int, int]] = []
    done = last = 0
    position = first.find(b"a", 0)
    while position != -1:
        if first[position] != second[position]:
            end = position
            while end < len(first) and first[end] != second[end]:
                end += 1
            start = done % TOKEN_LENGTH
            chunks.append(first[last:position])
            holes.append((start, start + end - position))
            done += end - position
            last = position = end
        else:
            position += 1
        position = first.find(b"a", position)
    chunks.append(first[last:])
    if done % TOKEN_LENGTH:  # pragma: no cover - a filler was cut short
        raise AssertionError("a token hole is incomplete")
    return Encoded(tuple(chunks), tuple(holes))


@dataclass(frozen=True)
class RenderedItem:
    """One item in both parts, encoded, for every reader of a language and time zone."""

    html: Encoded
    text: Encoded


class _Entry:
    """What the section templates place for an item: a marker, cut out afterwards."""

    html = Markup(ITEM_MARK)
    text = ITEM_MARK


@dataclass(frozen=True)
class SectionFrame:
    """A section with its items cut out: `pieces[k]`, item k, `pieces[k + 1]`, ...

    The pieces hold the unsubscribe link, whose token is the reader's.
    """

    html: tuple[Encoded, ...]
    text: tuple[Encoded, ...]


@dataclass(frozen=True)
class GoalView:
    label: str
    value: str
    previous: str
    target: str
    met: bool | None


@dataclass
class SectionView:
    community_id: int
    slug: str
    name: str
    url: str
    unsubscribe_token: str   # the reader's (TOKEN_SLOT while a section frame is rendered)
    unsubscribe_url: str
    new: list[Item] = field(default_factory=list)
    active: list[Item] = field(default_factory=list)
    unanswered: list[Item] = field(default_factory=list)
    contributors: list[tuple[str, str]] = field(default_factory=list)
    goals: list[GoalView] = field(default_factory=list)
    more: int = 0       # items left out (section or digest too long): "N more on the web"

    @property
    def items(self) -> list[Item]:
        return [*self.new, *self.active, *self.unanswered]


@dataclass(frozen=True)
class Reader:
    """Who the digest is for."""

    person_id: int
    name: str
    address: str
    language: str
    timezone: ZoneInfo


@dataclass(frozen=True)
class Site:
    """Instance-wide values every digest uses."""

    name: str
    domain: str
    base_url: str
    secret: bytes

    @property
    def digest_address(self) -> str:
        return f"{DIGEST_LOCAL_PART}@{self.domain}"

    def lists(self, slug: str, name: str) -> ListAddresses:
        return ListAddresses(slug=slug, name=name, domain=self.domain, base_url=self.base_url)


def item_view(site: Site, language: str, timezone: ZoneInfo, item: Item) -> ItemView:
    """The view of an item for every reader of `language` in `timezone` (slot for the token)."""
    address = f"reply+{TOKEN_SLOT}@{site.domain}"
    subject = _MARKS.sub("", clean_text(item.subject))
    reply_subject = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    return ItemView(
        subject=subject, url=conversation_url(site.base_url, item.conversation_id),
        reply_address=address,
        reply_mailto=f"mailto:{address}?subject={quote(reply_subject, safe='')}",
        author=_MARKS.sub("", clean_text(item.author)), excerpt=_MARKS.sub("", item.excerpt),
        when=babel_datetime(item.latest, "short", tzinfo=timezone, locale=language),
        new_replies=item.new_replies, repliers=", ".join(item.repliers[:5])
        + ("…" if len(item.repliers) > 5 else ""))


def goal_views(catalogue: Catalogues, language: str,
               goals: Sequence[GoalLike]) -> list[GoalView]:
    translations = catalogue.translations(language)

    def number(value: float | None, kind: str) -> str:
        if value is None:
            return "–"
        if kind == "share":
            return format_percent(value, locale=language)
        return format_decimal(round(value, 1), locale=language)

    labels = {
        "answered_within": translations.gettext("Questions answered within %(hours)s h"),
        "active_contributors": translations.gettext("Active contributors"),
        "new_conversations": translations.gettext("New conversations"),
        "messages": translations.gettext("Messages"),
    }
    windows = {"week": translations.gettext("per week"),
               "month": translations.gettext("per month")}
    views = []
    for goal in goals:
        label = labels.get(goal.metric, goal.key) % {"hours": goal.hours}
        if goal.kind == "count":
            label = f"{label} ({windows.get(goal.window, goal.window)})"
        views.append(GoalView(label=label, value=number(goal.value, goal.kind),
                              previous=number(goal.previous, goal.kind),
                              target=number(goal.target, goal.kind), met=goal.met))
    return views


def subject_line(catalogue: Catalogues, language: str, cadence: str,
                 sections: Sequence[SectionView]) -> str:
    t = catalogue.translations(language)
    names = [s.name for s in sections]
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    new = sum(len(s.new) for s in sections)
    title = t.gettext("Daily digest") if cadence == "daily" else t.gettext("Weekly digest")
    counts = t.ngettext("%(count)s new conversation", "%(count)s new conversations", new) % {
        "count": format_decimal(new, locale=language)}
    return clean_text(f"{title} – {shown}: {counts}")


@dataclass
class Renderer:
    """Renders the digests of one run, keeping what readers share (see the module's doc).

    Everything is rendered and QP-encoded once per run: items per (conversation, what the
    item says, language, time zone), sections per (community, what they show, language),
    the digest's head and foot per (language, cadence, dates). A reader's digest is then
    those bytes joined, with the reader's tokens in the holes and subject in the head.
    """

    catalogue: Catalogues
    site: Site
    _items: dict[tuple[object, ...], RenderedItem] = field(default_factory=dict)
    _sections: dict[tuple[object, ...], SectionFrame] = field(default_factory=dict)
    _frames: dict[tuple[str, ...], tuple[str, bytes, str, bytes]] = field(
        default_factory=dict)
    _dates: dict[tuple[datetime, str, str], str] = field(default_factory=dict)
    _headers: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def item(self, item: Item, language: str, timezone: ZoneInfo) -> RenderedItem:
        key = (item.conversation_id, item.latest, item.new_replies, item.repliers,
               language, timezone.key)
        rendered = self._items.get(key)
        if rendered is None:
            view = item_view(self.site, language, timezone, item)
            rendered = self._items[key] = RenderedItem(
                encode(self.catalogue.render("email/digest_item.html", language, i=view)),
                encode(self.catalogue.render("email/digest_item.txt", language, i=view)))
        return rendered

    def section(self, section: SectionView, language: str) -> SectionFrame:
        key = (language, section.community_id, section.slug, section.name, section.url,
               len(section.new), len(section.active), len(section.unanswered),
               tuple(section.contributors), tuple(section.goals), section.more)
        frame = self._sections.get(key)
        if frame is None:
            entry = _Entry()
            shape = replace(section, unsubscribe_token=TOKEN_SLOT,
                            unsubscribe_url=unsubscribe_url(self.site.base_url, TOKEN_SLOT),
                            new=[entry] * len(section.new),  # type: ignore[list-item]
                            active=[entry] * len(section.active),  # type: ignore[list-item]
                            unanswered=[entry] * len(section.unanswered))  # type: ignore[list-item]
            frame = self._sections[key] = SectionFrame(*(
                tuple(encode(piece) for piece in self.catalogue.render(
                    f"email/digest_section.{kind}", language, s=shape).split(ITEM_MARK))
                for kind in ("html", "txt")))
        return frame

    def date(self, moment: datetime, reader: Reader) -> str:
        key = (moment, reader.language, reader.timezone.key)
        text = self._dates.get(key)
        if text is None:
            text = self._dates[key] = format_date(moment.astimezone(reader.timezone), "long",
                                                  locale=reader.language)
        return text

    def frame(self, reader: Reader, cadence: str, period: tuple[datetime, datetime]
              ) -> tuple[str, bytes, str, bytes]:
        """(text head, encoded text foot, HTML head, encoded HTML foot); the heads hold
        `SUBJECT_MARK` where the subject goes (it differs from reader to reader)."""
        start, end = (self.date(moment, reader) for moment in period)
        key = (reader.language, cadence, start, end)
        frame = self._frames.get(key)
        if frame is None:
            context = {"cadence": cadence, "site_name": self.site.name,
                       "base_url": self.site.base_url, "period_start": start,
                       "period_end": end, "digest_address": self.site.digest_address,
                       "subject": SUBJECT_MARK}
            text = self.catalogue.render("email/digest.txt", reader.language,
                                         sections=SECTIONS_MARK, **context)
            html = self.catalogue.render("email/digest.html", reader.language,
                                         sections=Markup(SECTIONS_MARK), **context)
            (text_head, text_foot), (html_head, html_foot) = (
                part.split(SECTIONS_MARK) for part in (text, html))
            frame = self._frames[key] = (text_head, qp(text_foot), html_head, qp(html_foot))
        return frame

    def render(self, reader: Reader, cadence: str, period: tuple[datetime, datetime],
               sections: Sequence[SectionView]) -> tuple[str, bytes, bytes]:
        """(subject, text part, HTML part) of one digest, the parts QP-encoded."""
        subject = subject_line(self.catalogue, reader.language, cadence, sections)
        text_head, text_foot, html_head, html_foot = self.frame(reader, cadence, period)
        shown = _MARKS.sub("", subject)
        text = [qp(text_head.replace(SUBJECT_MARK, shown))]
        html = [qp(html_head.replace(SUBJECT_MARK, str(escape(shown))))]
        for section in sections:
            frame = self.section(section, reader.language)
            unsubscribe = section.unsubscribe_token.encode("ascii")
            items = [*section.new, *section.active, *section.unanswered]
            text.append(frame.text[0].fill(unsubscribe))
            html.append(frame.html[0].fill(unsubscribe))
            for k, item in enumerate(items, 1):
                rendered = self.item(item, reader.language, reader.timezone)
                token = reply_token(self.site.secret, reader.person_id,
                                    item.conversation_id).encode("ascii")
                text += (rendered.text.fill(token), frame.text[k].fill(unsubscribe))
                html += (rendered.html.fill(token), frame.html[k].fill(unsubscribe))
        text.append(text_foot)
        html.append(html_foot)
        return subject, b"".join(text), b"".join(html)

    def header(self, name: str, value: str) -> bytes:
        """`header_line` for a value many readers share (encoded once per run)."""
        line = self._headers.get((name, value))
        if line is None:
            line = self._headers[(name, value)] = header_line(name, value)
        return line

    def mail(self, reader: Reader, subject: str, text: bytes, html: bytes, now: datetime,
             sections: Sequence[SectionView]) -> bytes:
        """The complete message: headers, then the encoded text and HTML parts (CRLF)."""
        site = self.site
        single = sections[0] if len(sections) == 1 else None
        sender_name = single.name if single else site.name
        boundary = f"=_causerie_digest_{secrets.token_hex(12)}"
        lines = [
            self.header("From", format_address(sender_name, site.digest_address)),
            _to_line(reader.name, reader.address),
            raw_line("Reply-To", site.digest_address),
            self.header("Subject", subject),
            raw_line("Date", format_datetime(now)),
            raw_line("Message-ID", make_msgid("digest", site.domain)),
            b"Auto-Submitted: auto-generated\r\nPrecedence: bulk\r\n"
            b"X-Auto-Response-Suppress: All\r\n",
            self.header(LOOP_HEADER, clean_text(site.name) or "causerie"),
            raw_line("Content-Language", reader.language),
        ]
        if single is not None:
            lists = site.lists(single.slug, single.name)
            lines += [self.header("List-Id", list_id(single.name, single.slug, site.domain)),
                      raw_line("List-Archive", f"<{lists.archive_url}>"),
                      lists.unsubscribe_header(single.unsubscribe_token)]
        else:
            # Community 0: "all my digests" (the unsubscribe endpoint must know it; see README).
            token = make_token(site.secret, "unsubscribe", reader.person_id, 0)
            lines += [self.header("List-Id", list_id(site.name, DIGEST_LOCAL_PART,
                                                     site.domain)),
                      raw_line("List-Unsubscribe",
                               f"<{unsubscribe_url(site.base_url, token)}>")]
        lines += [b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n",
                  f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
                  .encode("ascii")]
        body = [
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
            text, b"\r\n",
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
            html, b"\r\n",
            f"--{boundary}--\r\n".encode("ascii"),
        ]
        return b"".join(lines + body)


def _to_line(name: str, address: str) -> bytes:
    """The To line; a plain ASCII name and address skip the email package (ten thousand
    readers), anything else goes through `header_line` (quoting, RFC 2047, no injection)."""
    name = name.strip()
    if _PLAIN_NAME.fullmatch(name) and address.isascii() and len(name) + len(address) < 70 \
            and not any(c in address for c in '<>" '):
        phrase = f'"{name}"' if "." in name else name  # "." is not an atom's character
        return raw_line("To", f"{phrase} <{address}>")
    return header_line("To", format_address(name, address))
