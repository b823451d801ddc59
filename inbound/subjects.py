"""Subject normalisation for threading by subject.

Mail clients prefix replies and forwards in their own language: Re, RE, Fwd, Fw, TR
(French "transféré"), AW/WG (German), SV/VS (Nordic), RV (Spanish "reenviado"), Réf,
Antw (Dutch), Odp (Polish), Enc (Portuguese), ... sometimes repeated, with counters
("Re[2]:", "Re(3):"), with the French space before the colon ("Re :"), and list tags
("[rd]"). All of them are stripped, repeatedly, and the rest is case- and space-folded.
"""

from __future__ import annotations

import re
import unicodedata

_PREFIX = re.compile(
    r"^\s*(?:"
    r"(?:re|r[ée]f\.?|fwd?|tr|aw|wg|sv|vs|rv|antw|odp|enc|rif|ynt|res|fs|vb|doorst)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]"
    r"|\[[^\]]{1,40}\]"
    r")\s*",
    re.IGNORECASE,
)


def strip_prefixes(subject: str) -> str:
    """The subject without reply/forward prefixes and [tags], as shown to people."""
    previous = None
    text = subject.strip()
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text, count=1)
    return text.strip()


def normalise_subject(subject: str) -> str:
    """The key conversations are matched on: prefixes stripped, case and spaces folded."""
    text = unicodedata.normalize("NFC", strip_prefixes(subject))
    return " ".join(text.casefold().split())[:300]


def is_forward(subject: str) -> bool:
    return re.match(r"^\s*(?:fwd?|tr|wg|rv|enc|vb|doorst)\s*[:：]", subject, re.IGNORECASE) \
        is not None
