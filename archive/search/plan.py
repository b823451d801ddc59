"""From a parsed query to index terms: the plan both backends render in their own syntax.

The index of a message holds four kinds of terms, in separate FTS5 columns on SQLite and
under separate prefixes in one tsvector on PostgreSQL:

- text terms of the subject and the body (stems, see `bridge.searchtext`);
- author terms: the folded words of the author's name and address, and one term for the
  whole address (`text.address_term`), never stemmed;
- meta terms, which turn every filter into an index lookup so that the index alone finds the
  candidates and ranks them (no scan of the matches to filter them afterwards):
  `c<community id>`, `v<conversation id>`, `a` (has an attachment), `z` (every message: the
  base of a query that only excludes), and the message's UTC date at five grains:
  `k<century>`, `e<decade>`, `y<year>`, `m<year><month>`, `d<year><month><day>`, so that a
  date range is a short union (at most about 65 terms) of those grains.

A single query word that is a stop word in any language is left out, as if always true. In a
phrase, each language's alternative leaves out that language's stop words only, which is what
that language's index left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol

from archive.search.query import (
    After,
    AnyOf,
    Before,
    From,
    HasAttachment,
    InCommunity,
    Leaf,
    Node,
    Phrase,
    Query,
    Words,
)
from bridge.searchtext import LANGUAGES, address_term, words

# Dates outside these years are not reached by before:/after: (their grains are not listed).
FIRST_YEAR, LAST_YEAR = 1000, 2999
EVERY_MESSAGE = "z"
ATTACHMENT = "a"


@dataclass(frozen=True)
class Text:
    """Any of `phrases` in the subject (and body unless `subject_only`).

    A phrase is a tuple of (position, term): positions count the words typed, stop words
    included, so PostgreSQL can require the same gaps its index keeps.
    """

    phrases: tuple[tuple[tuple[int, str], ...], ...]
    subject_only: bool


@dataclass(frozen=True)
class Author:
    """All of `terms` among the author terms."""

    terms: tuple[str, ...]


@dataclass(frozen=True)
class Meta:
    """Any of `terms` among the meta terms."""

    terms: tuple[str, ...]


@dataclass(frozen=True)
class Either:
    items: tuple[Expr, ...]


Expr = Text | Author | Meta | Either


@dataclass(frozen=True)
class Plan:
    """All of `include` and none of `exclude`; `highlight`: terms to mark in snippets."""

    include: tuple[Expr, ...]
    exclude: tuple[Expr, ...]
    highlight: frozenset[str] = field(default_factory=frozenset)

    @property
    def text_terms(self) -> list[str]:
        """Every text term the plan asks for (positively): what relevance is computed on."""
        found: list[str] = []
        for expr in self.include:
            _collect_text(expr, found)
        return list(dict.fromkeys(found))


def _collect_text(expr: Expr, found: list[str]) -> None:
    if isinstance(expr, Text):
        found.extend(term for phrase in expr.phrases for _, term in phrase)
    elif isinstance(expr, Either):
        for item in expr.items:
            _collect_text(item, found)


class Lexicon(Protocol):
    """A backend's terms for folded query words: per language (None: a stop word in that
    language), and the unstemmed author term."""

    def text_terms(self, word: str) -> Mapping[str, str | None]: ...

    def author_term(self, word: str) -> str | None: ...


def query_words(query: Query) -> set[str]:
    """Every folded word the query's leaves hold, for a backend to look up in one go."""
    found: set[str] = set()
    for node in (*query.include, *query.exclude):
        for leaf in node.items if isinstance(node, AnyOf) else (node,):
            if isinstance(leaf, Words | Phrase):
                found.update(words(leaf.text))
            elif isinstance(leaf, From):
                found.update(words(leaf.value))
    return found


def build(query: Query, lexicon: Lexicon, communities: Mapping[str, int]) -> Plan:
    """The plan for `query`; `communities` maps the slugs it names to their ids."""
    highlight: set[str] = set()
    include = [e for e in (_node(n, query, lexicon, communities, highlight)
                           for n in query.include) if e is not None]
    exclude = [e for e in (_node(n, query, lexicon, communities, set())
                           for n in query.exclude) if e is not None]
    return Plan(tuple(include), tuple(exclude), frozenset(highlight))


def _node(node: Node, query: Query, lexicon: Lexicon, communities: Mapping[str, int],
          highlight: set[str]) -> Expr | None:
    if isinstance(node, AnyOf):
        items = [_leaf(leaf, query, lexicon, communities, highlight) for leaf in node.items]
        if any(item is None for item in items):
            return None  # one alternative is always true, so the whole run is
        return Either(tuple(item for item in items if item is not None))
    return _leaf(node, query, lexicon, communities, highlight)


