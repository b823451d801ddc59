"""Split a plain-text email reply into its new words, the quoted remainder and the signature.

The "extract" step keeps, for every message, only what its author wrote this time, so that a
conversation reads as a thread rather than a pile of ever-growing quotes. Mail clients build a
reply line by line (an attribution line, ``>`` prefixes, a header block, a signature delimiter),
so the rules here classify lines, in a few linear passes. No regular expression runs over the
whole body; the ones that run on a line are anchored and free of nested quantifiers, and the
costlier checks run only on the few lines that pass a cheap test first. A typical reply takes
about 0.1 ms; a hostile body costs a few microseconds per line (about a second for 1 MB of
the worst line shapes), never the minutes of catastrophic backtracking.

How one body is split:

1. **Code and ``>`` quotes.** Lines inside fenced code blocks (```` ``` ```` or ``~~~``) are
   opaque: never a quote, a header or a signature, because people paste shell sessions, SQL
   (``--`` comments) and mail templates. A ``>`` line is a quote unless it continues a shell
   prompt line (``$ cat <<EOF`` then ``> ...``) or belongs to a run of Python prompts (``>>>``
   with no ``>``/``>>`` line: a real third-level quote never comes without the first two).
   Lines starting with ``|`` (Gnus) or with an indented ``>`` (Emacs Supercite) are quotes
   too when an attribution introduces them; otherwise they are tables, pipelines or prompts
   in indented code. An elision mark ("[...]", "<snip>") next
   to a quote, and a line a client re-wrapped out of a quote (unquoted, squeezed between two
   quoted lines, after a long one) are part of the quote.
2. **The cut.** Reading down the unquoted lines, the first of these ends the author's words,
   and everything from it on is the quoted remainder: an "original/forwarded message"
   separator line, an Outlook-style header block (From/Sent/To/Subject in about fifteen
   languages, ``*bold*`` or not), an attribution line ("On … wrote:", "Le … a écrit :", …, also
   wrapped over up to three lines) that is *not* followed by ``>`` lines (the quoted message
   follows unmarked, unless a quote comes before any other mark of a quoted message: then
   the author typed between attribution and quote), or a mobile "Sent from my …" line
   followed by anything. Blank lines and
   rules (``-----``, ``_____``) just above the cut go with the quote. An attribution that *is*
   followed by ``>`` lines simply joins that quote block.
3. **Blocks and answers.** Before the cut, quote blocks (``>`` lines and their attribution)
   alternate with gaps of unquoted lines. The last gap that holds new words (not just a
   signature) ends the reply; the quote blocks after it are the quoted remainder, and
   signature-only gaps after it (a Gmail signature under the quote, a list footer) are the
   signature.
4. **Inline replies — the rule.** The quote blocks *before* the last answer are the ones being
   answered. With a single answered block the reply is bottom-posted: the block is the
   previous message, which the thread already shows, so it goes to ``quoted`` only. With two
   or more answered blocks the reply is interleaved, and answers such as "Yes, Tuesday." mean
   nothing without their question: each answered block keeps, in ``text``, the quoted lines
   right above the answer (its last quoted paragraph, at most ``MAX_CONTEXT_LINES`` lines),
   still ``>``-prefixed. Attribution lines never stay in ``text``; ``quoted`` always holds
   every quoted line, so context kept in ``text`` appears there too.
5. **Signature.** In the last answer gap, the signature starts at the first of: the ``-- ``
   delimiter (RFC 3676; also ``--`` without the space when a short block follows), a mobile
   "Sent from my …" line, an underscore rule followed by a short footer, a "-Name" sign-off
   line (a dash touching one to three capitalised words, after a blank line; "- Name" with a
   space is a list item), or a closing formula ("Best regards," "Cordialement," "Mit
   freundlichen Grüßen" …) followed by a block of two to six short lines (name, title,
   phone). A bare "Regards,\\nJohn" stays in the text: it is short and personal, whereas a
   contact block is boilerplate repeated in every message. A signature-only stretch after
   the quote (Gmail puts the signature under it; lists append a footer) is the signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["MAX_CONTEXT_LINES", "ReplyParts", "split_reply"]

#: In an interleaved reply, at most this many quoted lines stay above each answer as context.
MAX_CONTEXT_LINES = 4
#: An attribution wrapped by the client spans at most this many lines.
_MAX_ATTRIBUTION_LINES = 3
#: Longer joined "attribution" text is a paragraph, not a header.
_MAX_ATTRIBUTION_CHARS = 400
#: "--" (without the RFC space), underscore rules and "-Name" end the text only if at most
#: this many non-blank lines follow; otherwise they are content (a separator, a list).
_MAX_SIGNATURE_TAIL = 12
#: A closing formula starts a signature only when a contact block of this size follows.
_VALEDICTION_BLOCK = (2, 6)
_VALEDICTION_LINE_CHARS = 80
#: A line re-wrapped out of a quote follows a quoted line at least this long.
_REWRAP_MIN_CHARS = 60
#: Lines scanned for one header block (keys plus one wrapped value line each).
_MAX_HEADER_BLOCK_LINES = 14
#: Mobile signatures name a device or an app in a few words.
_MAX_MOBILE_WORDS = 6
_MAX_MOBILE_CHARS = 90


@dataclass(frozen=True)
class ReplyParts:
    """A reply split into the author's new words, the quoted remainder and the signature."""

    text: str  # the new words only, stripped of trailing/leading blank lines
    quoted: str  # the quoted remainder (attribution header + quoted lines), "" if none
    signature: str  # the signature block removed from the new words, "" if none


