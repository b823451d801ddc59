"""The query language, parsed into a small tree that each backend compiles its own way.

    words               every word must match (stemmed, accents folded)
    "exact phrase"      the words next to each other, in this order
    -word  -"phrase"    must not match (also -from:..., -has:attachment, ...)
    a OR b              either; OR binds tighter than the implicit AND: `x a OR b` is x (a|b)
    from:NAME-OR-ADDRESS  written by: every word of the name/address, or the exact address
    community:SLUG      in this community
    before:YYYY-MM-DD   dated before that day (UTC); after:YYYY-MM-DD: on that day or later
    has:attachment      with an attachment
    in:subject          look for the words and phrases in subjects only

Nothing a user types is an error: an operator with an unknown name or a value that does not
parse (`before:soon`, `re:`, `http://...`) is plain words, an unclosed quote closes at the
end, a stray OR is ignored. Parentheses are not grouping: they separate words like any
punctuation. The tree never carries syntax through to the databases: each backend turns its
leaves into terms it quotes itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

MAX_QUERY_CHARS = 500
MAX_ITEMS = 32


@dataclass(frozen=True)
class Words:
    """A bare word as typed; punctuation inside ("e-mail") makes it a phrase of its parts."""

    text: str


@dataclass(frozen=True)
class Phrase:
    text: str


@dataclass(frozen=True)
class From:
    value: str


@dataclass(frozen=True)
class InCommunity:
    slug: str


@dataclass(frozen=True)
class Before:
    day: date


@dataclass(frozen=True)
class After:
    day: date


@dataclass(frozen=True)
class HasAttachment:
    pass


@dataclass(frozen=True)
class AnyOf:
    """Matches when one of its items matches (a run of `a OR b OR c`)."""

    items: tuple[Leaf, ...]


Leaf = Words | Phrase | From | InCommunity | Before | After | HasAttachment
Node = Leaf | AnyOf


@dataclass(frozen=True)
class Query:
    """What must match (all of `include`), what must not (any of `exclude`), and where."""

    include: tuple[Node, ...] = ()
    exclude: tuple[Node, ...] = ()
    in_subject: bool = False
    text: str = field(default="", compare=False)

    @property
    def empty(self) -> bool:
        return not self.include and not self.exclude


_ITEM = re.compile(r"""
    (?P<neg>-(?=\S))?
    (?:
        (?P<key>[A-Za-z]+):(?:"(?P<qvalue>[^"]*)"?|(?P<value>[^\s"]+))
      | "(?P<phrase>[^"]*)"?
      | (?P<word>[^\s"]+)
    )
""", re.VERBOSE)
_DAY = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
_OR = object()


def _day(value: str) -> date | None:
    match = _DAY.fullmatch(value)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _operator(key: str, value: str) -> Leaf | str | None:
    """The leaf for `key:value`; "in:subject" for the modifier; None to read it as words."""
    key = key.lower()
    value = value.strip()
    if not value:
        return None
    if key == "from":
        return From(value)
    if key == "community":
        return InCommunity(value.lower())
    if key in ("before", "after"):
        day = _day(value)
        if day is None:
            return None
        return Before(day) if key == "before" else After(day)
    if key == "has" and value.lower() in ("attachment", "attachments"):
        return HasAttachment()
    if key == "in" and value.lower() == "subject":
        return "in:subject"
    return None


def parse(text: str) -> Query:
    """Parse a search box's text; never fails (see the module's docstring)."""
    text = text[:MAX_QUERY_CHARS]
    items: list[object] = []
    negated: list[bool] = []
    in_subject = False
    for match in _ITEM.finditer(text):
        neg = bool(match["neg"])
        node: object
        if match["key"] is not None:
            value = match["qvalue"] if match["qvalue"] is not None else match["value"]
            found = _operator(match["key"], value or "")
            if found == "in:subject":
                in_subject = in_subject or not neg
                continue
            node = Words(match.group()[1:] if neg else match.group()) if found is None else found
        elif match["phrase"] is not None:
            if not match["phrase"].strip():
                continue
            node = Phrase(match["phrase"])
        elif match["word"] == "OR" and not neg:
            node = _OR
        else:
            node = Words(match["word"])
        items.append(node)
        negated.append(neg)
        if len(items) >= MAX_ITEMS:
            break
    include: list[Node] = []
    exclude: list[Node] = []
    alternatives: list[Leaf] = []  # the OR run being built
    i = 0
    while i < len(items):
        node, neg = items[i], negated[i]
        if node is _OR:
            i += 1
            continue
        assert isinstance(node, Words | Phrase | From | InCommunity | Before | After
                          | HasAttachment)
        if neg:
            exclude.append(node)
            i += 1
            continue
        alternatives = [node]
        # Absorb "OR item" pairs while the item after OR is a positive leaf.
        while (i + 2 < len(items) and items[i + 1] is _OR and items[i + 2] is not _OR
               and not negated[i + 2]):
            following = items[i + 2]
            assert isinstance(following, Words | Phrase | From | InCommunity | Before | After
                              | HasAttachment)
            alternatives.append(following)
            i += 2
        include.append(alternatives[0] if len(alternatives) == 1
                       else AnyOf(tuple(alternatives)))
        i += 1
    return Query(tuple(include), tuple(exclude), in_subject, text)
