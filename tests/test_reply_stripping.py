"""Plain-text reply stripping: measured on the shared corpora, then the tricky cases one by one.

The corpora (``../shared/corpora/reply-stripping/*/expected.json``) hold what four public
reply parsers' own tests assert. Two kinds of fact are used:

* ``visible_text`` — compared with ``ReplyParts.text``. ``ReplyParts.text`` has no blank lines
  around it and no trailing spaces on its lines, so both sides are normalised that way; where
  the original compared after ``trim()``, both sides are also stripped. Where the original
  asserted only "fragment 0" of a reply whose later parts are visible too (an interleaved
  reply), our text must *begin* with that fragment, on a line boundary.
* ``partial`` — facts about the original parsers' fragments, mapped onto ReplyParts where the
  mapping means something (see ``_compile_fact``). A fragment flagged quoted (visible or not)
  is looked for in ``quoted``, which holds every quoted line; a hidden signature fragment in
  ``signature``; a visible unquoted one in ``text``; without flags, fragment 0 is the start of
  the text and a later fragment is in ``quoted`` or ``signature``. A ``^`` in their regular
  expressions is read as a line start, since a fragment starts at a line inside our parts.
  Not mappable, and reported as such: fragment counts above one when nothing says what each
  fragment holds, whitespace-only fragments, and facts that need the original parser set up
  with non-default regular expressions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.reply_text import ReplyParts, split_reply

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
SUITES = CORPORA / "reply-stripping"
MIN_ACCURACY = 0.95
FILLER = (
    "Fusce bibendum, quam hendrerit sagittis tempor.\n"
    "Nulla malesuada, orci non vulputate lobortis.\n"
)


def _require_corpus() -> None:
    """Skip, saying where the corpus was looked for, when this clone has no ../shared."""
    if not SUITES.is_dir():
        pytest.skip(f"reply-stripping corpus not found at {SUITES} (a clone without ../shared)")


@dataclass(frozen=True)
class Case:
    """One corpus case: a fixture and what the original tests assert about it."""

    suite: str
    fixture: Path
    assertion: str
    visible_text: str | None
    partial: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.fixture.name}"

    def body(self) -> str:
        return self.fixture.read_text(encoding="utf-8")


def _cases() -> list[Case]:
    """Every case of every suite, fixture paths resolved inside the suite folder."""
    cases: list[Case] = []
    for expected in sorted(SUITES.glob("*/expected.json")):
        data = json.loads(expected.read_text(encoding="utf-8"))
        for raw in data["cases"]:
            cases.append(
                Case(
                    suite=expected.parent.name,
                    fixture=expected.parent / raw["fixture"],
                    assertion=raw.get("assertion", ""),
                    visible_text=raw.get("visible_text"),
                    partial=tuple(raw.get("partial", ())),
                )
            )
    return cases


def _normalise(text: str, trim: bool) -> str:
    """Text without outer blank lines or trailing spaces (and stripped when ``trim``)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    joined = "\n".join(lines)
    return joined.strip() if trim else joined


def _visible_text_matches(case: Case, parts: ReplyParts) -> bool:
    """Compare as the original test did (see the module docstring)."""
    assert case.visible_text is not None
    trim = "trim" in case.assertion
    got = _normalise(parts.text, trim)
    expected = _normalise(case.visible_text, trim)
    if "fragment 0" in case.assertion and "only" in case.assertion:
        return got == expected or got.startswith(expected + "\n")
    return got == expected


# --- the measured accuracy -----------------------------------------------------------------


def test_corpus_visible_text_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    """Exact-match accuracy per suite and overall; fails below 95 % overall."""
    _require_corpus()
    cases = [case for case in _cases() if case.visible_text is not None]
    assert cases, f"no visible_text cases under {SUITES}"
    rows: dict[str, list[int]] = {}
    misses: list[str] = []
    for case in cases:
        row = rows.setdefault(case.suite, [0, 0])
        row[0] += 1
        if _visible_text_matches(case, split_reply(case.body())):
            row[1] += 1
        else:
            misses.append(case.name)
    total = sum(row[0] for row in rows.values())
    exact = sum(row[1] for row in rows.values())
    table = [f"{'suite':<30} {'cases':>5} {'exact':>5} {'%':>6}"]
    for suite, (count, good) in sorted(rows.items()):
        table.append(f"{suite:<30} {count:>5} {good:>5} {100 * good / count:>6.1f}")
    table.append(f"{'overall':<30} {total:>5} {exact:>5} {100 * exact / total:>6.1f}")
    table.append("misses: " + (", ".join(misses) or "none"))
    with capsys.disabled():
        print("\n" + "\n".join(table))
    assert exact / total >= MIN_ACCURACY, "\n".join(table)