class _Role(IntEnum):
    """Where one line of the body goes."""

    DROP = 0
    TEXT = 1
    QUOTE = 2
    SIGNATURE = 3
    CONTEXT = 4  # a quoted line kept in the text as context: both TEXT and QUOTE


# --- line patterns -------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(?:```|~~~)")
_RULE = re.compile(r"^\s*(?:[-_=*~—–]\s*){3,}$")
_UNDERSCORE_RULE = re.compile(r"^\s*_{2,}\s*$")
_SHELL_PROMPT = re.compile(r"^\s*(?:[$%]|PS\d?>)\s")
_PYTHON_PROMPT = re.compile(r"^>>>(?: |$)")
# Whole-line patterns below are matched on stripped lines, without leading or trailing
# "\s*": two adjacent whitespace quantifiers backtrack quadratically on long blank runs.
_ELISION = re.compile(
    r"[\[(<{] ?(?:\.\.\.|…|snip|snipped|schnipp|coupé) ?[\])>}]|-* ?(?:snip|schnipp) ?-*|\.{3,}|…",
    re.IGNORECASE,
)
_MAX_ELISION_CHARS = 16
_INDENTED_QUOTE = re.compile(r"^ {1,8}>")
_DASH_NAME = re.compile(r"^[-–—]([^\W\d_][\w.'’-]*(?:\s+[^\W\d_][\w.'’-]*){0,2})\s*$")

# "-----Original Message-----" and friends, and Apple Mail's "Begin forwarded message:".
_SEPARATOR_PHRASES = (
    r"original message|forwarded message|message d'origine|message transf[ée]r[ée]"
    r"|ursprüngliche nachricht|weitergeleitete nachricht|originalnachricht"
    r"|mensaje original|mensaje reenviado|messaggio originale|messaggio inoltrato"
    r"|oorspronkelijk bericht|doorgestuurd bericht|mensagem original|mensagem encaminhada"
    r"|originalmeddelande|vidarebefordrat meddelande|opprinnelig melding|videresendt melding"
    r"|oprindelig besked|videresendt besked|alkuperäinen viesti|välitetty viesti"
    r"|wiadomość oryginalna|oryginalna wiadomość|przekazana wiadomość|původní zpráva"
    r"|исходное сообщение|пересылаемое сообщение|eredeti üzenet|orijinal ileti"
)
_SEPARATOR = re.compile(
    rf"[-=_*]{{2,}} ?(?:{_SEPARATOR_PHRASES}) ?[-=_*]*"
    r"|(?:begin forwarded message|début du message réexpédié"
    r"|anfang der weitergeleiteten nachricht|inicio del mensaje reenviado) ?[:：]",
    re.IGNORECASE,
)

# Outlook-style header blocks. Each key maps to the field it names.
_KIND_FROM, _KIND_DATE, _KIND_TO, _KIND_CC, _KIND_SUBJECT = "from", "date", "to", "cc", "subject"
_HEADER_KINDS: dict[str, str] = {
    **dict.fromkeys(
        ("from", "de", "von", "van", "da", "fra", "från", "frå", "lähettäjä", "od", "от",
         "feladó", "kimden", "remetente", "发件人", "寄件者", "差出人", "보낸 사람"),
        _KIND_FROM,
    ),
    **dict.fromkeys(
        ("sent", "date", "datum", "gesendet", "envoyé", "envoyé le", "enviado", "enviado el",
         "inviato", "data", "verzonden", "sendt", "skickat", "lähetetty", "wysłano",
         "отправлено", "дата", "odesláno", "elküldve", "gönderildi", "发送时间", "日期",
         "送信日時", "보낸 날짜", "message du"),
        _KIND_DATE,
    ),
    **dict.fromkeys(
        ("to", "à", "a", "an", "aan", "para", "til", "till", "vastaanottaja", "do", "кому",
         "címzett", "kime", "收件人", "宛先", "받는 사람"),
        _KIND_TO,
    ),
    **dict.fromkeys(("cc", "copie à", "kopie", "kopia", "копия", "抄送"), _KIND_CC),
    **dict.fromkeys(
        ("subject", "objet", "betreff", "asunto", "oggetto", "onderwerp", "assunto", "emne",
         "ämne", "aihe", "temat", "тема", "předmět", "tárgy", "konu", "主题", "主旨", "件名",
         "제목", "sujet"),
        _KIND_SUBJECT,
    ),
}
_HEADER_KEY = re.compile(
    r"(?:[*_]{1,2})?(?P<key>"
    + "|".join(sorted((re.escape(k) for k in _HEADER_KINDS), key=len, reverse=True))
    + r")[^\S\n]*(?:[*_]{1,2}[^\S\n]*)?[:：]",
    re.IGNORECASE,
)

