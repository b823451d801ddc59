"""Corporate mail clean-up: gateway banners and rewritten links.

Company mail gateways change the mail they pass on. Two changes matter for an archive of
conversations, and both are undone here, on the new text of a reply (after ``split_reply``):

* **Banners.** "[EXTERNAL]" tags and "CAUTION: This email originated from outside of the
  organization…" warnings are inserted above what the author wrote. In a community thread
  every message from a partner would start with the same warning, and a summary or search
  would be about the warning. ``remove_banners`` removes such paragraphs from the top of the
  text only — a paragraph lower down that *talks about* external mail is the author's — and
  only when a paragraph has both the shape of a banner (a warning label or tag, or "This
  message…" as subject) and its substance (the external-origin wording, in English, French or
  German). Proofpoint's explicit ``ZjQcmQRYFpfptBannerStart``/``…End`` markers are honoured
  wherever they are.
* **Rewritten links.** Outlook Safe Links and Proofpoint URL Defense replace every address
  with a tracking one that names the gateway, expires, and hides where the link goes.
  ``unwrap_links`` puts the original address back. Wrappers can be nested (a Safe Link around
  a URL Defense link), so unwrapping repeats until nothing changes, a few times at most.

Both functions are pure, linear in the text, and leave text without banners or wrapped links
unchanged.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["remove_banners", "unwrap_links"]

_MAX_BANNER_PARAGRAPHS = 3
_MAX_BANNER_CHARS = 700
_MAX_UNWRAP_ROUNDS = 3

_PROOFPOINT_START = "ZjQcmQRYFpfptBannerStart"
_PROOFPOINT_END = "ZjQcmQRYFpfptBannerEnd"

# A tag alone: "[EXTERNAL]", "*EXTERNAL EMAIL*", "[EXTERNE]", "[Extern]", "EXTERNAL SENDER".
_TAG = (
    r"(?:external|externe|extern|ext)(?:[ -]?(?:e-?mail|sender|message|courriel|mail"
    r"|nachricht|absender|expéditeur))?"
)
_TAG_ONLY = re.compile(rf"[\[(*<{{]* ?{_TAG} ?[\])*>}}:!.]*", re.IGNORECASE)  # fullmatch
_TAG_PREFIX = re.compile(rf"^\s*(?:\[{_TAG}\]|\*{{1,2}}{_TAG}\*{{1,2}})\s+(?=\S)", re.IGNORECASE)
# How a banner starts: a warning label, a tag, or "This message…" as its subject.
_BANNER_START = re.compile(
    r"^[\[(*<{\s]*(?:caution|warning|attention|notice|important|security notice|external"
    r"|externe|extern|achtung|vorsicht|warnung|hinweis|avertissement|mise en garde|prudence"
    r"|this (?:e-?mail|message|mail)|ce (?:courriel|message|mail|e-mail)"
    r"|diese (?:e-mail|nachricht|mail)|you don't often get email from)\b",
    re.IGNORECASE,
)
# What a banner says: the mail comes from outside.
_BANNER_SUBSTANCE = re.compile(
    r"originated (?:from )?outside|came from outside|comes from outside|from outside (?:of )?"
    r"(?:the|your|our)|outside (?:of )?(?:the|your|our) (?:organi[sz]ation|company|network)"
    r"|external (?:sender|source|e-?mail)|from an external|don't often get email from"
    r"|provient de l'extérieur|provient d'un expéditeur externe|expéditeur externe"
    r"|(?:courriel|courrier|message|e-mail) externe|(?:en dehors|hors|à l'extérieur) de "
    r"(?:l'organisation|votre organisation|l'entreprise)|de l'extérieur de"
    r"|stammt von (?:außerhalb|ausserhalb|einem externen)|von außerhalb|von ausserhalb"
    r"|externen? absender|externe (?:e-mail|nachricht)|(?:außerhalb|ausserhalb) (?:der|ihrer"
    r"|unserer|des) (?:organisation|unternehmens|firma)",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*(?:[-_=*~]\s*){3,}$")

_URL_CHARS = r"[^\s<>\"'()\[\]]+"
_SAFELINKS = re.compile(
    rf"https?://[\w.-]*safelinks\.protection\.outlook\.com/\?{_URL_CHARS}", re.IGNORECASE
)
_URLDEFENSE_V1_V2 = re.compile(
    rf"https?://urldefense(?:\.proofpoint)?\.com/v[12]/url\?{_URL_CHARS}", re.IGNORECASE
)
_URLDEFENSE_V3 = re.compile(
    r"https?://urldefense(?:\.proofpoint)?\.com/v3/__(?P<url>[^\s<>\"]{1,2048}?)__;"
    r"(?P<chars>[A-Za-z0-9_=-]*)!![^\s<>\"$]*\$?",
    re.IGNORECASE,
)
_V3_PLACEHOLDER = re.compile(r"\*(\*.)?")
# URL Defense v3 writes a run of n replaced characters as "**" and one letter (n = 2, 3, …).
_V3_RUN_LENGTHS = {
    letter: index + 2
    for index, letter in enumerate(string.ascii_uppercase + string.ascii_lowercase
                                   + string.digits + "-_")
}
_SENTENCE_END = ".,;:!?"


# --- banners -------------------------------------------------------------------------------


def remove_banners(text: str) -> str:
    """Remove gateway warnings inserted above the text (see the module docstring)."""
    lines = _without_proofpoint_blocks(text.split("\n"))
    cut = 0
    for _ in range(_MAX_BANNER_PARAGRAPHS):
        start = _skip_blank_and_rules(lines, cut)
        stop = _paragraph_end(lines, start)
        if start >= len(lines) or not _is_banner(lines[start:stop]):
            break
        cut = stop
    if cut:
        cut = _skip_blank_and_rules(lines, cut)
    rest = lines[cut:]
    first = next((i for i, line in enumerate(rest) if line.strip()), None)
    if first is not None:
        rest[first] = _TAG_PREFIX.sub("", rest[first], count=1)
    return "\n".join(rest)


def _without_proofpoint_blocks(lines: list[str]) -> list[str]:
    """Drop every Proofpoint banner between its start and end marker lines."""
    kept: list[str] = []
    inside = False
    for line in lines:
        if _PROOFPOINT_START in line:
            inside = True
        elif _PROOFPOINT_END in line and inside:
            inside = False
        elif not inside:
            kept.append(line)
    return kept


def _skip_blank_and_rules(lines: list[str], index: int) -> int:
    """Skip blank lines and the rules some gateways draw around their banner."""
    while index < len(lines) and (not lines[index].strip() or _RULE.match(lines[index])):
        index += 1
    return index


def _paragraph_end(lines: list[str], start: int) -> int:
    """Index of the blank or rule line that ends the paragraph starting at ``start``."""
    index = start
    while index < len(lines) and lines[index].strip() and not _RULE.match(lines[index]):
        index += 1
    return index


def _is_banner(paragraph: list[str]) -> bool:
    """Whether a paragraph is a gateway banner: a bare tag, or a labelled external warning."""
    if sum(len(line) for line in paragraph) > _MAX_BANNER_CHARS * 2:
        return False
    joined = " ".join(" ".join(paragraph).split())
    if not joined or len(joined) > _MAX_BANNER_CHARS:
        return False
    if _TAG_ONLY.fullmatch(joined):
        return True
    return bool(_BANNER_START.match(joined)) and _BANNER_SUBSTANCE.search(joined) is not None


# --- links ---------------------------------------------------------------------------------


def unwrap_links(text: str) -> str:
    """Replace Safe Links and URL Defense (v1, v2, v3) addresses by the original ones."""
    for _ in range(_MAX_UNWRAP_ROUNDS):
        unwrapped = _unwrap_once(text)
        if unwrapped == text:
            break
        text = unwrapped
    return text


def _unwrap_once(text: str) -> str:
    """One pass over each kind of wrapper (the substring tests skip most texts at once)."""
    if "safelinks" in text:
        text = _SAFELINKS.sub(_keeping_sentence_end(_safelinks_target), text)
    if "urldefense" in text:
        text = _URLDEFENSE_V1_V2.sub(_keeping_sentence_end(_urldefense_v2_target), text)
        text = _URLDEFENSE_V3.sub(_urldefense_v3_target, text)
    return text


def _keeping_sentence_end(decode: Callable[[str], str | None]) -> Callable[[re.Match[str]], str]:
    """A substitution that leaves a sentence's final punctuation after the address."""

    def substitute(match: re.Match[str]) -> str:
        """The original address, or the match unchanged when it does not decode."""
        wrapped = match[0]
        core = wrapped.rstrip(_SENTENCE_END)
        original = decode(core)
        return wrapped if original is None else original + wrapped[len(core) :]

    return substitute