# --- partial facts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One mapped fact: what it says and how ReplyParts must satisfy it."""

    fact: str
    holds: Callable[[str], bool]  # takes the fixture body (templates substitute into it)


@dataclass(frozen=True)
class Unmapped:
    """A fact with no meaningful counterpart in ReplyParts, and why."""

    fact: str
    reason: str


_FLAG_LIST = re.compile(
    r"(?:is)?(quoted|signature|hidden)\??(?:\(\))? per fragment is \[([^\]]*)\]", re.IGNORECASE
)
_FLAG_ONE = re.compile(
    r"fragments\[(\d+)\]\.is(quoted|signature|hidden)\(\)"
    r"(?: and fragments\[(\d+)\]\.is\w+\(\))? (?:is|are) (true|false)",
    re.IGNORECASE,
)
_FLAG_BOTH = re.compile(r"is(quoted|signature|hidden)\(\) is (true|false) for both", re.IGNORECASE)
_COUNT = re.compile(r"gives (exactly|at least) (\d+) fragments?")
_REGEX = re.compile(
    r"fragments\[(\d+)\]\S* matches (?:/(?P<js>.+?)/(?P<flags>[a-z]*)(?=[.\s]|$)"
    r"|re\.match\('(?P<py>.+?)'\))"
)
_CONTAINS = re.compile(r"fragments\[(\d+)\]\S* (does not contain|contains) \"(.+?)\"")
_REPLY_CONTAINS = re.compile(
    r"(?:message\.reply|parse_reply\(text\)) (does not contain|contains) \"(.+?)\""
)
_EQUALS = re.compile(r"fragments\[(\d+)\](?:\.to_s)? == (\".*?(?<!\\)\")(?:\.| \(|$)")
_CUSTOM_REGEX = ("signature regex", "quote-header regex")


@dataclass
class _Facts:
    """What the facts of one case say about fragments, gathered before mapping."""

    flags: dict[str, dict[int, bool]]
    count: int | None


def _gather(facts: tuple[str, ...]) -> _Facts:
    """Collect the per-fragment flags and the fragment count that a case's facts state."""
    flags: dict[str, dict[int, bool]] = {"quoted": {}, "signature": {}, "hidden": {}}
    count = None
    for fact in facts:
        if any(marker in fact for marker in _CUSTOM_REGEX):
            continue
        for kind, values in _FLAG_LIST.findall(fact):
            for index, value in enumerate(values.split(",")):
                flags[kind.lower()][index] = value.strip().lower() == "true"
        for first, kind, second, value in _FLAG_ONE.findall(fact):
            for index in filter(None, (first, second)):
                flags[kind.lower()][int(index)] = value.lower() == "true"
        for kind, value in _FLAG_BOTH.findall(fact):
            flags[kind.lower()].update({0: value.lower() == "true", 1: value.lower() == "true"})
        match = _COUNT.search(fact)
        if match and match[1] == "exactly":
            count = int(match[2])
    return _Facts(flags, count)


def _location(facts: _Facts, index: int) -> tuple[str, ...]:
    """Which parts of ReplyParts hold the content of fragment ``index``."""
    quoted = facts.flags["quoted"].get(index)
    signature = facts.flags["signature"].get(index)
    hidden = facts.flags["hidden"].get(index)
    if quoted:
        return ("quoted",)
    if signature:
        return ("signature", "quoted")
    if hidden is False or (hidden is None and index == 0):
        return ("text",)
    return ("quoted", "signature")


def _part(parts: ReplyParts, names: tuple[str, ...]) -> str:
    """The named parts joined, to search a fragment that may be in either."""
    return "\n".join(getattr(parts, name) for name in names)


def _split(body: str) -> ReplyParts:
    """The function under test (one name for the lambdas of the checks)."""
    return split_reply(body)