# Attribution lines. The openers start the common "On <date>, <name> wrote:" shapes.
_OPENER = re.compile(
    r"^(?:on|le|am|el|il|in data|il giorno|op|em|den|på|w dniu|dnia|dne|em \d)\b",
    re.IGNORECASE,
)
_VERB_WORDS = (
    "wrote", "writes", "a écrit", "schrieb", "schreibt", "escribió", "escribio", "ha escrit",
    "ha scritto", "schreef", "escreveu", "skrev", "kirjoitti", "napisał", "napisała", "napisal",
    "pisze", "написал", "написала", "написав", "írta", "napsal", "napsala", "yazdı", "a scris",
    "έγραψε", "kirjutas", "rašė", "rakstīja", "napisao", "napisala",
)
_CJK_VERB_WORDS = ("写道", "寫道", "작성", "のメッセージ", "書きました", "書き込みました")
_VERB_ANY = re.compile(
    r"(?:\b(?:" + "|".join(map(re.escape, _VERB_WORDS)) + r")\b|"
    + "|".join(map(re.escape, _CJK_VERB_WORDS)) + ")",
    re.IGNORECASE,
)
_VERB_LAST_CHARS = frozenset(word[-1] for word in _VERB_WORDS + _CJK_VERB_WORDS)
_DATE = re.compile(
    r"\d{1,2}[:.h]\d{2}\b|\b(?:19|20)\d{2}\b|(?:19|20)\d{2}年|\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b"
)
_EMAIL = re.compile(r"[\w.+'-]@[\w-]+(?:\.[\w-]+)+")
_BRACKETED_EMAIL = re.compile(r"[<(\[](?:mailto:)?[\w.+'-]+@[\w-]+(?:\.[\w-]+)+[>)\]]")
_OPEN_BRACKET_SPACE = re.compile(r"([<(\[])\s+")
_CLOSE_BRACKET_SPACE = re.compile(r"(?<!\s)\s+([>)\]])")  # starts only where a run starts

# Mobile and webmail signatures: a prefix, then a device or app in a few words.
_MOBILE = re.compile(
    r"(?P<prefix>sent from my|sent from|sent with|sent via|sent using|get outlook for"
    r"|envoyé de mon|envoyé de ma|envoyé depuis mon|envoyé depuis|envoyé à partir de"
    r"|envoyé avec|télécharger outlook pour|von meinem|gesendet von meinem|gesendet von"
    r"|gesendet mit|enviado desde mi|enviado desde|enviado do meu|enviado do|enviado de meu"
    r"|inviato dal mio|inviato da|verzonden met|verzonden vanaf mijn|verstuurd vanaf mijn"
    r"|skickat från min|skickat från|sendt fra min|sendt fra|lähetetty|wysłane z"
    r"|отправлено с|отправлено из)\s+(?P<rest>\S.*)$",
    re.IGNORECASE,
)

_MOBILE_INITIALS = frozenset("sgetviwlо")

# Closing formulas, compared after lower-casing and dropping trailing punctuation.
_VALEDICTIONS = frozenset(
    (
        "regards", "best regards", "kind regards", "warm regards", "warmest regards",
        "many regards", "with regards", "with best regards", "with kind regards",
        "best wishes", "all the best", "cheers", "sincerely", "yours sincerely",
        "sincerely yours", "yours truly", "respectfully", "best", "thanks and regards",
        "thanks & regards", "cordialement", "bien cordialement", "très cordialement",
        "bien à vous", "salutations", "sincères salutations", "meilleures salutations",
        "amicalement", "mit freundlichen grüßen", "mit freundlichen grüssen",
        "freundliche grüße", "freundliche grüsse", "viele grüße", "viele grüsse",
        "beste grüße", "beste grüsse", "liebe grüße", "liebe grüsse", "herzliche grüße",
        "mfg", "saludos", "un saludo", "saludos cordiales", "atentamente", "cordialmente",
        "cordiali saluti", "distinti saluti", "un saluto", "met vriendelijke groet",
        "met vriendelijke groeten", "vriendelijke groet", "atenciosamente", "cumprimentos",
        "med vänlig hälsning", "med vänliga hälsningar", "vänliga hälsningar",
        "med venlig hilsen", "venlig hilsen", "med vennlig hilsen", "vennlig hilsen", "mvh",
        "ystävällisin terveisin", "terveisin", "pozdrawiam", "z poważaniem", "с уважением",
    )
)


# --- public entry point --------------------------------------------------------------------


def split_reply(body: str) -> ReplyParts:
    """Split a plain-text reply into new words, quoted remainder and signature.

    See the module docstring for the rules and why each one exists.
    """
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    code = _code_mask(lines)
    quote = _quote_mask(lines, code)
    end, attribution = _find_cut(lines, code, quote)
    roles = [_Role.QUOTE] * len(lines)
    _assign_region(lines, code, quote, attribution, end, roles)
    return ReplyParts(
        text=_join(lines, roles, (_Role.TEXT, _Role.CONTEXT), is_text=True),
        quoted=_join(lines, roles, (_Role.QUOTE, _Role.CONTEXT), is_text=False),
        signature=_join(lines, roles, (_Role.SIGNATURE,), is_text=False),
    )


