"""From text to index terms: the one definition both the index and the queries use.

A word is a run of letters and digits (anything else separates words, as PostgreSQL's parser
does once `archive.search.postgres` has blanked out punctuation). Each word is lower-cased and
its accents folded ("Réunion" -> "reunion", "œuvre" -> "oeuvre", as PostgreSQL's `unaccent`
does); a word without digits is then dropped if it is a stop word of the message's language
and otherwise reduced to its Snowball stem in that language (English, or French for a message
whose language starts with "fr"); a word with digits is kept as it is. The stems are the
Snowball algorithms PostgreSQL's `english_stem` and `french_stem` dictionaries use, from
PyStemmer (the Snowball project's own C code).

A message is indexed in its own language only; a query word is looked up under both stems
(English and French), so "meetings" finds "meeting" in a French community and "réunions" finds
"réunion" in an English one. A query word that is a stop word in either language is dropped
from the query: otherwise "the meeting" would never match an English message, which does not
index "the". Accents are folded before stemming (as PostgreSQL's `unaccent, french_stem`
chain does), which makes the French stemmer a little weaker on some endings ("reportées" ->
"reporte") but the same whether or not the person typed the accents.

On SQLite the triggers of migration 0002 call `causerie_search_text(text, language)` and
`causerie_search_author(name, address)`, registered on each connection by `sqlite_functions`.
They run inside the statement that writes the message row, so the index is in step with the
messages in the same transaction whatever code writes them.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from collections.abc import Callable
from typing import Any

import Stemmer

from bridge.stopwords import ENGLISH, FRENCH

LANGUAGES = ("en", "fr")
_SNOWBALL = {"en": "english", "fr": "french"}
_STOP = {"en": ENGLISH, "fr": FRENCH}

WORD = re.compile(r"[^\W_]+")
_DIGIT = re.compile(r"\d")
_MARKS = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
# Letters NFKD does not decompose, folded as PostgreSQL's unaccent.rules folds them.
_LETTERS = str.maketrans({"œ": "oe", "æ": "ae", "ß": "ss", "ø": "o", "ł": "l", "đ": "d",
                          "þ": "th", "ð": "d", "ħ": "h", "ı": "i", "ŀ": "l", "ŧ": "t"})
# A bounded cache: a long-running server meets an unbounded vocabulary (ids, hashes, typos).
_CACHE_LIMIT = 200_000


def fold(text: str) -> str:
    """Lower-case `text` and remove its accents ("Réunion" -> "reunion")."""
    text = text.lower().translate(_LETTERS)
    if text.isascii():
        return text
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))


def words(text: str) -> list[str]:
    """The folded words of `text`, in order, stop words included."""
    return WORD.findall(fold(text))


def index_language(language: str) -> str:
    """The stemming language for a message's language code: French, else English."""
    return "fr" if language.lower().startswith("fr") else "en"


def address_term(address: str) -> str:
    """The single term that stands for a whole address (the tokenizer would split it)."""
    digest = hashlib.md5(address.strip().lower().encode("utf-8"), usedforsecurity=False)
    return "f" + digest.hexdigest()[:16]


class Analyzer:
    """Stems words in English and French, with a cache of what it has seen.

    Not safe to share between threads (PyStemmer's stemmers are not): one per connection for
    the index functions, one per search for the queries.
    """

    def __init__(self) -> None:
        self._stemmers = {lang: Stemmer.Stemmer(_SNOWBALL[lang]) for lang in LANGUAGES}
        self._cache: dict[str, dict[str, str]] = {lang: {} for lang in LANGUAGES}
        # Terms computed ahead by another process (see `remember`), used once each.
        self._known: dict[tuple[str, str], str] = {}

    def remember(self, text: str, language: str, terms: str) -> None:
        """Take `terms` as the index terms of (`text`, `language`) the next time they are
        asked for: an import computes them in its worker processes, so that the search
        trigger in the writing process does not compute them again."""
        self._known[(text, index_language(language))] = terms

    def forget(self) -> None:
        """Drop what `remember` was told and was not asked for."""
        self._known.clear()

    def term(self, word: str, lang: str) -> str:
        """The index term of one folded word in `lang`; "" for a stop word."""
        cache = self._cache[lang]
        term = cache.get(word)
        if term is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            if _DIGIT.search(word):
                term = word
            elif word in _STOP[lang]:
                term = ""
            else:
                term = self._stemmers[lang].stemWord(word)
            cache[word] = term
        return term

    def index_text(self, text: str | None, language: str | None) -> str:
        """The index terms of `text`, space-separated, stop words left out."""
        if not text:
            return ""
        lang = index_language(language or "")
        if self._known:
            known = self._known.pop((text, lang), None)
            if known is not None:
                return known
        cache = self._cache[lang]
        found = words(text)
        try:
            return " ".join(filter(None, map(cache.__getitem__, found)))
        except KeyError:
            return " ".join(filter(None, (self.term(word, lang) for word in found)))

    def query_terms(self, word: str) -> dict[str, str]:
        """A folded query word's term in each language: {"en": ..., "fr": ...}."""
        return {lang: self.term(word, lang) for lang in LANGUAGES}


def author_text(name: str | None, address: str | None) -> str:
    """The author terms: the folded words of the name and address, and the address term."""
    terms = words(f"{name or ''} {address or ''}")
    if address and address.strip():
        terms.append(address_term(address))
    return " ".join(terms)


def sqlite_functions(dbapi_connection: Any, _record: Any = None) -> None:
    """Register the functions the search triggers call on a new SQLite connection.

    Usable directly as a SQLAlchemy "connect" listener. Each connection gets its own analyzer:
    SQLite calls the functions on the thread that runs the statement.
    """
    register_analyzer(dbapi_connection, Analyzer())


def register_analyzer(dbapi_connection: Any, analyzer: Analyzer) -> None:
    """Make the search triggers of this SQLite connection use `analyzer` (one that was told
    terms ahead with `Analyzer.remember`, for instance)."""
    connection: sqlite3.Connection = getattr(dbapi_connection, "driver_connection",
                                             dbapi_connection)
    text_fn: Callable[[str | None, str | None], str] = analyzer.index_text
    connection.create_function("causerie_search_text", 2, text_fn, deterministic=True)
    connection.create_function("causerie_search_author", 2, author_text, deterministic=True)