def _compile_fact(fact: str, facts: _Facts) -> Check | Unmapped:
    """Map one fact onto ReplyParts, or say why it cannot be."""
    if any(marker in fact for marker in _CUSTOM_REGEX):
        return Unmapped(fact, "needs the original parser with a non-default regex")
    if "finishes" in fact and "second" in fact:
        return Check(fact, lambda body: _timed(body) < 10)
    if replace := re.match(r"After str_replace\('(.+?)', '(.+?)'\) on the fixture", fact):
        old, new = replace[1], replace[2]
        pattern = _REGEX.search(fact)
        assert pattern is not None
        regex = re.compile(pattern["js"], re.MULTILINE)
        return Check(
            fact, lambda body: bool(regex.search(_split(body.replace(old, new)).signature))
        )
    if match := _REGEX.search(fact):
        where = _location(facts, int(match[1]))
        source = match["js"] if match["js"] is not None else match["py"]
        flags = re.MULTILINE | (re.IGNORECASE if "i" in (match["flags"] or "") else 0)
        regex = re.compile(source, flags)
        return Check(fact, lambda body: bool(regex.search(_part(_split(body), where))))
    if match := _CONTAINS.search(fact):
        where, negated, needle = _location(facts, int(match[1])), match[2] != "contains", match[3]
        return Check(fact, lambda body: (needle in _part(_split(body), where)) != negated)
    if match := _REPLY_CONTAINS.search(fact):
        negated, needle = match[1] != "contains", match[2]
        return Check(fact, lambda body: (needle in _split(body).text) != negated)
    if match := _EQUALS.search(fact):
        expected = json.loads(match[2])
        if not expected.strip():
            return Unmapped(fact, "a whitespace-only fragment has no counterpart")
        where = _location(facts, int(match[1]))
        return Check(
            fact,
            lambda body: (
                _words(expected) in [_words(getattr(_split(body), name)) for name in where]
            ),
        )
    if match := _COUNT.search(fact):
        return _count_check(fact, match[1], int(match[2]), facts)
    if "at least one fragment has isSignature() true" in fact:
        return Check(fact, lambda body: bool(_split(body).signature))
    if _FLAG_LIST.search(fact) or _FLAG_ONE.search(fact) or _FLAG_BOTH.search(fact):
        return _flag_check(fact, facts)
    return Unmapped(fact, "no counterpart in ReplyParts")


def _count_check(fact: str, mode: str, count: int, facts: _Facts) -> Check | Unmapped:
    """One fragment means nothing quoted and no signature; more, that something was split
    off — unless flags say what each fragment is, which is then checked instead."""
    if count == 1 and mode == "exactly":
        return Check(fact, lambda body: not _split(body).quoted and not _split(body).signature)
    if mode == "at least" and count == 1:
        return Check(fact, lambda body: bool(_split(body).text))
    if any(facts.flags.values()):
        return Unmapped(fact, "fragment count: what each fragment holds is checked instead")
    return Check(fact, lambda body: bool(_split(body).quoted or _split(body).signature))


def _flag_check(fact: str, facts: _Facts) -> Check | Unmapped:
    """Flags say which parts must hold something, or be empty when they cover every fragment.

    A hidden quoted fragment means ``quoted`` is not empty; a signature fragment, that
    ``signature`` is not empty; no quoted (or signature) fragment at all, that the part is
    empty; a first fragment that is neither quoted, a signature nor hidden, that there is
    text.
    """
    lowered = fact.lower()
    expectations: list[tuple[str, bool]] = []
    for kind in ("quoted", "signature"):
        if kind not in lowered:
            continue
        known = facts.flags[kind]
        if any(value and facts.flags["hidden"].get(i, True) for i, value in known.items()):
            expectations.append((kind, True))
        elif known and not any(known.values()) and _covers_all(fact, known, facts):
            expectations.append((kind, False))
    first = [facts.flags[kind].get(0) for kind in ("quoted", "signature", "hidden")]
    if False in first and True not in first:
        expectations.append(("text", True))
    if not expectations:
        return Unmapped(fact, "these flags alone do not constrain ReplyParts")
    return Check(
        fact,
        lambda body: all(
            bool(getattr(_split(body), part)) == present for part, present in expectations
        ),
    )


def _covers_all(fact: str, known: dict[int, bool], facts: _Facts) -> bool:
    """Whether flags are known for every fragment (a per-fragment list, or all of a count)."""
    if _FLAG_LIST.search(fact):
        return True
    return facts.count is not None and all(i in known for i in range(facts.count))


def _words(text: str) -> str:
    """Text with every run of whitespace made one space.

    Some originals re-join an attribution their client wrapped over several lines; ours
    keeps the lines as they came. The same words in the same order is the fact that matters.
    """
    return " ".join(text.split())


def _timed(body: str) -> float:
    """Seconds one split takes."""
    start = time.perf_counter()
    split_reply(body)
    return time.perf_counter() - start


def _template_checks(case: Case) -> Iterator[Check]:
    """Cases whose fixture holds a placeholder that the original test substituted."""
    placeholder = next(
        (m[1] for fact in case.partial if (m := re.search(r'placeholder line "(\[\w+\])"', fact))),
        None,
    )
    if placeholder is None:
        return
    values = [m[1] for fact in case.partial if (m := re.match(r'\$\w+ = "(.*)"$', fact))]
    visible = next((m[1] for f in case.partial if (m := re.search(r'== "(.+?)"', f))), None)
    suffix = next((m[1] for f in case.partial if (m := re.search(r'\+ "(.+?)"', f))), None)
    for value in values:
        if visible is not None:
            yield Check(
                f"{value} -> text {visible!r}", _substituted(placeholder, value, "text", visible)
            )
        elif suffix is not None:
            expected = value + json.loads(f'"{suffix}"')
            yield Check(
                f"{value} -> quoted {expected!r}",
                _substituted(placeholder, value, "quoted", expected),
            )