def _join(
    lines: Sequence[str], roles: Sequence[_Role], wanted: tuple[_Role, ...], is_text: bool
) -> str:
    """The lines with one of the wanted roles, without outer blank lines.

    The text's lines lose their trailing spaces, which carry no meaning once format=flowed
    has been decoded upstream; the quoted part and the signature keep their lines as they
    came (the signature keeps its "-- " delimiter). Pieces that were apart in the body (the
    quoted lines of an inline reply) are kept apart by a blank line in ``quoted`` and
    ``signature``, so they do not read as one paragraph.
    """
    picked: list[str] = []
    previous = -2
    for index, (line, role) in enumerate(zip(lines, roles, strict=True)):
        if role not in wanted:
            continue
        if not is_text and picked and picked[-1].strip() and index != previous + 1:
            picked.append("")
        picked.append(line.rstrip() if is_text else line)
        previous = index
    start, stop = 0, len(picked)
    while start < stop and not picked[start].strip():
        start += 1
    while stop > start and not picked[stop - 1].strip():
        stop -= 1
    return "\n".join(picked[start:stop])


# --- step 1: code and quotes ---------------------------------------------------------------


def _code_mask(lines: Sequence[str]) -> list[bool]:
    """Mark fenced code blocks, fences included: their content is never mail structure."""
    mask = [False] * len(lines)
    inside = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            mask[i] = True
            inside = not inside
        else:
            mask[i] = inside
    return mask


def _quote_mask(lines: Sequence[str], code: Sequence[bool]) -> list[bool]:
    """Mark quoted lines: ``>`` lines, ``|`` lines where they are the quoting style, elision
    marks inside quotes, and lines a client re-wrapped out of a quote."""
    mask = _angle_quotes(lines, code)
    for is_quote in (_is_pipe_quote, _is_indented_quote):
        if _uses_quote_style(lines, code, mask, is_quote):
            for i, line in enumerate(lines):
                mask[i] = mask[i] or (not code[i] and is_quote(line))
    _add_elisions(lines, code, mask)
    return _add_rewrapped(lines, code, mask)


def _is_pipe_quote(line: str) -> bool:
    """A line quoted with "| " (Gnus, some webmails); "| a | b |" is a table row."""
    stripped = line.rstrip()
    return stripped.startswith("|") and not (len(stripped) > 1 and stripped.endswith("|"))


def _is_indented_quote(line: str) -> bool:
    """A line quoted with an indented ">" (Emacs Supercite: "    > ")."""
    return _INDENTED_QUOTE.match(line) is not None


def _uses_quote_style(
    lines: Sequence[str],
    code: Sequence[bool],
    mask: Sequence[bool],
    is_quote: Callable[[str], bool],
) -> bool:
    """Whether a quoting style other than ">" is this message's: an attribution introduces it.

    Pipes also start tables and shell pipelines, and indented ">" lines are prompts in
    indented code, so they count as quotes only when the author's client visibly quotes with
    them: a run of them right under an attribution (itself quoted or not).
    """
    for i, line in enumerate(lines):
        if code[i] or mask[i] or not is_quote(line) or (i > 0 and is_quote(lines[i - 1])):
            continue
        above = _previous_nonblank(lines, i)
        if above is not None and _introduces(lines, above, code, mask):
            return True
    return False


def _introduces(lines: Sequence[str], end: int, code: Sequence[bool], mask: Sequence[bool]) -> bool:
    """Whether the line at ``end`` ends an attribution, plain or ``>``-quoted.

    Supercite quotes its own attribution: ">>>>> Ann\n>>>>>     on Mon, 3 Jun 2024 writes:".
    """
    if not mask[end]:
        return _attribution_ending_at(lines, end, code, mask) is not None
    start = end - 1 if end > 0 and mask[end - 1] and lines[end - 1].strip(">| \t") else end
    if sum(len(lines[i]) for i in range(start, end + 1)) > 2 * _MAX_ATTRIBUTION_CHARS:
        return False
    joined = _join_window([lines[i].lstrip(">| \t") for i in range(start, end + 1)])
    return len(joined) <= _MAX_ATTRIBUTION_CHARS and _is_attribution(
        joined, joined.endswith((":", "："))
    )


def _add_elisions(lines: Sequence[str], code: Sequence[bool], mask: list[bool]) -> None:
    """Mark "[...]" and "<snip>" lines next to a quote: they stand for removed quoted lines."""
    for i, line in enumerate(lines):
        if mask[i] or code[i] or not _is_elision(line):
            continue
        below = _next_nonblank(lines, i + 1)
        above = _previous_nonblank(lines, i)
        if (below is not None and mask[below]) or (above is not None and mask[above]):
            mask[i] = True


def _is_elision(line: str) -> bool:
    """Whether a line only says that quoted lines were removed ("[...]", "<snip>", "...")."""
    stripped = line.strip()
    return len(stripped) <= _MAX_ELISION_CHARS and _ELISION.fullmatch(stripped) is not None


def _previous_nonblank(lines: Sequence[str], index: int) -> int | None:
    """Index of the last non-blank line before ``index``."""
    for i in range(index - 1, -1, -1):
        if lines[i].strip():
            return i
    return None


