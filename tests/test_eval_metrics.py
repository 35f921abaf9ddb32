"""Metric code on known inputs with hand-computed outputs."""

from __future__ import annotations

import pytest

from tunery.eval import metrics as M
from tunery.eval.decline import declined_by_phrase, detect_declines


def test_normalize_drops_case_punctuation_articles_and_number_separators():
    assert M.normalize("  The Eiffel-Tower, in PARIS!  ") == "eiffel tower in paris"
    assert M.normalize("It costs $1,000.") == "it costs 1000"


@pytest.mark.parametrize("answer, expected, em", [
    ("Paris.", "paris", 1.0),
    ("The answer is Paris", "Paris", 0.0),
    ("an apple", "Apple!", 1.0),
])
def test_exact_match(answer, expected, em):
    assert M.exact_match(answer, expected) == em


def test_token_f1_hand_computed():
    # answer tokens [paris, is, capital]; reference [capital, is, paris, france]:
    # 3 common, P = 3/3, R = 3/4, F1 = 2*1*0.75/1.75 = 6/7.
    assert M.token_f1("Paris is the capital", "The capital is Paris, France") == pytest.approx(6 / 7)
    # Counts matter: answer [a1 x3]→ "yes yes yes" vs "yes no": common 1, P=1/3, R=1/2, F1=0.4.
    assert M.token_f1("yes yes yes", "yes no") == pytest.approx(0.4)
    assert M.token_f1("completely different", "nothing shared") == 0.0
    assert M.token_f1("", "") == 1.0 and M.token_f1("", "x") == 0.0


def test_key_fact_recall_whole_words_alternatives_and_numbers():
    facts = [["Paris"], ["1889"], ["Gustave Eiffel", "Eiffel"]]
    # Paris and 1889 present, neither spelling of the third: 2/3.
    assert M.key_fact_recall("It opened in Paris in 1889.", facts) == pytest.approx(2 / 3)
    assert M.key_fact_recall("Designed by Eiffel, opened 1889 in Paris", facts) == 1.0
    # Whole words only: "Parisian" does not state "Paris"; "18890" does not state 1889.
    assert M.key_fact_recall("A Parisian landmark from 18890", facts) == 0.0
    assert M.key_fact_recall("It cost 1,000 francs", [["1000"]]) == 1.0
    assert M.key_fact_recall("anything", []) is None


def test_chrf_hand_computed():
    # "ab" vs "ac": 1-grams P=R=1/2; 2-grams P=R=0; longer orders absent in both.
    # chrF averages over the 2 effective orders: P=R=1/4, F_beta = 1/4 → 0.25.
    assert M.chrf("ab", "ac") == pytest.approx(0.25)
    assert M.chrf("same words", "same words") == pytest.approx(1.0)
    assert M.chrf("xyz", "abc") == 0.0


def test_languages_without_spaces_need_chrf():
    # The documented limit: Thai is written without spaces, so a whole phrase is one token and a partly right
    # answer gets token F1 0, while chrF still credits the shared characters.
    ref, ans = "เชียงใหม่สวยมาก", "เชียงใหม่ดีมาก"
    assert M.tokens(ref) == [ref] and M.token_f1(ans, ref) == 0.0
    assert 0.3 < M.chrf(ans, ref) < 1.0


def test_answer_length():
    assert M.answer_length("two  words") == {"answer_words": 2, "answer_chars": 10}


def test_derive_key_facts_picks_numbers_inner_names_and_quotes():
    facts = M.derive_key_facts('It was finished in 1889 and designed by Gustave Eiffel. It is "the iron lady".')
    flat = [f[0] for f in facts]
    assert "1889" in flat and "Gustave Eiffel" in flat and "the iron lady" in flat
    assert "It" not in flat  # sentence-initial capitals are not names
    # A name at the start of a sentence is kept (without its article); facts the question already holds are not.
    facts = M.derive_key_facts("The Night Bazaar on Chang Khlan Road opens at 6 pm.", exclude="Where is the Night Bazaar?")
    assert facts == [["Chang Khlan Road"], ["6"]]


@pytest.mark.parametrize("answer", [
    "I'm sorry, but I can't help with that.",
    "I don’t know the answer to that.",
    "Unfortunately, I do not have information about that topic.",
    "That is outside my scope as a cooking assistant.",
    "I am unable to answer questions about politics.",
])
def test_refusals_are_declines(answer):
    assert declined_by_phrase(answer)


@pytest.mark.parametrize("answer", [
    "The capital of France is Paris.",
    "I'm sorry to hear that! Drink water and rest.",
    "Water boils at 100 degrees Celsius at sea level.",
    "",
])
def test_answers_are_not_declines(answer):
    assert not declined_by_phrase(answer)


@pytest.fixture(scope="module")
def embedder():
    from tunery.eval.embed import get_embedder

    return get_embedder()


def test_embedder_matches_sentence_transformers(embedder):
    # The packaged model is a sentence-transformers model; our plain-transformers pipeline must give
    # the very same vectors as the reference implementation.
    st = pytest.importorskip("sentence_transformers")
    from tunery.eval.embed import model_dir

    texts = ["The capital of France is Paris.", "Tokyo is big."]
    ref = st.SentenceTransformer(str(model_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    assert (embedder.encode(texts) - ref).abs().max().item() < 1e-4


def test_semantic_similarity_orders_paraphrase_above_unrelated(embedder):
    para, unrel, same = embedder.similarity(
        ["The capital of France is Paris."] * 3,
        ["Paris is France's capital city.", "I enjoy eating bananas in the morning.",
         "The capital of France is Paris."])
    assert para > 0.8 and unrel < 0.3 and same == pytest.approx(1.0, abs=1e-5)


def test_template_similarity_catches_unlisted_refusal(embedder):
    flags = detect_declines(["That is not something I have information on.",
                             "The capital of France is Paris."], embedder)
    assert not declined_by_phrase("That is not something I have information on.")
    assert flags == [True, False]