def _substituted(placeholder: str, value: str, part: str, expected: str) -> Callable[[str], bool]:
    """A check on the fixture with its placeholder replaced, as the original test did."""

    def holds(body: str) -> bool:
        return bool(getattr(split_reply(body.replace(placeholder, value)), part) == expected)

    return holds


def _partial_cases() -> list[Case]:
    """Cases with partial facts (none when the corpus is absent: the tests then skip)."""
    if not SUITES.is_dir():
        return []
    return [case for case in _cases() if case.partial]


def _checks(case: Case) -> tuple[list[Check], list[Unmapped]]:
    """The mapped checks and the unmappable facts of one case."""
    templated = list(_template_checks(case))
    if templated:
        return templated, []
    facts = _gather(case.partial)
    compiled = [_compile_fact(fact, facts) for fact in case.partial]
    checks = [item for item in compiled if isinstance(item, Check)]
    unmapped = [item for item in compiled if isinstance(item, Unmapped)]
    return checks, unmapped


def _partial_params() -> list[object]:
    """One parameter per case with partial facts, or one visible skip without the corpus."""
    if not SUITES.is_dir():
        reason = f"reply-stripping corpus not found at {SUITES} (a clone without ../shared)"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-corpus")]
    return [pytest.param(case, id=case.name) for case in _partial_cases()]


@pytest.mark.parametrize("case", _partial_params())
def test_corpus_partial_facts(case: Case) -> None:
    """Every mappable partial fact holds for our split."""
    _require_corpus()
    checks, _unmapped = _checks(case)
    body = case.body()
    failed = [check.fact for check in checks if not check.holds(body)]
    assert not failed, f"{case.name}: {failed}\n{split_reply(body)}"


def test_corpus_partial_facts_are_mostly_mapped(capsys: pytest.CaptureFixture[str]) -> None:
    """Report which partial facts could not be mapped, and keep that list short."""
    _require_corpus()
    mapped = unmapped = 0
    reasons: dict[str, int] = {}
    for case in _partial_cases():
        checks, skipped = _checks(case)
        mapped += len(checks)
        unmapped += len(skipped)
        for item in skipped:
            reasons[item.reason] = reasons.get(item.reason, 0) + 1
    with capsys.disabled():
        print(f"\npartial facts: {mapped} mapped and checked, {unmapped} not mappable")
        for reason, count in sorted(reasons.items()):
            print(f"  {count:>3}  {reason}")
    assert mapped > 3 * unmapped


# --- focused cases -------------------------------------------------------------------------


def test_reply_parts_is_frozen() -> None:
    parts = split_reply("Hello")
    with pytest.raises(AttributeError):
        parts.text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "body",
    [
        "I wrote a patch for this yesterday.\nAs Bob wrote on 12/03: it works.\n\nThanks.",
        "Here is what the reviewer wrote:\n\nThe patch is fine.",
        "Something wrote:\nthe same thing twice.",
        "Check https://example.com/blog/on-date-someone-wrote-about-parsing today.",
        "On the other hand, we should be careful.\nOn average, it works.",
        "On Monday, 3 May 2021 we released v2:\n\n- faster\n- smaller",
        "On your remote host you can run:\n\n    telnet 127.0.0.1 52698\n\nThen retry.",
        "Dates in my text:\n\n2024-01-15 14:30:25\n15.01.2024 14:30\n\nNot headers.",
        "Mail from: john@example.com and from: jane@example.com reaches us.",
        "Memo\n\nTo: All staff\nFrom: Management\n\nPlease read.",
    ],
)
def test_lookalikes_of_quote_headers_stay_in_the_text(body: str) -> None:
    parts = split_reply(body)
    assert parts == ReplyParts(text=body, quoted="", signature="")