def _angle_quotes(lines: Sequence[str], code: Sequence[bool]) -> list[bool]:
    """Mark ``>`` quoted lines, leaving out shell and Python prompts."""
    n = len(lines)
    mask = [False] * n
    i = 0
    while i < n:
        if code[i] or not lines[i].startswith(">"):
            i += 1
            continue
        if _closes_wrapped_address(lines, i):
            i += 1
            continue
        j = i
        while j < n and not code[j] and lines[j].startswith(">"):
            j += 1
        if not _is_prompt_run(lines, i, j):
            for k in range(i, j):
                mask[k] = True
        i = j
    return mask


def _closes_wrapped_address(lines: Sequence[str], index: int) -> bool:
    """Whether a line starting with ">" closes an address wrapped on the line above.

    Gmail wraps "… skrev Test user <test@example.com\n>:" so the attribution's last line
    starts with ">"; it is not a quote.
    """
    if index == 0:
        return False
    above = lines[index - 1]
    opened = above.rfind("<")
    return not above.startswith(">") and opened > above.rfind(">") and "@" in above[opened:]


def _is_prompt_run(lines: Sequence[str], start: int, stop: int) -> bool:
    """Whether a run of ``>`` lines is a shell continuation or a Python session, not a quote.

    ``$ cat <<EOF`` is followed by ``> `` prompts with no blank line in between; a run made
    only of ``>>>`` lines is a Python session, since a third-level quote comes with its first
    and second levels (at least their attribution lines).
    """
    if start > 0 and (_SHELL_PROMPT.match(lines[start - 1]) or lines[start - 1].endswith("\\")):
        return True
    return all(_PYTHON_PROMPT.match(lines[k]) for k in range(start, stop))


def _add_rewrapped(lines: Sequence[str], code: Sequence[bool], mask: list[bool]) -> list[bool]:
    """Add unquoted lines a client re-wrapped out of a quote.

    A long quoted line broken by a later client leaves its tail unquoted between two quoted
    lines. Only lines that follow a long quoted line count, and only when they continue it
    (lower-case start, or the quoted line did not end a sentence): a short answer squeezed
    between two questions stays an answer.
    """
    result = list(mask)
    for i in range(1, len(lines) - 1):
        line = lines[i]
        if mask[i] or code[i] or not line.strip() or not (mask[i - 1] and mask[i + 1]):
            continue
        previous = lines[i - 1].rstrip()
        if len(previous) < _REWRAP_MIN_CHARS:
            continue
        if line.lstrip()[:1].islower() or not previous.endswith((".", "!", "?", ":")):
            result[i] = True
    return result


# --- step 2: the cut -----------------------------------------------------------------------


def _find_cut(
    lines: Sequence[str], code: Sequence[bool], quote: Sequence[bool]
) -> tuple[int, frozenset[int]]:
    """Find where the unmarked quoted remainder starts, and the attribution lines on the way.

    Returns the index of the first line of the remainder (``len(lines)`` if none) and the
    lines of attributions that introduce ``>`` blocks (they join those blocks). An
    attribution followed by unquoted lines starts the remainder, unless a quote comes
    before any other mark of a quoted message (attribution, header block, separator,
    mobile signature): then the lines in between were typed by the author.
    """
    attribution: set[int] = set()
    pending: tuple[int, int] | None = None
    n = len(lines)
    for i in range(n):
        if pending is not None and quote[i]:
            # Words were typed between the attribution and its quote (Thunderbird lets
            # people do that): the attribution belongs to this quote, the words stay.
            attribution.update(range(pending[0], pending[1] + 1))
            pending = None
        if code[i] or quote[i] or i in attribution or not lines[i].strip():
            continue
        if _is_separator(lines[i]) or _header_block_at(lines, i, code, quote) or _lone_from_at(
            lines, i
        ):
            return _walk_back(lines, i if pending is None else pending[0]), frozenset(attribution)
        start = _attribution_ending_at(lines, i, code, quote)
        if start is not None:
            if pending is not None:
                break
            following = _next_nonblank(lines, i + 1)
            if following is not None and quote[following]:
                attribution.update(range(start, i + 1))
            else:
                pending = (start, i)
            continue
        if _is_mobile_marker(lines[i]) and _next_nonblank(lines, i + 1) is not None:
            if pending is not None:
                break
            return i + 1, frozenset(attribution)
    if pending is not None:
        # The attribution introduced an unmarked quoted message, running to the end.
        return _walk_back(lines, pending[0]), frozenset(attribution)
    return n, frozenset(attribution)


def _is_separator(line: str) -> bool:
    """Whether a line is an "Original Message"/"Forwarded message" separator."""
    stripped = line.strip()
    if len(stripped) > 120 or not any(mark in stripped for mark in ("--", "==", "__", "**", ":")):
        return False
    return _SEPARATOR.fullmatch(stripped) is not None


def _header_kind(line: str) -> str | None:
    """The field a line starts with ("From:", "*Objet :*"…), as a kind, or None."""
    stripped = line.lstrip()
    head = stripped[:40]
    if ":" not in head and "：" not in head:
        return None
    match = _HEADER_KEY.match(stripped)
    return _HEADER_KINDS[match["key"].lower()] if match else None


