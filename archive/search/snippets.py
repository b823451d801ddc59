"""Snippets: the passage of a message that best shows why it matched, marked up safely.

Computed in Python on both backends from the stored text, with the same analysis as the
index, so "réunions" highlights "Réunion" and "meetings" highlights "meeting". The HTML
variant escapes everything and wraps matches in <mark>; the plain variant has no markup.

Stemming every word of every hit would cost more than the search itself, so the text is folded
character by character (one `str.translate`, keeping every position), and only the words that
begin like a query term (their first three letters) are stemmed and compared.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection
from dataclasses import dataclass

from bridge.searchtext import Analyzer, fold, index_language

_SPACES = re.compile(r"\s+")
_WORD_START = re.compile(r"(?<![^\W_])[^\W_]")
_WORD_END = re.compile(r"[^\W_](?![^\W_])")
WIDTH = 220      # characters in a snippet, about 30 words
LEAD = 50        # characters shown before the first match
SCAN = 20_000    # characters of a message looked at: a match further on (in a pasted log) is
                 # not shown, the snippet is then the beginning; the whole body would cost ms


@dataclass(frozen=True)
class Snippet:
    text: str
    html: str


def _fold_in_place(text: str) -> str:
    """`text` lower-cased and without accents, one character for one (positions kept)."""
    if text.isascii():
        return text.lower()  # the same, without a table built from every character
    table = {ord(c): (fold(c) or c)[:1] for c in set(text) if not c.isascii() or c.isupper()}
    return text.translate(table)


def _matches(body: str, language: str, terms: Collection[str],
             analyzer: Analyzer) -> list[tuple[int, int, str]]:
    prefixes = sorted({term[:3] for term in terms if term}, key=len, reverse=True)
    if not prefixes:
        return []
    pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, prefixes))
                         + r")[^\W_]*")
    lang = index_language(language)
    found = []
    for match in pattern.finditer(_fold_in_place(body)):
        word = match.group()
        term = word if word in terms else analyzer.term(word, lang)
        if term in terms:
            found.append((match.start(), match.end(), term))
            if len(found) >= 200:
                break
    return found


def snippet(body: str, language: str, terms: Collection[str], analyzer: Analyzer,
            width: int = WIDTH) -> Snippet:
    """About `width` characters of `body` around the most distinct `terms`, on word bounds."""
    body = _SPACES.sub(" ", body[:SCAN]).strip()
    matches = _matches(body, language, terms, analyzer)
    best, best_count, distinct = 0, 0, len({term for _, _, term in matches})
    for i, (start, _, _) in enumerate(matches):
        if best_count == distinct:
            break  # no later window can hold more
        shown: set[str] = set()
        for begin, _, term in matches[i:]:   # in order of position
            if begin >= start + width - LEAD:
                break
            shown.add(term)
        if len(shown) > best_count:
            best, best_count = i, len(shown)
    begin = max(0, matches[best][0] - LEAD) if matches else 0
    if begin:
        word = _WORD_START.search(body, begin)
        begin = word.start() if word else begin
    end = min(len(body), begin + width)
    if end < len(body):
        ends = [word.end() for word in _WORD_END.finditer(body, max(begin, end - 40), end)]
        end = ends[-1] if ends else end
    plain, marked, cursor = [], [], begin
    for start, stop, _ in matches:
        if start >= cursor and stop <= end:
            plain.append(body[cursor:stop])
            marked.append(html.escape(body[cursor:start]))
            marked.append("<mark>" + html.escape(body[start:stop]) + "</mark>")
            cursor = stop
    plain.append(body[cursor:end])
    marked.append(html.escape(body[cursor:end]))
    prefix = "… " if begin > 0 else ""
    suffix = " …" if end < len(body) else ""
    return Snippet(prefix + "".join(plain).strip() + suffix,
                   html.escape(prefix) + "".join(marked).strip() + html.escape(suffix))