@pytest.mark.parametrize(
    ("attribution", "quoted_line"),
    [
        ("On Mon, Jun 3, 2024 at 9:12 AM Alice Durand <alice@example.com> wrote:", "> Hi"),
        ("On 3 Jun 2024, at 09:12, Alice Durand <alice@example.com> wrote:", "> Hi"),
        ("Le lun. 3 juin 2024 à 09:12, Alice Durand <alice@example.com> a écrit :", "> Salut"),
        ("Le 03/06/2024 à 09:12, Alice Durand a écrit :", "> Salut"),
        ("Am Mo., 3. Juni 2024 um 09:12 Uhr schrieb Alice Durand <alice@example.com>:", "> Hallo"),
        ("Am 03.06.2024 um 09:12 schrieb Alice Durand:", "> Hallo"),
        ("El lun, 3 jun 2024 a las 9:12, Alice (<alice@example.com>) escribió:", "> Hola"),
        ("Il giorno lun 3 giu 2024 alle ore 09:12 Alice <alice@example.com> ha scritto:", "> Ciao"),
        ("Op ma 3 jun 2024 om 09:12 schreef Alice Durand <alice@example.com>:", "> Hoi"),
        ("Em seg., 3 de jun. de 2024 às 09:12, Alice <alice@example.com> escreveu:", "> Olá"),
        ("Den mån 3 juni 2024 kl 09:12 skrev Alice <alice@example.com>:", "> Hej"),
        ("man. 3. jun. 2024 kl. 09:12 skrev Alice <alice@example.com>:", "> Hei"),
        ("ma 3. kesäk. 2024 klo 9.12 Alice (alice@example.com) kirjoitti:", "> Moi"),
        ("пн, 3 июн. 2024 г. в 09:12, Alice <alice@example.com>:", "> Привет"),
        ("W dniu 3.06.2024 o 09:12, Alice <alice@example.com> pisze:", "> Cześć"),
        ("2024年6月3日(月) 9:12 Alice <alice@example.com>:", "> こんにちは"),
        ("在 2024年6月3日，上午9:12，Alice <alice@example.com> 写道：", "> 你好"),
        ("2024. 6. 3. 오전 9:12, Alice <alice@example.com>님이 작성:", "> 안녕"),
        ("2024.06.03. 9:12 keltezéssel, Alice Durand írta:", "> Szia"),
    ],
)
def test_attribution_lines_in_many_languages(attribution: str, quoted_line: str) -> None:
    parts = split_reply(f"New words.\n\n{attribution}\n{quoted_line}\n")
    assert parts.text == "New words."
    assert parts.quoted == f"{attribution}\n{quoted_line}"


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, Jun 3, 2024 at 9:12 AM Alice Durand <\nalice@example.com> wrote:",
        "On Mon, Jun 3, 2024 at 9:12 AM Alice Durand <alice@example.com>\nwrote:",
        "Le lun. 3 juin 2024 à 09:12, Alice Durand <alice@example.com>\na écrit :",
        "Am 03.06.2024 um 09:12 schrieb Alice Durand <\nalice@example.com>:",
        "man. 3. jun. 2024 kl. 09:12 skrev Alice <alice@example.com\n>:",
        "On Jun 3, 2024,\nat 09:12,\nAlice Durand <alice@example.com> wrote:",
    ],
)
def test_attribution_wrapped_over_two_or_three_lines(attribution: str) -> None:
    parts = split_reply(f"Fine by me.\n\n{attribution}\n\n> Shall we?\n")
    assert parts.text == "Fine by me."
    assert parts.quoted == f"{attribution}\n\n> Shall we?"


def test_greeting_above_a_wrapped_attribution_stays_in_the_text() -> None:
    body = "Hi,\nOn Mon, Jun 3, 2024 at 9:12 AM Alice <alice@example.com>\nwrote:\n> Hello\n"
    assert split_reply(body).text == "Hi,"


def test_attribution_followed_by_an_unquoted_message_cuts_there() -> None:
    body = "Yes.\n\nOn Mon, 3 Jun 2024 09:12 Alice <alice@example.com> wrote\n\nOld message.\n"
    parts = split_reply(body)
    assert (parts.text, parts.quoted) == ("Yes.", body.strip()[6:])


@pytest.mark.parametrize(
    "header",
    [
        (
            "From: Bob Martin <bob@example.com>\nSent: Monday, June 3, 2024 9:40 AM\n"
            "To: Carol Smith <carol@example.com>\nSubject: Figures"
        ),
        (
            "*From:* Bob Martin <bob@example.com>\n*Sent:* Monday, June 3, 2024 9:40 AM\n"
            "*To:* Carol Smith <carol@example.com>\n*Subject:* Figures"
        ),
        (
            "De : Bob Martin <bob@example.com>\nEnvoyé : lundi 3 juin 2024 09:40\n"
            "À : Carol Smith <carol@example.com>\nObjet : Chiffres"
        ),
        (
            "*De :* Bob Martin <bob@example.com>\n*Envoyé :* lundi 3 juin 2024 09:40\n"
            "*À :* Carol Smith <carol@example.com>\n*Objet :* Chiffres"
        ),
        (
            "Von: Bob Martin <bob@example.com>\nGesendet: Montag, 3. Juni 2024 09:40\n"
            "An: Carol Smith <carol@example.com>\nBetreff: Zahlen"
        ),
        "-----Original Message-----\nFrom: bob@example.com\nSent: Monday, June 3, 2024",
        "-----Message d'origine-----\nDe : bob@example.com\nEnvoyé : lundi 3 juin 2024",
        "-----Ursprüngliche Nachricht-----\nVon: bob@example.com\nGesendet: Montag",
        (
            "________________________________\nFrom: Bob Martin <bob@example.com>\n"
            "Sent: Monday, June 3, 2024 9:40 AM\nTo: Carol Smith\nSubject: Figures"
        ),
        (
            "From: Human Resources\n<a-really-long-automated-address@example.com>\n"
            "Sent: Monday, June 3, 2024 9:40 AM\nTo: Carol Smith\nSubject: Figures"
        ),
        "---------- Forwarded message ---------\nFrom: Bob <bob@example.com>",
        "Begin forwarded message:\n\nFrom: Bob <bob@example.com>",
    ],
)
def test_outlook_header_blocks_and_separators(header: str) -> None:
    parts = split_reply(f"Approved.\n\n{header}\n\nCould you send the figures?\n")
    assert parts.text == "Approved."
    assert parts.quoted == f"{header}\n\nCould you send the figures?"


