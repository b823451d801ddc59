"""What a digest says: per community and period, the conversations worth a reader's time.

A run loads the archive once (`Archive`): the messages of the window that covers every
due period, the conversations they belong to, and a few months of who-wrote-where so that
items can be ranked for each reader. `Archive.community(cid, period)` is then computed once
per community and period (people in the same time zone share periods) and kept for the run;
`rank_for(...)` orders it for one reader. Nothing here writes.

Sections, per community:

- new: conversations started in the period (subject, author, first lines, replies so far);
- active: older conversations with replies in the period (how many, and who replied);
- unanswered: conversations whose "no reply after `unanswered_after_hours`" moment fell in
  the period and that still had no reply at its end (each question is listed once per
  cadence, in the period where it became unanswered; it is not listed again as new);
- contributors: the most active authors of the period.

Ranking within a section (what the reader most likely cares about first): conversations
they took part in, then replies to their own messages, then questions on topics they have
written about (words of the subjects of their conversations) or that the people finder
says they could answer; newest first among equals.

Length: a section shows at most `[digest] max_items`, and one email at most
`[digest] max_items_per_email`
in all, shared fairly between its sections (`share`): a digest is read when it is short,
and the rest is one "N more on the web" link per community away.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.engine import Connection

from bridge.models import Conversation, Message, MessageStatus
from bridge.searchtext import WORD
from bridge.stopwords import ENGLISH, FRENCH
from outbound.digest.schedule import Period

_conversation = Conversation.__table__  # type: ignore[attr-defined]
_message = Message.__table__  # type: ignore[attr-defined]

HISTORY = timedelta(days=180)   # how far back "topics they have written about" looks
EXCERPT_CHARS = 280
TOP_CONTRIBUTORS = 5
_CHUNK = 900


class GoalLike(Protocol):
    """What the digest reads of a vitality goal (archive.vitality.GoalResult fits).

    Read-only members, so that a frozen dataclass satisfies it.
    """

    @property
    def key(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def hours(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> float: ...
    @property
    def window(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def previous(self) -> float | None: ...
    @property
    def met(self) -> bool | None: ...


# (community_id, period "week"/"month", end) -> goals measured
VitalityFunction = Callable[[int, str, datetime], Sequence[GoalLike]]
# (person_id, candidate conversation ids) -> the ones the person could answer
PeopleFinder = Callable[[int, Sequence[int]], Collection[int]]


@dataclass(frozen=True)
class DigestFunctions:
    """Functions from other packages, given by the wiring (outbound does not import archive)."""

    vitality: VitalityFunction | None = None
    people_finder: PeopleFinder | None = None


@dataclass(frozen=True)
class Item:
    conversation_id: int
    subject: str
    author: str
    excerpt: str
    started_at: datetime
    latest: datetime                 # last message in the period (or the start)
    new_replies: int
    repliers: tuple[str, ...]
    participants: frozenset[int]     # everyone who ever wrote in the conversation
    parent_authors: frozenset[int]   # whose messages got the period's replies
    words: frozenset[str]

    @cached_property
    def order(self) -> float:
        """`latest` as a number: ten thousand readers sort the same items."""
        return self.latest.timestamp()


@dataclass(frozen=True)
class CommunityContent:
    community_id: int
    new: tuple[Item, ...]
    active: tuple[Item, ...]
    unanswered: tuple[Item, ...]
    contributors: tuple[tuple[str, int], ...]

    @property
    def empty(self) -> bool:
        return not (self.new or self.active or self.unanswered)


@dataclass
class _Conv:
    id: int
    community_id: int
    subject: str
    started_at: datetime
    first_reply_at: datetime | None
    author_id: int | None


@dataclass
class _Msg:
    id: int
    conversation_id: int
    author_id: int | None
    name: str
    date: datetime
    parent_id: int | None


def subject_words(subject: str) -> frozenset[str]:
    """Words of a subject that can say what it is about (no stop words, no short words)."""
    return frozenset(w for w in WORD.findall(subject.lower())
                     if len(w) > 3 and w not in ENGLISH and w not in FRENCH and not w.isdigit())


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i:i + _CHUNK]


def _name(name: str, address: str) -> str:
    return name.strip() or address.partition("@")[0] or "?"


@dataclass
class Archive:
    """The part of the archive one run needs, read once; see the module's docstring."""

    connection: Connection
    community_ids: Sequence[int]
    since: datetime            # earliest period start of the run
    until: datetime            # latest period end of the run
    unanswered_after: timedelta
    conversations: dict[int, _Conv] = field(default_factory=dict)
    messages: dict[int, list[_Msg]] = field(default_factory=dict)     # by community
    excerpts: dict[int, tuple[str, str]] = field(default_factory=dict)  # author, first lines
    participants: dict[int, set[int]] = field(default_factory=dict)
    parent_author: dict[int, int | None] = field(default_factory=dict)
    written: dict[int, set[int]] = field(default_factory=dict)   # person -> conversations
    history_words: dict[int, frozenset[str]] = field(default_factory=dict)
    _cache: dict[tuple[int, datetime, datetime], CommunityContent] = field(default_factory=dict)
    _words: dict[int, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._load()

    def _load(self) -> None:
        c, m = _conversation.c, _message.c
        ids = sorted(self.community_ids)
        if not ids:
            return
        window_start = self.since - self.unanswered_after
        published = m.status == MessageStatus.PUBLISHED.value
        for chunk in _chunks(ids):
            for row in self.connection.execute(
                    select(c.id, c.community_id, c.subject, c.started_at, c.first_reply_at,
                           c.author_id).where(c.community_id.in_(chunk),
                                              c.last_activity >= window_start,
                                              c.started_at < self.until)):
                self.conversations[row.id] = _Conv(*row)
            for message in self.connection.execute(
                    select(m.id, m.conversation_id, m.community_id, m.author_id, m.from_name,
                           m.from_address, m.date, m.parent_id)
                    .where(m.community_id.in_(chunk), m.date >= self.since,
                           m.date < self.until, published)
                    .order_by(m.date)):
                self.messages.setdefault(message.community_id, []).append(_Msg(
                    message.id, message.conversation_id, message.author_id,
                    _name(message.from_name, message.from_address), message.date,
                    message.parent_id))
            # who ever wrote in the conversations of the window (for "you took part")
            recent = sorted(k for k, v in self.conversations.items() if v.community_id in chunk)
            for part in _chunks(recent):
                for row in self.connection.execute(
                        select(m.conversation_id, m.author_id, m.id, m.from_name,
                               m.from_address, m.text)
                        .where(m.conversation_id.in_(part), published).order_by(m.date, m.id)):
                    if row.author_id is not None:
                        self.participants.setdefault(row.conversation_id, set()).add(
                            row.author_id)
                    self.parent_author[row.id] = row.author_id
                    if row.conversation_id not in self.excerpts:
                        self.excerpts[row.conversation_id] = (
                            _name(row.from_name, row.from_address), _excerpt(row.text))
            # a few months of history: who wrote in which conversation, about what
            for row in self.connection.execute(
                    select(m.author_id, m.conversation_id, c.subject)
                    .join(_conversation, c.id == m.conversation_id)
                    .where(m.community_id.in_(chunk), m.date >= self.until - HISTORY,
                           m.author_id.is_not(None), published).distinct()):
                self.written.setdefault(row.author_id, set()).add(row.conversation_id)
                if row.conversation_id not in self._words:
                    self._words[row.conversation_id] = subject_words(row.subject)
        for conv in self.conversations.values():
            if conv.id not in self._words:
                self._words[conv.id] = subject_words(conv.subject)

    def person_words(self, person_id: int) -> frozenset[str]:
        words = self.history_words.get(person_id)
        if words is None:
            found: set[str] = set()
            for conversation in self.written.get(person_id, ()):
                found |= self._words.get(conversation, frozenset())
            words = self.history_words[person_id] = frozenset(found)
        return words

    def community(self, community_id: int, period: Period) -> CommunityContent:
        key = (community_id, period.start, period.end)
        content = self._cache.get(key)
        if content is None:
            content = self._cache[key] = self._compute(community_id, period)
        return content

    def _item(self, conv: _Conv, replies: list[_Msg]) -> Item:
        author, excerpt = self.excerpts.get(conv.id, ("?", ""))
        names: list[str] = []
        for msg in reversed(replies):  # most recent replier first
            if msg.name not in names:
                names.append(msg.name)
        parents = frozenset(a for a in (self.parent_author.get(r.parent_id or 0)
                                        for r in replies) if a is not None)
        return Item(conversation_id=conv.id, subject=conv.subject or "(no subject)",
                    author=author, excerpt=excerpt, started_at=conv.started_at,
                    latest=replies[-1].date if replies else conv.started_at,
                    new_replies=len(replies), repliers=tuple(names),
                    participants=frozenset(self.participants.get(conv.id, ())),
                    parent_authors=parents, words=self._words.get(conv.id, frozenset()))

    def _compute(self, community_id: int, period: Period) -> CommunityContent:
        start, end = period.start, period.end
        in_period: dict[int, list[_Msg]] = defaultdict(list)
        authors: Counter[str] = Counter()
        for msg in self.messages.get(community_id, ()):
            if start <= msg.date < end:
                in_period[msg.conversation_id].append(msg)
                authors[msg.name] += 1
        late = self.unanswered_after
        unanswered: list[Item] = []
        seen: set[int] = set()
        for conv in self.conversations.values():
            if conv.community_id != community_id:
                continue
            if start <= conv.started_at + late < end and (
                    conv.first_reply_at is None or conv.first_reply_at >= end):
                unanswered.append(self._item(conv, []))
                seen.add(conv.id)
        new: list[Item] = []
        active: list[Item] = []
        for conversation_id, msgs in in_period.items():
            found = self.conversations.get(conversation_id)
            if found is None or conversation_id in seen:
                continue
            if start <= found.started_at < end:
                replies = [m for m in msgs if m.date > found.started_at or m.parent_id]
                new.append(self._item(found, replies))
            else:
                active.append(self._item(found, msgs))
        newest = lambda item: item.latest  # noqa: E731
        contributors = tuple(sorted(authors.items(), key=lambda kv: (-kv[1], kv[0]))
                             [:TOP_CONTRIBUTORS])
        return CommunityContent(
            community_id=community_id,
            new=tuple(sorted(new, key=newest, reverse=True)),
            active=tuple(sorted(active, key=newest, reverse=True)),
            unanswered=tuple(sorted(unanswered, key=lambda i: i.started_at, reverse=True)),
            contributors=contributors if (new or active or unanswered) else ())


def _excerpt(text: str) -> str:
    """The first lines of a message, on one line, cut at a word near EXCERPT_CHARS."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()][:4]
    joined = " ".join(lines)
    if len(joined) <= EXCERPT_CHARS:
        return joined
    return joined[:EXCERPT_CHARS].rsplit(" ", 1)[0] + "…"


def rank(items: Sequence[Item], person_id: int, words: frozenset[str],
         could_answer: Collection[int] = (), muted: Collection[int] = ()) -> list[Item]:
    """`items` ordered for one reader (see the module's docstring); muted ones dropped."""
    def key(item: Item) -> tuple[int, float]:
        score = 0
        if person_id in item.participants:
            score += 4
        if person_id in item.parent_authors:
            score += 3
        if item.conversation_id in could_answer or not words.isdisjoint(item.words):
            score += 2
        return (-score, -item.order)
    return sorted((i for i in items if i.conversation_id not in muted), key=key)

def share(sizes: Sequence[int], total: int) -> list[int]:
    """How many items of each list to show so that at most `total` are shown in all.

    Fair shares: every list gets as many as the others unless it has fewer, and what a
    short list leaves goes to the longer ones (earlier lists get the odd remainder).
    """
    quotas = [0] * len(sizes)
    left = total
    open_lists = [i for i, size in enumerate(sizes) if size > 0]
    while left > 0 and open_lists:
        each = max(1, left // len(open_lists))
        for i in list(open_lists):
            give = min(each, sizes[i] - quotas[i], left)
            quotas[i] += give
            left -= give
            if quotas[i] == sizes[i]:
                open_lists.remove(i)
            if left == 0:
                break
    return quotas