def _next_nonblank(lines: Sequence[str], start: int, stop: int | None = None) -> int | None:
    """Index of the first non-blank line in ``[start, stop)`` (``stop`` defaults to the end)."""
    for i in range(start, len(lines) if stop is None else stop):
        if lines[i].strip():
            return i
    return None


def _walk_back(lines: Sequence[str], index: int) -> int:
    """Move a cut up over blank lines and rules: Outlook's ``____`` belongs to the quote."""
    while index > 0 and (not lines[index - 1].strip() or _RULE.match(lines[index - 1])):
        index -= 1
    return index


def _header_block_at(
    lines: Sequence[str], start: int, code: Sequence[bool], quote: Sequence[bool]
) -> bool:
    """Whether an Outlook-style header block (From/Sent/To/Subject…) starts at ``start``.

    It takes a From field and at least two other kinds of field, on consecutive lines; one
    wrapped value line may follow each field (Outlook wraps long "From:" values). A single
    "To:" or "Date:" line, or a "From:" inside a sentence, is not a block.
    """
    if _header_kind(lines[start]) is None:
        return False
    kinds: set[str] = set()
    wrapped = False
    stop = min(len(lines), start + _MAX_HEADER_BLOCK_LINES)
    for i in range(start, stop):
        kind = None if code[i] or quote[i] else _header_kind(lines[i])
        if kind is not None:
            kinds.add(kind)
            wrapped = False
        elif lines[i].strip() and not wrapped:
            wrapped = True
        else:
            break
    return _KIND_FROM in kinds and len(kinds) >= 3


def _lone_from_at(lines: Sequence[str], index: int) -> bool:
    """Whether a lone "From: Name <address>" paragraph starts a quoted message here.

    Some clients write only the From line. Requiring a bracketed address and a paragraph of
    its own keeps "mail from: our database" sentences out.
    """
    if _header_kind(lines[index]) != _KIND_FROM:
        return False
    if index > 0 and lines[index - 1].strip():
        return False
    if index + 1 < len(lines) and lines[index + 1].strip():
        return False
    return bool(_BRACKETED_EMAIL.search(lines[index]))


def _attribution_ending_at(
    lines: Sequence[str], end: int, code: Sequence[bool], quote: Sequence[bool]
) -> int | None:
    """Start index of an attribution ("On … wrote:") whose last line is ``end``, if any.

    Clients wrap long attributions over two or three lines, so windows of up to three lines
    are tried, the longest plausible first (a three-line "On Nov 21, 2014,\\nat 10:18,\\nJohn
    <j@x> wrote:" must not leave its first two lines in the text).
    """
    last = lines[end].rstrip()
    has_colon = last.endswith((":", "："))
    if not has_colon and not _ends_with_verb(last):
        return None
    for size in range(_MAX_ATTRIBUTION_LINES, 0, -1):
        start = end - size + 1
        if start < 0 or not _window_is_plain(lines, start, end, code, quote):
            continue
        if size > 1 and not _plausible_window_start(lines, start, end):
            continue
        if sum(len(lines[i]) for i in range(start, end + 1)) > 2 * _MAX_ATTRIBUTION_CHARS:
            continue
        joined = _join_window(lines[start : end + 1])
        if len(joined) <= _MAX_ATTRIBUTION_CHARS and _is_attribution(joined, has_colon):
            return start
    return None


def _window_is_plain(
    lines: Sequence[str], start: int, end: int, code: Sequence[bool], quote: Sequence[bool]
) -> bool:
    """Whether every line of the window is non-blank, unquoted and outside code."""
    return all(lines[i].strip() and not code[i] and not quote[i] for i in range(start, end + 1))


def _plausible_window_start(lines: Sequence[str], start: int, end: int) -> bool:
    """Whether a multi-line window can start at ``start``.

    A wrapped attribution starts with an opener word ("On", "Le", "Am"…), or starts a
    paragraph with a date ("tir. 18. apr. 2017 kl. 13:09 skrev …"), and its inner lines do not
    end sentences; this keeps a greeting or the tail of a paragraph out of it.
    """
    if any(lines[i].rstrip().endswith((".", "!", "?")) for i in range(start, end)):
        return False
    head = lines[start].strip().lstrip("-").lstrip()
    if _OPENER.match(head):
        return True
    if not _DATE.search(head):
        return False
    return start == 0 or not lines[start - 1].strip() or bool(_RULE.match(lines[start - 1]))


def _join_window(window: Sequence[str]) -> str:
    """Join wrapped attribution lines, closing the gaps wrapping left inside ``<…>``."""
    joined = " ".join(line.strip() for line in window)
    joined = _OPEN_BRACKET_SPACE.sub(r"\1", joined)
    return _CLOSE_BRACKET_SPACE.sub(r"\1", joined)


def _is_attribution(text: str, has_colon: bool) -> bool:
    """Whether joined text is an attribution line, in any of the supported languages.

    Words alone prove nothing ("Something wrote:", "On the other hand:"), so an attribution
    needs two kinds of evidence among: an opener word, a "wrote" verb (ideally last), a date
    or time, and the quoted person's address. Without the final colon ("On … John
    <j@x.com> wrote", Zoho's "---- On … wrote ----") it needs the verb last and an address.
    """
    core = text.strip().strip("-").strip()
    email = "@" in core and _EMAIL.search(core) is not None
    bracketed = email and _BRACKETED_EMAIL.search(core) is not None
    dated = _DATE.search(core) is not None
    verb_last = _ends_with_verb(core)
    opener = _OPENER.match(core) is not None
    if not has_colon:
        return verb_last and email and (opener or dated)
    verb = verb_last or _VERB_ANY.search(core) is not None
    return (
        (bracketed and (dated or verb))
        or (opener and verb and (dated or email))
        or (verb_last and (dated or email))
    )