@pytest.mark.parametrize(
    "marker",
    [
        "Sent from my iPhone",
        "Sent from my Verizon Wireless BlackBerry",
        "Sent from Mail for Windows",
        "Sent from Yahoo Mail for iPhone",
        "Get Outlook for iOS<https://aka.ms/o0ukef>",
        "Get Outlook for Android",
        "Envoyé de mon iPhone",
        "Envoyé à partir de Outlook pour Android<https://aka.ms/AAb9ysg>",
        "Télécharger Outlook pour iOS",
        "Von meinem iPhone gesendet",
        "Gesendet von Outlook für Android<https://aka.ms/AAb9ysg>",
        "Enviado desde mi iPhone",
        "Inviato da iPhone",
        "Verzonden vanaf mijn iPhone",
        "Skickat från min iPhone",
        "Sendt fra min iPhone",
        "Wysłane z iPhone'a",
        "Отправлено с iPhone",
    ],
)
def test_mobile_signatures(marker: str) -> None:
    parts = split_reply(f"On my way.\n\n{marker}\n")
    assert parts == ReplyParts(text="On my way.", quoted="", signature=marker)


def test_mobile_signature_followed_by_an_unmarked_quote() -> None:
    parts = split_reply("Ok.\n\nSent from my iPhone\n\nThe previous message, unquoted.\n")
    assert parts == ReplyParts("Ok.", "The previous message, unquoted.", "Sent from my iPhone")


@pytest.mark.parametrize(
    "body",
    [
        "Here it is.\n\nSent from my desk, which is easier than my phone.",
        "Here it is.\n\nsent from the office printer",
        "And here is a fix -- this is not a signature.",
        "Part one.\n\n-----\n\nPart two.\n\n=====\n\nPart three.",
        "Steps:\n-- first check\n-- second check",
        "Todo:\n\n-Fix it",
        "Here you go.\n\nRegards,\nJane",
        "I wanted to ask with regards to the payment.\n\nThanks!",
        "Notes\n--\n" + "\n".join(f"line {n}" for n in range(20)),
    ],
)
def test_signature_lookalikes_stay_in_the_text(body: str) -> None:
    assert split_reply(body) == ReplyParts(text=body, quoted="", signature="")


@pytest.mark.parametrize(
    ("body", "text", "signature"),
    [
        ("Done.\n\n-- \nBob\nSales", "Done.", "-- \nBob\nSales"),
        ("Done.\n--\nBob", "Done.", "--\nBob"),
        ("Done.\n\n-Bob Martin", "Done.", "-Bob Martin"),
        (
            "Done.\n\n__\nlist mailing list\nhttp://lists.example.org/",
            "Done.",
            "__\nlist mailing list\nhttp://lists.example.org/",
        ),
        (
            "Done.\n\nBest regards,\nJane Roe\nHead of Sales | ACME\n+33 1 23 45 67 89",
            "Done.",
            "Best regards,\nJane Roe\nHead of Sales | ACME\n+33 1 23 45 67 89",
        ),
        (
            "Fait.\n\nCordialement,\n\nJeanne Roux\nDirectrice commerciale",
            "Fait.",
            "Cordialement,\n\nJeanne Roux\nDirectrice commerciale",
        ),
        (
            "Erledigt.\n\nMit freundlichen Grüßen\nHans Weber\nVertrieb",
            "Erledigt.",
            "Mit freundlichen Grüßen\nHans Weber\nVertrieb",
        ),
    ],
)
def test_signature_blocks(body: str, text: str, signature: str) -> None:
    assert split_reply(body) == ReplyParts(text=text, quoted="", signature=signature)


def test_signature_under_the_quote_is_the_signature() -> None:
    body = "Yes.\n\nOn Mon, 3 Jun 2024 at 09:12, Al <al@example.com> wrote:\n> Ok?\n\n-- \nBob\n"
    parts = split_reply(body)
    assert parts == ReplyParts(
        "Yes.", "On Mon, 3 Jun 2024 at 09:12, Al <al@example.com> wrote:\n> Ok?", "-- \nBob"
    )