def _leaf(leaf: Leaf, query: Query, lexicon: Lexicon, communities: Mapping[str, int],
          highlight: set[str]) -> Expr | None:
    if isinstance(leaf, Words | Phrase):
        return _text(words(leaf.text), query.in_subject, lexicon, highlight)
    if isinstance(leaf, From):
        return _author(leaf.value, lexicon)
    if isinstance(leaf, InCommunity):
        return Meta((f"c{communities.get(leaf.slug, 0)}",))
    if isinstance(leaf, HasAttachment):
        return Meta((ATTACHMENT,))
    if isinstance(leaf, Before):
        return Meta(tuple(date_terms_before(leaf.day)))
    if isinstance(leaf, After):
        return Meta(tuple(date_terms_from(leaf.day)))
    raise AssertionError(leaf)


def _text(tokens: list[str], subject_only: bool, lexicon: Lexicon,
          highlight: set[str]) -> Text | None:
    if not tokens:
        return None
    per_word = [lexicon.text_terms(token) for token in tokens]
    if len(tokens) == 1 and not all(per_word[0].get(lang) for lang in LANGUAGES):
        # A stop word in one language: an English message does not index "the", a French
        # one does; requiring it would miss every English message.
        return None
    phrases: list[tuple[tuple[int, str], ...]] = []
    for lang in LANGUAGES:
        phrase = tuple((position, term) for position, terms in enumerate(per_word)
                       if (term := terms.get(lang)))
        if not phrase:
            return None  # only stop words in this language: no constraint at all
        if phrase not in phrases:
            phrases.append(phrase)
    highlight.update(tokens)
    highlight.update(term for phrase in phrases for _, term in phrase)
    return Text(tuple(phrases), subject_only)


def _author(value: str, lexicon: Lexicon) -> Author | None:
    local, at, domain = value.strip().partition("@")
    if at and local and "." in domain:
        return Author((address_term(value),))
    terms = [term for term in (lexicon.author_term(word) for word in words(value)) if term]
    return Author(tuple(dict.fromkeys(terms))) if terms else None


def meta_date_terms(day: date) -> list[str]:
    """The date grains a message dated `day` carries (the triggers write the same)."""
    y = f"{day.year:04d}"
    return [f"k{y[:2]}", f"e{y[:3]}", f"y{y}", f"m{y}{day.month:02d}",
            f"d{y}{day.month:02d}{day.day:02d}"]


def _clamp(day: date) -> date | None:
    if day.year < FIRST_YEAR:
        return None
    if day.year > LAST_YEAR:
        return date(LAST_YEAR, 12, 31)
    return day


def date_terms_before(day: date) -> list[str]:
    """Grains that cover every day from FIRST_YEAR up to, not including, `day`."""
    if day.year > LAST_YEAR:
        return [f"k{c:02d}" for c in range(FIRST_YEAR // 100, LAST_YEAR // 100 + 1)]
    clamped = _clamp(day)
    if clamped is None:
        return ["k_"]  # matches nothing
    y = clamped.year
    terms = [f"d{y:04d}{clamped.month:02d}{d:02d}" for d in range(1, clamped.day)]
    terms += [f"m{y:04d}{m:02d}" for m in range(1, clamped.month)]
    terms += [f"y{year:04d}" for year in range(y - y % 10, y)]
    terms += [f"e{decade:03d}" for decade in range(y // 100 * 10, y // 10)]
    terms += [f"k{century:02d}" for century in range(FIRST_YEAR // 100, y // 100)]
    return terms or ["k_"]


def date_terms_from(day: date) -> list[str]:
    """Grains that cover every day from `day` (included) to the end of LAST_YEAR."""
    if day.year < FIRST_YEAR:
        return [f"k{c:02d}" for c in range(FIRST_YEAR // 100, LAST_YEAR // 100 + 1)]
    if day.year > LAST_YEAR:
        return ["k_"]
    y = day.year
    month_end = (date(y + (day.month == 12), day.month % 12 + 1, 1) - timedelta(days=1)).day
    terms = [f"d{y:04d}{day.month:02d}{d:02d}" for d in range(day.day, month_end + 1)]
    terms += [f"m{y:04d}{m:02d}" for m in range(day.month + 1, 13)]
    terms += [f"y{year:04d}" for year in range(y + 1, y - y % 10 + 10)]
    terms += [f"e{decade:03d}" for decade in range(y // 10 + 1, y // 100 * 10 + 10)]
    terms += [f"k{century:02d}" for century in range(y // 100 + 1, LAST_YEAR // 100 + 1)]
    return terms


def scope(visible: Iterable[int] | None, every: Iterable[int]) -> tuple[Meta | None,
                                                                       Meta | None]:
    """(include, exclude) meta constraints restricting a search to the `visible` communities.

    Whichever list is shorter is used: most readers see all but a few private communities.
    """
    if visible is None:
        return None, None
    shown = sorted(set(visible))
    hidden = sorted(set(every) - set(shown))
    if not hidden:
        return None, None
    if not shown:
        return Meta(("c0",)), None
    if len(hidden) < len(shown):
        return None, Meta(tuple(f"c{c}" for c in hidden))
    return Meta(tuple(f"c{c}" for c in shown)), None
