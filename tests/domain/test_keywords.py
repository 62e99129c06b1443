"""SMS keyword classification: the whole message, ignoring case, accents, spaces and punctuation."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from herald.domain.keywords import HELP_WORDS, START_WORDS, STOP_WORDS, Keyword, classify, normalise


@pytest.mark.parametrize(("body", "expected"), [
    ("STOP", Keyword.STOP), ("stop", Keyword.STOP), ("  Stop.  ", Keyword.STOP), ("STOP!", Keyword.STOP),
    ("Stop All", Keyword.STOP), ("STOPALL", Keyword.STOP), ("unsubscribe", Keyword.STOP),
    ("Cancel", Keyword.STOP), ("END", Keyword.STOP), ("quit", Keyword.STOP), ("opt-out", Keyword.STOP),
    ("Opt Out", Keyword.STOP), ("REVOKE", Keyword.STOP), ("ARRÊT", Keyword.STOP), ("arret", Keyword.STOP),
    ("Parar", Keyword.STOP), ("ALTO", Keyword.STOP), ("Stopp", Keyword.STOP), ("\"stop\"", Keyword.STOP),
    ("s t o p", Keyword.STOP), ("\uff33\uff34\uff2f\uff30", Keyword.STOP),   # full-width letters fold too
    ("HELP", Keyword.HELP), ("help?", Keyword.HELP), ("Info", Keyword.HELP), ("AIDE", Keyword.HELP),
    ("ayuda", Keyword.HELP),
    ("START", Keyword.START), ("Unstop", Keyword.START), ("yes", Keyword.START), ("Subscribe", Keyword.START),
    ("OPT-IN", Keyword.START), ("optin", Keyword.START),
    ("please stop", None), ("stop texting me", None), ("Stop 2", None), ("STOP STOP", None),
    ("don't stop", None), ("I need help", None), ("", None), ("   ", None), ("!!!", None), ("stopped", None),
    ("Yes please", None), ("x" * 1000, None), ("stop" + " " * 500, None),
])
def test_classification(body: str, expected: Keyword | None) -> None:
    assert classify(body) == expected


def test_the_families_do_not_overlap() -> None:
    assert not (STOP_WORDS & HELP_WORDS or STOP_WORDS & START_WORDS or HELP_WORDS & START_WORDS)


_word = st.text(alphabet=st.characters(categories=("L", "Nd")), min_size=1, max_size=12)
_space = st.text(alphabet=" ,.;:!?-'\"", min_size=1, max_size=3)


@given(st.lists(_word, max_size=5), st.lists(_word, max_size=5), _space, st.sampled_from(["stop", "STOP", "Stop"]))
def test_a_sentence_containing_stop_is_not_stop(before: list[str], after: list[str], space: str, stop: str) -> None:
    """"stop" among other words is an ordinary message (unless the words run together into a keyword,
    like "stop all" = STOPALL)."""
    assume(any(normalise(w) for w in [*before, *after]))
    body = space.join([*before, stop, *after])
    assume(normalise(body) not in STOP_WORDS)
    assert classify(body) is not Keyword.STOP


@given(st.sampled_from(sorted(STOP_WORDS)), st.text(alphabet=" \t.,!?-\"'", max_size=4),
       st.text(alphabet=" \t.,!?-\"'", max_size=4))
def test_any_stop_word_in_any_case_and_punctuation_is_stop(word: str, left: str, right: str) -> None:
    assert classify(left + word.upper() + right) == Keyword.STOP
    assert classify(left + word.title() + right) == Keyword.STOP