@pytest.mark.parametrize(
    "body",
    [
        "Try this:\n\n$ cat <<EOF > /tmp/x\n> hello\n> EOF\n\nDoes it work?",
        "Like so:\n\n>>> import os\n>>> os.getcwd()\n'/tmp'\n\nSee?",
        (
            "See:\n\n```\n-- \nnot a sig\n> not a quote\nOn Mon, 1 Jan 2020, A <a@b.co> wrote:\n"
            "Sent from my iPhone\n```\n\nDone."
        ),
        "In SQL:\n\n~~~\nSELECT 1\n--\nFROM dual\n~~~\n\nOk?",
    ],
)
def test_code_is_never_mail_structure(body: str) -> None:
    parts = split_reply(body)
    assert parts.quoted == parts.signature == ""
    assert parts.text == "\n".join(line.rstrip() for line in body.split("\n"))


def test_code_does_not_hide_the_real_quote() -> None:
    body = (
        "Run:\n\n$ cat <<EOF\n> hi\n> EOF\n\nOn Mon, 3 Jun 2024 at 9:12, Al <al@example.com> "
        "wrote:\n> it fails\n"
    )
    parts = split_reply(body)
    assert parts.text == "Run:\n\n$ cat <<EOF\n> hi\n> EOF"
    assert parts.quoted.endswith("> it fails")


INLINE = """On Mon, Jun 3, 2024 at 9:12 AM Alice <alice@example.com> wrote:
> Hi Bob,
>
> Can we meet on Tuesday
> at 10?

Yes, 10 works.

> Should I bring the slides?

Please do.

> Thanks,
> Alice

--\x20
Bob
"""


def test_inline_reply_keeps_the_quoted_lines_it_answers() -> None:
    parts = split_reply(INLINE)
    assert parts.text == (
        "> Can we meet on Tuesday\n> at 10?\n\nYes, 10 works.\n\n"
        "> Should I bring the slides?\n\nPlease do."
    )
    assert parts.quoted.startswith("On Mon, Jun 3, 2024 at 9:12 AM Alice")
    assert "> Hi Bob," in parts.quoted and parts.quoted.endswith("> Thanks,\n> Alice")
    assert parts.signature == "-- \nBob"


def test_inline_reply_without_attribution() -> None:
    body = "Answers below.\n\n> First?\n\nYes.\n\n> Second?\n\nNo.\n"
    parts = split_reply(body)
    assert parts.text == "Answers below.\n\n> First?\n\nYes.\n\n> Second?\n\nNo."
    assert parts.quoted == "> First?\n\n> Second?"


def test_bottom_post_drops_the_single_quote_from_the_text() -> None:
    body = "On Mon, 3 Jun 2024 at 9:12, Al <al@example.com> wrote:\n> Can we meet?\n\nSure.\n"
    parts = split_reply(body)
    assert (parts.text, parts.quoted) == ("Sure.", body.split("\n\n")[0])


def test_pipe_quoting_introduced_by_an_attribution() -> None:
    body = (
        "On 3 June 2024 at 09:12, Alice Durand wrote:\n| Can you check the build?\n\n"
        "Done, it passes.\n\n| And the logs?\n\nAttached.\n"
    )
    parts = split_reply(body)
    assert parts.text == (
        "| Can you check the build?\n\nDone, it passes.\n\n| And the logs?\n\nAttached."
    )
    assert parts.quoted.startswith("On 3 June 2024 at 09:12, Alice Durand wrote:\n| Can you")


def test_pipes_without_an_attribution_are_tables() -> None:
    body = "Results:\n\n| run | time |\n|-----|------|\n| a   | 3 s  |\n| just a pipe line\n\nOk"
    assert split_reply(body) == ReplyParts(body, "", "")


def test_supercite_quoting() -> None:
    body = (
        ">>>>> Alice Durand\n>>>>>     on Mon, 3 Jun 2024 09:12:00 +0200 writes:\n\n"
        "    > Can you check the build?\n    > It failed twice.\n\nYes, it passes now.\n"
    )
    parts = split_reply(body)
    assert parts.text == "Yes, it passes now."
    assert parts.quoted.endswith("    > It failed twice.")


def test_indented_prompts_without_an_attribution_are_code() -> None:
    body = "Try:\n\n    > x <- c(1, 2)\n    > mean(x)\n    [1] 1.5\n\nOk?"
    assert split_reply(body) == ReplyParts(body, "", "")


@pytest.mark.parametrize("mark", ["[...]", "[…]", "<snip>", "[snip]", "-- snip --", "..."])
def test_elision_marks_between_attribution_and_quote(mark: str) -> None:
    body = f"On Mon, 3 Jun 2024 at 9:12, Al <al@example.com> wrote:\n{mark}\n> the point\n\nAgreed."
    parts = split_reply(body)
    assert parts.text == "Agreed."
    assert mark in parts.quoted


