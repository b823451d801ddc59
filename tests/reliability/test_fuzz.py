"""Hostile input through the real processor (bounded for CI; bench/soak/fuzz.py runs 10,000+).

The property is the production one: no exception escapes the processor's `run_once`, every
message ends done, held, rejected, discarded or failed — each with a reason — and its exact
bytes are kept. "failed" rows are counted as crashes of a step: none is expected now that
the ones found are fixed (tests/reliability/test_fuzz_regressions.py); a reason not yet
located would be named in `KNOWN_FAILURES` until it is fixed.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.app import App
from tests.reliability.fuzzing import Harness, corpus_mutations, corpus_seeds, mime_messages

# Failure reasons tolerated while their cause is not located (listed in docs/RELIABILITY.md):
# none now. Charsets Python cannot use (a NUL in the name, "idna", RFC 2231 parameters) go
# through bridge.charsets; reasons are cleaned of lone surrogates before they are stored.
KNOWN_FAILURES: tuple[str, ...] = ()
EXAMPLES = 12


def check(harness: Harness, raws: list[bytes], seed: int) -> None:
    outcomes = harness.run(raws, random.Random(seed))
    assert not outcomes.problems, outcomes.problems
    unexpected = [(i, r) for i, r in outcomes.failures if not any(k in r for k in KNOWN_FAILURES)]
    assert not unexpected, unexpected


@pytest.mark.parametrize("source", ["mime", "corpus"])
def test_hostile_mail_never_crashes_the_processor(app: App, source: str) -> None:
    if source == "corpus" and not corpus_seeds():
        pytest.skip("../shared/corpora/ is absent (a user's clone): no corpus to mutate")
    harness = Harness(app)
    strategy = mime_messages() if source == "mime" else corpus_mutations()

    # Derandomized: CI runs the same cases every time (the soak bench explores at random).
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(raws=st.lists(strategy, min_size=1, max_size=6), seed=st.integers(0, 2**16))
    def one_batch(raws: list[bytes], seed: int) -> None:
        check(harness, raws, seed)

    one_batch()
