"""The query language: parsing, planning and rendering, without a database."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import date, timedelta

import pytest

from archive.search.plan import (
    Author,
    Meta,
    Plan,
    Text,
    build,
    date_terms_before,
    date_terms_from,
    meta_date_terms,
    scope,
)
from archive.search.postgres import tsquery
from archive.search.query import (
    After,
    AnyOf,
    Before,
    From,
    HasAttachment,
    InCommunity,
    Phrase,
    Query,
    Words,
    parse,
)
from archive.search.sqlite import (
    SqliteBackend,
    match_expression,
    ranking_phrases,
    relevance_expression,
)
from bridge.searchtext import Analyzer, address_term, author_text, fold, words


def test_words_phrases_and_exclusions() -> None:
    q = parse('budget "weekly meeting" -draft -"old notes"')
    assert q.include == (Words("budget"), Phrase("weekly meeting"))
    assert q.exclude == (Words("draft"), Phrase("old notes"))
    assert not q.in_subject


def test_or_binds_tighter_than_and() -> None:
    q = parse("x a OR b OR c y")
    assert q.include == (Words("x"), AnyOf((Words("a"), Words("b"), Words("c"))), Words("y"))
    assert parse("a or b").include == (Words("a"), Words("or"), Words("b"))


@pytest.mark.parametrize("text", ["OR", "OR a", "a OR", "a OR OR b", "a OR -b"])
def test_stray_or_is_ignored(text: str) -> None:
    q = parse(text)
    assert all(not isinstance(n, AnyOf) for n in q.include)
    assert Words("OR") not in q.include


def test_operators() -> None:
    q = parse('from:alice from:"Hélène Dubois" community:R-Devel before:2024-03-15 '
              "after:2020/1/2 has:attachment in:subject -from:bob")
    assert q.include == (From("alice"), From("Hélène Dubois"), InCommunity("r-devel"),
                         Before(date(2024, 3, 15)), After(date(2020, 1, 2)), HasAttachment())
    assert q.exclude == (From("bob"),)
    assert q.in_subject
    assert parse("FROM:alice").include == (From("alice"),)
    assert parse("-in:subject a").in_subject is False


@pytest.mark.parametrize("text", ["before:2024-13-01", "before:soon", "after:", "has:pdf",
                                  "in:body", "re:hello", "http://example.org", "from:",
                                  "community:"])
def test_invalid_operators_are_words(text: str) -> None:
    q = parse(text)
    assert q.include == (Words(text),)


def test_quotes_never_fail() -> None:
    assert parse('"unclosed phrase').include == (Phrase("unclosed phrase"),)
    assert parse('""').empty
    assert parse('a"b').include == (Words("a"), Phrase("b"))
    assert parse("-").include == (Words("-"),)
    assert parse("").empty and parse("   ").empty


def test_long_queries_are_cut() -> None:
    q = parse("word " * 1000)
    assert len(q.include) == 32


def test_fold_and_words() -> None:
    assert fold("Réunion ŒUVRE Straße Ærø naïve ﬁn") == "reunion oeuvre strasse aero naive fin"
    assert words("L'équipe, e-mail: alice@example.com x86_64 3.14") == [
        "l", "equipe", "e", "mail", "alice", "example", "com", "x86", "64", "3", "14"]


def test_index_text_stems_in_the_message_language() -> None:
    analyzer = Analyzer()
    assert analyzer.index_text("The meetings were postponed", "en") == "meet postpon"
    # Accents are folded before stemming, as PostgreSQL's `unaccent, french_stem` does.
    assert analyzer.index_text("Les réunions sont reportées", "fr") == "le reunion reporte"
    assert analyzer.index_text("Des réunions", "fr-CA") == "reunion"
    assert analyzer.index_text("R 4.3.1 and x86_64", "en") == "r 4 3 1 x86 64"
    assert analyzer.index_text(None, "en") == ""


def test_author_text() -> None:
    assert author_text("Hélène Dubois", "Helene@Exemple.fr") == (
        "helene dubois helene exemple fr " + address_term("helene@exemple.fr"))
    assert author_text("", "") == ""


class FakeLexicon:
    """Terms as SQLite computes them."""

    def __init__(self) -> None:
        self.analyzer = Analyzer()

    def text_terms(self, word: str) -> Mapping[str, str | None]:
        return {lang: term or None for lang, term in self.analyzer.query_terms(word).items()}

    def author_term(self, word: str) -> str | None:
        return word


def plan(text: str, communities: Mapping[str, int] | None = None) -> Plan:
    return build(parse(text), FakeLexicon(), communities or {})


def test_plan_words_have_both_languages() -> None:
    p = plan("meetings")
    assert p.include == (Text((((0, "meet"),), ((0, "meeting"),)), False),)
    assert {"meetings", "meet", "meeting"} <= p.highlight


def test_plan_drops_stop_words_and_keeps_phrase_gaps() -> None:
    assert plan("the").include == ()
    p = plan('"meeting of the team" in:subject')
    (text,) = p.include
    assert isinstance(text, Text) and text.subject_only
    assert text.phrases[0] == ((0, "meet"), (3, "team"))
    assert text.phrases[1] == ((0, "meeting"), (1, "of"), (2, "the"), (3, "team"))  # fr


def test_plan_operators() -> None:
    p = plan("from:Bob from:bob@example.org community:dev community:none has:attachment",
             {"dev": 7})
    assert p.include == (Author(("bob",)), Author((address_term("bob@example.org"),)),
                         Meta(("c7",)), Meta(("c0",)), Meta(("a",)))


def test_date_cover_is_exact() -> None:
    first, last = date(1998, 1, 1), date(2031, 12, 31)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    for bound in (date(2024, 3, 15), date(2000, 1, 1), date(2029, 12, 31), date(2024, 12, 1)):
        before, after = set(date_terms_before(bound)), set(date_terms_from(bound))
        assert len(before) < 70 and len(after) < 70
        for day in [*days[::7], bound, bound - timedelta(days=1)]:
            grains = set(meta_date_terms(day))
            assert bool(grains & before) == (day < bound), (bound, day)
            assert bool(grains & after) == (day >= bound), (bound, day)


def test_scope_uses_the_shorter_list() -> None:
    assert scope(None, [1, 2, 3]) == (None, None)
    assert scope([1, 2, 3], [1, 2, 3]) == (None, None)
    assert scope([1, 2], [1, 2, 3]) == (None, Meta(("c3",)))
    assert scope([1], [1, 2, 3]) == (Meta(("c1",)), None)
    assert scope([], [1, 2]) == (Meta(("c0",)), None)


NASTY = ['"', '""', '"a" OR "b', "a:b", "{subject}: x", "NEAR(a b)", "a*", "^a", "a AND",
         "-", "- -", "(((", ")", "'", "\\", "\x00", "é" * 50, "from:\"", "OR OR OR",
         "in:subject", "-in:subject", '-"the"', "a -b OR c", "col:a", "x' OR '1'='1",
         "a NOT b", "+a", "a|b", "!a", "a&b", "a<->b", "a:*", "'a':A"]


@pytest.mark.parametrize("text", NASTY)
def test_fts5_match_is_always_valid(text: str) -> None:
    """Any query renders to an FTS5 expression SQLite accepts."""
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE VIRTUAL TABLE message_search USING fts5(subject, body, author, "
                       "meta, content='')")
    p = SqliteBackend().plan(None, parse(text), {})  # type: ignore[arg-type]
    if p.include or p.exclude:
        connection.execute("SELECT rowid FROM message_search WHERE message_search MATCH ?",
                           (match_expression(p),)).fetchall()


@pytest.mark.parametrize("text", NASTY)
def test_tsquery_quotes_every_lexeme(text: str) -> None:
    p = plan(text)
    if p.include or p.exclude:
        rendered = tsquery(p)
        assert rendered.count("'") % 2 == 0


def test_renderings() -> None:
    p = plan('budget "weekly meeting" -draft from:bob has:attachment')
    assert match_expression(p) == (
        '(({subject body} : ("budget")) AND ({subject body} : ("week meet" OR "weekly meeting"'
        ')) AND ({author} : ("bob")) AND ({meta} : ("a"))) NOT (({subject body} : ("draft")))')
    assert tsquery(p) == (
        "(('budget')) & (('week' <-> 'meet') | ('weekly' <-> 'meeting')) & ('@bob') & ('#a')"
        " & !((('draft')))")
    assert match_expression(plan("-draft")) == (
        '(({meta} : ("z"))) NOT (({subject body} : ("draft")))')
    assert tsquery(plan("-draft")) == "('#z') & !((('draft')))"


def test_empty_query_plans_nothing() -> None:
    assert Query().empty
    assert plan("").include == () and plan("").exclude == ()


def test_relevance_expression_keeps_the_text_of_the_query() -> None:
    """bm25 is computed on the positive text alone (sqlite.py): filters and exclusions are out,
    authors stay in an AND (cheap, and they narrow), and every candidate still matches it."""
    p = plan('budget "weekly meeting" -draft from:bob has:attachment community:dev', {"dev": 7})
    assert relevance_expression(p) == (
        '({subject body} : ("budget")) AND ({subject body} : ("week meet" OR "weekly meeting"))'
        ' AND ({author} : ("bob"))')
    assert relevance_expression(plan("has:attachment -draft")) is None
    assert relevance_expression(plan("from:bob")) is None
    # An OR of text alone stays one constraint of the AND.
    assert relevance_expression(plan("mac OR macos crash")) == (
        '((({subject body} : ("mac")) OR ({subject body} : ("maco" OR "macos")))) AND '
        '({subject body} : ("crash"))')
    # A candidate may match through the filter alone: each text phrase is scored on its own.
    assert relevance_expression(plan("mac OR has:attachment crash")) == (
        '({subject body} : ("mac")) OR ({subject body} : ("crash"))')


def test_relevance_expression_leaves_out_common_phrases() -> None:
    p = plan("r cmd check")
    assert ranking_phrases(p) == [("{subject body}", "r"), ("{subject body}", "cmd"),
                                  ("{subject body}", "check")]
    assert relevance_expression(p, {("{subject body}", "r")}) == (
        '({subject body} : ("cmd")) AND ({subject body} : ("check"))')
    # Left out of an OR, a phrase could be what a candidate matched: each phrase on its own.
    assert relevance_expression(plan("r OR cmd check"), {("{subject body}", "r")}) == (
        '({subject body} : ("cmd")) OR ({subject body} : ("check"))')