def test_words_typed_between_the_attribution_and_its_quote_are_kept() -> None:
    body = "Am 03.06.2024 um 09:12 schrieb Alice:\n\nJa, machen wir.\n\nHans\n> Sollen wir?\n"
    parts = split_reply(body)
    assert parts.text == "Ja, machen wir.\n\nHans"
    assert parts.quoted == "Am 03.06.2024 um 09:12 schrieb Alice:\n\n> Sollen wir?"


def test_quote_lines_rewrapped_by_a_client_stay_in_the_quote() -> None:
    body = (
        "Top reply.\n\nOn Mon, 3 Jun 2024 at 9:12, Al <al@example.com> wrote:\n"
        "> Lorem ipsum dolor sit amet, consectetur adipiscing elit. Nullam pharetra d\n"
        "ignissim odio?\n>\n> End.\n"
    )
    parts = split_reply(body)
    assert parts.text == "Top reply."
    assert "ignissim odio?" in parts.quoted


def test_short_answer_between_two_questions_is_an_answer() -> None:
    body = (
        "> Could you check whether the deployment on Friday went fine for everyone?\nYes.\n"
        "> And the backup?\nDone too.\n"
    )
    assert split_reply(body).text.split("\n") == [
        "> Could you check whether the deployment on Friday went fine for everyone?",
        "Yes.",
        "> And the backup?",
        "Done too.",
    ]


@pytest.mark.parametrize("body", ["", "\n\n", "   \n\t\n"])
def test_empty_bodies(body: str) -> None:
    assert split_reply(body) == ReplyParts("", "", "")


def test_crlf_and_only_quote() -> None:
    parts = split_reply("> only a quote\r\n> nothing new\r\n")
    assert parts == ReplyParts("", "> only a quote\n> nothing new", "")


# --- speed ---------------------------------------------------------------------------------


TYPICAL = (
    "Hi Alice,\n\nThanks for the figures. Two questions before Thursday:\n\n"
    "- is the Lyon total before tax?\n- can we add the Q1 comparison?\n\n"
    "Best regards,\nBob Martin\nSales, Lyon\n+33 4 00 00 00 00\n\n"
    "On Mon, Jun 3, 2024 at 9:12 AM Alice Durand <alice@example.com> wrote:\n\n"
    + "".join(f"> Line {n} of the previous message, with some words in it.\n" for n in range(25))
)


@pytest.mark.parametrize(
    "unit",
    [
        "On 1/2/2020 at 10:00, a@b.co wrote:\n",
        "> " * 40 + "deep\n",
        ">" * 1000 + "\n",
        "x" * 5000 + " wrote\n",
        "On " * 2000 + "\n",
        "From: a <a@b.co>\nTo: b\nSent: 1 Jan 2020\n",
        "--\n",
        "Best regards,\n",
        "a@b" * 3000 + "\n",
        "<" * 3000 + "\n",
        "Sent from my " + "x " * 3000 + "\n",
        "On Mon " + "1, " * 2000 + "wrote:\n",
        "word\n\n",
        " " * 3000 + "x\n",
        "\t" * 3000 + "x\n",
        "From" + " " * 3000 + "x:\n",
        "x" + "\xa0" * 3000 + ":\n",
        "-" * 1500 + " " * 1500 + "snipx\n",
        "a" * 390 + "@ wrote:\n",
        " " * 3000 + "Sent from my x\n",
        "| " * 1000 + "\n",
        "    > " * 500 + "\n",
        "[...]\n\n",
    ],
)
def test_200_kb_bodies_split_quickly(unit: str) -> None:
    body = "Hello.\n\n" + unit * (200_000 // len(unit) + 1)
    assert _timed(body) < 10  # linear, not a speed target: see bench/


# --- properties ----------------------------------------------------------------------------


_LINES = st.sampled_from(
    [
        "Hello",
        "",
        "> quoted",
        ">> deeper",
        "-- ",
        "--",
        "Sent from my iPhone",
        "On Mon, 3 Jun 2024 at 9:12, Al <al@example.com> wrote:",
        "From: Al <al@example.com>",
        "Sent: Monday",
        "To: Bob",
        "Subject: x",
        "-----Original Message-----",
        "```",
        "Best regards,",
        "-Bob",
        "____",
        "$ ls",
        "> > nested",
        "Regards",
        "On Monday:",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.text(max_size=40)), max_size=40))
def test_no_line_is_lost(lines: list[str]) -> None:
    """Every non-blank line of the body lands in text, quoted or signature."""
    body = "\n".join(line.replace("\r", " ") for line in lines)
    parts = split_reply(body)
    kept = {
        line.rstrip()
        for part in (parts.text, parts.quoted, parts.signature)
        for line in part.split("\n")
    }
    for line in body.split("\n"):
        if line.strip():
            assert line.rstrip() in kept, (line, parts)