def _ends_with_verb(text: str) -> bool:
    """Whether text ends with a "wrote" verb, before an optional colon, "(a)" or dashes.

    A suffix test rather than a regular expression, because it runs on every unquoted line
    that does not end with a colon ("On … John <j@x.com> wrote"); the verb must be a whole
    word ("beskrev" is not "skrev").
    """
    tail = text.rstrip(" \t-:：")
    tail = tail.removesuffix("(a)")
    tail = tail.lower()
    if tail[-1:] not in _VERB_LAST_CHARS:
        return False
    for verb in _CJK_VERB_WORDS:
        if tail.endswith(verb):
            return True
    for verb in _VERB_WORDS:
        if tail.endswith(verb):
            before = tail[-len(verb) - 1 : -len(verb)]
            return not before.isalnum()
    return False


def _is_mobile_marker(line: str) -> bool:
    """Whether a line is a "Sent from my iPhone"-style signature.

    The device or app is named in a few words without a comma ("Sent from my desk, is much
    easier…" is a sentence); an app named without "my" starts with a capital ("Sent from
    Mail for Windows", not "sent from the office"). A trailing link is ignored.
    """
    stripped = line.strip()
    if len(stripped) > _MAX_MOBILE_CHARS * 3 or stripped[:1].lower() not in _MOBILE_INITIALS:
        return False
    match = _MOBILE.match(stripped)
    if not match:
        return False
    rest = _without_trailing_link(match["rest"]).rstrip(".!")
    if not rest or len(rest) > _MAX_MOBILE_CHARS or "," in rest or ". " in rest:
        return False
    words = rest.split()
    if len(words) > _MAX_MOBILE_WORDS:
        return False
    prefix = match["prefix"].lower()
    return not (prefix in ("sent from", "sent with", "sent via") and not words[0][0].isupper())


def _without_trailing_link(text: str) -> str:
    """Text without a final "<url>", "[url]" or "(url)" (Outlook appends one to its name)."""
    text = text.strip()
    for opening, closing in (("<", ">"), ("[", "]"), ("(", ")")):
        if text.endswith(closing) and (start := text.rfind(opening)) >= 0:
            return text[:start].strip()
    return text


# --- steps 3 to 5: blocks, answers, signature ----------------------------------------------


def _assign_region(
    lines: Sequence[str],
    code: Sequence[bool],
    quote: Sequence[bool],
    attribution: frozenset[int],
    end: int,
    roles: list[_Role],
) -> None:
    """Give a role to every line before the cut (lines after it keep the QUOTE role)."""
    blocks = _quote_blocks(lines, quote, attribution, end)
    gaps = _gaps(blocks, end)
    answers = [i for i, gap in enumerate(gaps) if _gap_has_answer(lines, code, gap)]
    last = answers[-1] if answers else -1
    interleaved = last >= 2
    for index, block in enumerate(blocks):
        _assign_block(lines, quote, attribution, block, interleaved and index < last, roles)
    for index, (start, stop) in enumerate(gaps):
        if index > last:
            _assign_trailing_gap(lines, code, start, stop, roles)
            continue
        dropped_before = index > 0 and not interleaved
        _assign_text_gap(lines, start, stop, dropped_before, roles)
    if last >= 0:
        start, stop = gaps[last]
        signature = _find_signature(lines, code, start, stop, text_before=bool(answers[:-1]))
        if signature is not None:
            for i in range(signature, stop):
                roles[i] = _Role.SIGNATURE


def _quote_blocks(
    lines: Sequence[str], quote: Sequence[bool], attribution: frozenset[int], end: int
) -> list[tuple[int, int]]:
    """Runs of quoted and attribution lines before ``end``, merged across blank lines."""
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < end:
        if not (quote[i] or i in attribution):
            i += 1
            continue
        last = i
        j = i + 1
        while j < end and (quote[j] or j in attribution or not lines[j].strip()):
            if quote[j] or j in attribution:
                last = j
            j += 1
        blocks.append((i, last + 1))
        i = last + 1
    return blocks