def _query_value(url: str, name: str) -> str | None:
    """The first value of a query parameter, percent-decoded."""
    values = parse_qs(urlsplit(url).query).get(name)
    return values[0] if values else None


def _safelinks_target(url: str) -> str | None:
    """Safe Links carry the original, percent-encoded, in ``url=``."""
    return _query_value(url, "url")


def _urldefense_v2_target(url: str) -> str | None:
    """URL Defense v2 encodes ``%`` as ``-`` and ``/`` as ``_`` in ``u=``; v1 percent-encodes."""
    value = _query_value(url, "u")
    if value is None:
        return None
    if "/v2/" in url.lower():
        value = unquote(value.replace("-", "%").replace("_", "/"))
    return value if value.startswith(("http://", "https://", "ftp://", "mailto:")) else None


def _urldefense_v3_target(match: re.Match[str]) -> str:
    """URL Defense v3 keeps the address between ``__``, with ``*`` for some characters.

    The characters replaced by ``*`` follow the ``;`` in URL-safe base64; ``**`` and a letter
    stands for a run of them. An address that does not decode is left as it was.
    """
    try:
        replaced = base64.urlsafe_b64decode(_padded(match["chars"])).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return match[0]
    position = 0

    def restore(placeholder: re.Match[str]) -> str:
        """The characters one placeholder stands for, taken in order."""
        nonlocal position
        run = placeholder[1]
        length = _V3_RUN_LENGTHS.get(run[1], 0) if run else 1
        chunk = replaced[position : position + length]
        position += length
        return chunk

    url = _V3_PLACEHOLDER.sub(restore, match["url"])
    return url if position <= len(replaced) else match[0]


def _padded(chars: str) -> str:
    """Base64 text with the ``=`` padding URL Defense leaves out."""
    return chars + "=" * (-len(chars) % 4)
