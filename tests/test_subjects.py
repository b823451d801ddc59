"""Subject normalisation (inbound.subjects): the key conversations are matched on by
subject, the subject shown to people, and the forward detection the extract step uses."""

from __future__ import annotations

import pytest

from inbound.subjects import is_forward, normalise_subject, strip_prefixes


@pytest.mark.parametrize(("subject", "key"), [
    # The example: French prefixes with the space before the colon, and a list tag.
    ("RE : TR : [rd] Réunion", "réunion"),
    ("Re: Réunion", "réunion"),
    ("Réunion", "réunion"),
    # Repeated and mixed prefixes, any case.
    ("Re: Re: RE: Fwd: Budget 2027", "budget 2027"),
    ("re: fwd: FW: fw: Budget 2027", "budget 2027"),
    ("RE:RE:RE:Budget 2027", "budget 2027"),
    ("rE : Fw : Budget 2027", "budget 2027"),
    # Other languages.
    ("TR: Budget 2027", "budget 2027"),              # French "transféré"
    ("tr : Budget 2027", "budget 2027"),
    ("AW: WG: Budget 2027", "budget 2027"),          # German
    ("SV: VS: Budget 2027", "budget 2027"),          # Nordic
    ("RV: Budget 2027", "budget 2027"),              # Spanish "reenviado"
    ("Réf : Budget 2027", "budget 2027"),            # French "référence"
    ("RÉF. : Réf: Budget 2027", "budget 2027"),
    ("Ref: Budget 2027", "budget 2027"),
    ("Antw: Budget 2027", "budget 2027"),            # Dutch
    ("Odp: Budget 2027", "budget 2027"),             # Polish
    ("Enc: Budget 2027", "budget 2027"),             # Portuguese
    # The French typographic no-break space before the colon, and the full-width colon.
    ("RE\u00a0: TR\u00a0: Budget 2027", "budget 2027"),
    ("Re：Budget 2027", "budget 2027"),
    # Reply counters.
    ("Re[2]: Budget 2027", "budget 2027"),
    ("Re(3): Budget 2027", "budget 2027"),
    ("RE [4] : Budget 2027", "budget 2027"),
    # List tags, before, between and after prefixes, any case, repeated.
    ("[rd] Budget 2027", "budget 2027"),
    ("[RD] [Sales] Budget 2027", "budget 2027"),
    ("Re: [rd] Re: [RD] Budget 2027", "budget 2027"),
    ("[rd] RE : [rd] TR: Budget 2027", "budget 2027"),
    # Case and space folding.
    ("  Re :  BUDGET\t 2027  ", "budget 2027"),
    ("Budget  2027", "budget 2027"),
])
def test_prefixes_and_tags_are_stripped_and_the_rest_folded(subject: str, key: str) -> None:
    assert normalise_subject(subject) == key


def test_replies_in_many_clients_share_the_key_of_their_root() -> None:
    root = normalise_subject("Réunion du comité")
    replies = ["RE : Réunion du comité", "Re: [comite] Réunion du comité",
               "TR: RE: Réunion du comité", "AW: Réunion du comité", "SV: réunion du COMITÉ"]
    assert {normalise_subject(reply) for reply in replies} == {root}


def test_composed_and_decomposed_accents_give_the_same_key() -> None:
    decomposed = "Re: Re\u0301union"   # "e" + combining acute accent, as macOS may write it
    assert normalise_subject(decomposed) == normalise_subject("Réunion") == "réunion"


@pytest.mark.parametrize("subject", [
    "Re-organisation of the teams",
    "Reorganisation",
    "Trade: figures for Q3",
    "Tradeoffs",
    "Regarding the plan",
    "Report: Q3",
    "Rev: draft 2",
    "Fwd-up meeting",
    "Awards: gala dinner",
    "Svelte: first look",
    "Réunion: ordre du jour",
    "Refactoring: the parser",
    "Enclosure: plans",
    "Re Re: not a prefix without a colon",
    "Budget [draft]",
    "2026: the year in review",
])
def test_words_that_merely_begin_like_a_prefix_are_kept(subject: str) -> None:
    assert strip_prefixes(subject) == subject
    assert normalise_subject(subject) == " ".join(subject.casefold().split())


def test_only_leading_prefixes_are_stripped() -> None:
    assert strip_prefixes("Re: Aw: Awards: gala") == "Awards: gala"
    assert strip_prefixes("Re: 2026: budget") == "2026: budget"
    assert strip_prefixes("Budget (Re: Q3) [rd]") == "Budget (Re: Q3) [rd]"


def test_strip_prefixes_keeps_the_case_shown_to_people() -> None:
    assert strip_prefixes("RE : TR : [rd] Réunion de l'ÉQUIPE") == "Réunion de l'ÉQUIPE"


@pytest.mark.parametrize("subject", ["", "   ", "Re:", "RE : TR :", "[rd]", "Re: [rd] Re:"])
def test_a_subject_of_prefixes_only_is_empty(subject: str) -> None:
    assert strip_prefixes(subject) == ""
    assert normalise_subject(subject) == ""


def test_the_key_is_bounded() -> None:
    assert len(normalise_subject("Re: " + "word " * 200)) == 300


@pytest.mark.parametrize(("subject", "forward"), [
    ("Fwd: Budget", True),
    ("FW: Budget", True),
    ("fw : Budget", True),
    ("TR: Budget", True),
    ("TR : Budget", True),
    ("WG: Budget", True),
    ("RV: Budget", True),
    ("Enc: Budget", True),
    ("Re: Budget", False),
    ("AW: Budget", False),
    ("Réf : Budget", False),
    ("Budget", False),
    ("Trade: Budget", False),
    ("Re: Fwd: Budget", False),   # a reply to a forward is a reply
])
def test_is_forward(subject: str, forward: bool) -> None:
    assert is_forward(subject) is forward
