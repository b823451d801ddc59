"""A cheap guess of a text's language from its most common words.

Good enough to pick the search stemmer and the language of a notice; a message too short
to tell gets "" (the community's language is used instead).
"""

from __future__ import annotations

import re

_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "and",
            "is",
            "are",
            "to",
            "of",
            "in",
            "that",
            "it",
            "for",
            "you",
            "with",
            "this",
            "on",
            "be",
            "have",
            "not",
            "was",
            "we",
            "can",
            "will",
            "what",
            "but",
        ]
    ),
    "fr": frozenset(
        [
            "le",
            "la",
            "les",
            "et",
            "est",
            "des",
            "une",
            "un",
            "que",
            "qui",
            "pour",
            "pas",
            "dans",
            "vous",
            "nous",
            "sur",
            "avec",
            "ce",
            "je",
            "il",
            "du",
            "au",
            "sont",
            "mais",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "das",
            "und",
            "ist",
            "nicht",
            "ich",
            "sie",
            "es",
            "mit",
            "den",
            "ein",
            "eine",
            "zu",
            "auf",
            "für",
            "wir",
            "von",
            "dem",
            "auch",
            "sind",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "los",
            "las",
            "y",
            "es",
            "que",
            "de",
            "en",
            "un",
            "una",
            "por",
            "con",
            "para",
            "no",
            "se",
            "lo",
            "al",
            "del",
            "como",
            "pero",
            "está",
        ]
    ),
    "it": frozenset(
        [
            "il",
            "lo",
            "gli",
            "e",
            "è",
            "che",
            "di",
            "in",
            "un",
            "una",
            "per",
            "con",
            "non",
            "si",
            "sono",
            "della",
            "anche",
            "come",
            "ma",
            "questo",
        ]
    ),
    "nl": frozenset(
        [
            "de",
            "het",
            "een",
            "en",
            "is",
            "van",
            "dat",
            "niet",
            "ik",
            "je",
            "met",
            "op",
            "voor",
            "zijn",
            "we",
            "ook",
            "maar",
            "aan",
            "er",
            "wat",
        ]
    ),
}


def guess_language(text: str, sample: int = 2000) -> str:
    words = [w.lower() for w in _WORDS.findall(text[:sample])]
    if len(words) < 4:
        return ""
    scores = {lang: sum(1 for w in words if w in stop) for lang, stop in STOPWORDS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    if scores[best] < 2:
        return ""
    return best