def _gaps(blocks: Sequence[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """The unquoted stretches around the blocks: one before each block and one after all."""
    gaps: list[tuple[int, int]] = []
    position = 0
    for start, stop in blocks:
        gaps.append((position, start))
        position = stop
    gaps.append((position, end))
    return gaps


def _gap_has_answer(lines: Sequence[str], code: Sequence[bool], gap: tuple[int, int]) -> bool:
    """Whether a gap holds new words, rather than nothing or only a signature/footer."""
    start, stop = gap
    first = _next_nonblank(lines, start, stop)
    if first is None:
        return False
    return code[first] or not _is_strong_signature_start(lines[first])


def _assign_block(
    lines: Sequence[str],
    quote: Sequence[bool],
    attribution: frozenset[int],
    block: tuple[int, int],
    answered: bool,
    roles: list[_Role],
) -> None:
    """A block's lines are QUOTE; in an interleaved reply its context lines are also text."""
    start, stop = block
    for i in range(start, stop):
        roles[i] = _Role.QUOTE
    if answered:
        for i in _context_lines(lines, quote, attribution, block):
            roles[i] = _Role.CONTEXT


def _context_lines(
    lines: Sequence[str],
    quote: Sequence[bool],
    attribution: frozenset[int],
    block: tuple[int, int],
) -> range:
    """The quoted lines an answer refers to: the block's last paragraph, capped in length.

    People answer the lines right above their answer; earlier paragraphs of the block stay
    in ``quoted`` only.
    """
    start, stop = block
    last = stop - 1
    while last >= start and (last in attribution or not _quoted_content(lines[last], quote[last])):
        last -= 1
    first = last
    while (
        first - 1 >= start
        and last - first + 1 < MAX_CONTEXT_LINES
        and first - 1 not in attribution
        and _quoted_content(lines[first - 1], quote[first - 1])
    ):
        first -= 1
    return range(first, last + 1) if last >= start else range(0)


def _quoted_content(line: str, quoted: bool) -> bool:
    """Whether a line is a quoted line with words in it (not a bare ``>`` or ``|``)."""
    return quoted and bool(line.strip(">| \t"))


def _assign_text_gap(
    lines: Sequence[str], start: int, stop: int, dropped_before: bool, roles: list[_Role]
) -> None:
    """Lines of an answer gap are text; after a dropped block, its leading blanks go too."""
    skipping = dropped_before
    for i in range(start, stop):
        blank = not lines[i].strip()
        skipping = skipping and blank
        roles[i] = _Role.DROP if skipping else _Role.TEXT


def _assign_trailing_gap(
    lines: Sequence[str], code: Sequence[bool], start: int, stop: int, roles: list[_Role]
) -> None:
    """A gap after the last answer is blank (part of the quote) or a signature/footer."""
    has_signature = _next_nonblank(lines, start, stop) is not None
    for i in range(start, stop):
        roles[i] = _Role.SIGNATURE if has_signature else _Role.QUOTE


def _is_strong_signature_start(line: str) -> bool:
    """A line that on its own opens a signature or footer: "-- ", "__…", "Sent from my…"."""
    return line.rstrip() == "--" or bool(_UNDERSCORE_RULE.match(line)) or _is_mobile_marker(line)


def _find_signature(
    lines: Sequence[str], code: Sequence[bool], start: int, stop: int, text_before: bool
) -> int | None:
    """Index where the signature starts in the last answer gap, if it has one."""
    tails = _nonblank_after(lines, start, stop)
    seen_text = text_before
    for i in range(start, stop):
        line = lines[i]
        if not line.strip():
            continue
        if not code[i] and _starts_signature(lines, i, tails[i - start], seen_text, stop):
            return i
        seen_text = True
    return None


def _nonblank_after(lines: Sequence[str], start: int, stop: int) -> list[int]:
    """For each line of ``[start, stop)``, how many non-blank lines follow it in the range."""
    counts = [0] * (stop - start)
    running = 0
    for i in range(stop - 1, start - 1, -1):
        counts[i - start] = running
        if lines[i].strip():
            running += 1
    return counts


def _starts_signature(
    lines: Sequence[str], index: int, tail: int, seen_text: bool, stop: int
) -> bool:
    """Whether the signature starts at ``index`` (see the module docstring, step 5)."""
    line = lines[index]
    if line.startswith("-- ") and not line.strip("- \t"):
        return True
    if _is_mobile_marker(line):
        return True
    if line.rstrip() == "--" or _UNDERSCORE_RULE.match(line):
        return tail <= _MAX_SIGNATURE_TAIL
    if not seen_text:
        return False
    if _is_dash_name(line):
        return not lines[index - 1].strip() and tail <= _MAX_SIGNATURE_TAIL
    low, high = _VALEDICTION_BLOCK
    return low <= tail <= high and _is_valediction(line) and _is_contact_block(lines, index, stop)


def _is_dash_name(line: str) -> bool:
    """Whether a line is a "-Name" sign-off: a dash then one to three capitalised words.

    The dash touches the name: "- Claire Dubois" is a list item.
    """
    match = _DASH_NAME.match(line)
    return match is not None and all(word[0].isupper() for word in match[1].split())


def _is_valediction(line: str) -> bool:
    """Whether a line is a closing formula alone ("Best regards,"), or with a short name."""
    stripped = line.strip().lower().rstrip(",.!;:—- ")
    if stripped in _VALEDICTIONS:
        return True
    head, comma, rest = stripped.partition(",")
    return bool(comma) and head in _VALEDICTIONS and 0 < len(rest.split()) <= 3


def _is_contact_block(lines: Sequence[str], index: int, stop: int) -> bool:
    """Whether the few lines after a closing formula are short: a name, a title, a phone.

    The caller has checked that only two to six non-blank lines follow, so this is cheap.
    """
    return all(len(lines[i].strip()) <= _VALEDICTION_LINE_CHARS for i in range(index + 1, stop))
