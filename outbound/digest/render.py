"""A digest as mail: view data for the templates, and the multipart/alternative bytes.

The HTML part (`email/digest.html`) is a table layout with inline CSS only, no script and
no image, because that is what renders the same in Outlook, Gmail and Apple Mail. The
text part (`email/digest.txt`) is made from the same view data, so it has every item the
HTML part has. Dates and numbers are formatted here with Babel, in the reader's language
and time zone, so templates only place strings.

The MIME structure is written by hand (two quoted-printable UTF-8 parts in a
multipart/alternative) with the outbound package's header helpers: building an
`EmailMessage` per reader costs more than the rest of a digest, and ten thousand readers
get one each.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime, make_msgid
from urllib.parse import quote
from zoneinfo import ZoneInfo

from babel.dates import format_date
from babel.dates import format_datetime as babel_datetime
from babel.numbers import format_decimal, format_percent

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


@dataclass(frozen=True)
class ItemView:
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
    unsubscribe_url: str
    new: list[ItemView] = field(default_factory=list)
    active: list[ItemView] = field(default_factory=list)
    unanswered: list[ItemView] = field(default_factory=list)
    contributors: list[tuple[str, str]] = field(default_factory=list)
    goals: list[GoalView] = field(default_factory=list)
    more: bool = False       # some items were cut: "more on the web"

    @property
    def items(self) -> list[ItemView]:
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


def item_view(site: Site, reader: Reader, item: Item) -> ItemView:
    address = f"reply+{reply_token(site.secret, reader.person_id, item.conversation_id)}" \
              f"@{site.domain}"
    subject = clean_text(item.subject)
    reply_subject = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    return ItemView(
        subject=subject, url=conversation_url(site.base_url, item.conversation_id),
        reply_address=address,
        reply_mailto=f"mailto:{address}?subject={quote(reply_subject, safe='')}",
        author=clean_text(item.author), excerpt=item.excerpt,
        when=babel_datetime(item.latest, "short", tzinfo=reader.timezone,
                            locale=reader.language),
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


def render_digest(catalogue: Catalogues, site: Site, reader: Reader, cadence: str,
                  period: tuple[datetime, datetime], sections: Sequence[SectionView]
                  ) -> tuple[str, str, str]:
    """(subject, text, html) of one digest."""
    start, end = period
    context = {
        "cadence": cadence, "sections": sections, "reader_name": reader.name,
        "site_name": site.name, "base_url": site.base_url,
        "period_start": format_date(start.astimezone(reader.timezone), "long",
                                    locale=reader.language),
        "period_end": format_date(end.astimezone(reader.timezone), "long",
                                  locale=reader.language),
        "digest_address": site.digest_address,
    }
    subject = subject_line(catalogue, reader.language, cadence, sections)
    text = catalogue.render("email/digest.txt", reader.language, subject=subject, **context)
    html = catalogue.render("email/digest.html", reader.language, subject=subject, **context)
    return subject, text, html


def digest_mail(site: Site, reader: Reader, subject: str, text: str, html: str,
                now: datetime, sections: Sequence[SectionView]) -> bytes:
    """The complete message: headers, then text and HTML parts, CRLF line ends."""
    single = sections[0] if len(sections) == 1 else None
    sender_name = single.name if single else site.name
    boundary = f"=_causerie_digest_{secrets.token_hex(12)}"
    lines = [
        header_line("From", format_address(sender_name, site.digest_address)),
        header_line("To", format_address(reader.name, reader.address)),
        raw_line("Reply-To", site.digest_address),
        header_line("Subject", subject),
        raw_line("Date", format_datetime(now)),
        raw_line("Message-ID", make_msgid("digest", site.domain)),
        raw_line("Auto-Submitted", "auto-generated"),
        raw_line("Precedence", "bulk"),
        raw_line("X-Auto-Response-Suppress", "All"),
        header_line(LOOP_HEADER, clean_text(site.name) or "causerie"),
        raw_line("Content-Language", reader.language),
    ]
    if single is not None:
        lists = site.lists(single.slug, single.name)
        token = make_token(site.secret, "unsubscribe", reader.person_id, single.community_id)
        lines += [header_line("List-Id", list_id(single.name, single.slug, site.domain)),
                  raw_line("List-Archive", f"<{lists.archive_url}>"),
                  lists.unsubscribe_header(token)]
    else:
        # Community 0: "all my digests" (the unsubscribe endpoint must know it; see README).
        token = make_token(site.secret, "unsubscribe", reader.person_id, 0)
        lines += [header_line("List-Id", list_id(site.name, DIGEST_LOCAL_PART, site.domain)),
                  raw_line("List-Unsubscribe", f"<{unsubscribe_url(site.base_url, token)}>")]
    lines += [raw_line("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
              b"MIME-Version: 1.0\r\n",
              f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
              .encode("ascii")]
    body = [
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
        qp(text), b"\r\n",
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
        qp(html), b"\r\n",
        f"--{boundary}--\r\n".encode("ascii"),
    ]
    return b"".join(lines + body)
