"""Answer-quality metrics, each a pure function of (answer, reference) returning a number in [0, 1].

Text is compared after SQuAD-style normalisation: Unicode NFKC, lower case, punctuation removed
(thousands separators inside numbers too, so "1,000" equals "1000"), English articles dropped,
whitespace collapsed. Tokens are runs of letters/digits, so languages written without spaces
(Thai, Chinese, Japanese) give one token per run: token F1 is coarse there; chrF and semantic
similarity are the metrics to read for them.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUM_SEP = re.compile(r"(?<=\d)[,_'’](?=\d{3}\b)")


def normalize(text: str) -> str:
    """Lower-cased, punctuation-free, article-free text with single spaces."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _NUM_SEP.sub("", text)
    text = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    # normalize() already turned punctuation and symbols into spaces; splitting on whitespace keeps
    # combining marks (Thai vowels, Devanagari signs) inside their word, which \w+ would cut at.
    return normalize(text).split()


def exact_match(answer: str, expected: str) -> float:
    """1.0 when the normalised answer equals the normalised reference, else 0.0."""
    return float(normalize(answer) == normalize(expected))


def token_f1(answer: str, expected: str) -> float:
    """Harmonic mean of token precision and recall (SQuAD F1, bag of tokens with counts)."""
    a, e = tokens(answer), tokens(expected)
    if not a and not e:
        return 1.0
    if not a or not e:
        return 0.0
    common = sum((Counter(a) & Counter(e)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(e)
    return 2 * p * r / (p + r)


def fact_present(answer: str, alternatives: list[str]) -> bool:
    """True when any accepted spelling of a fact appears in the answer as whole words."""
    hay = f" {normalize(answer)} "
    for alt in alternatives:
        needle = normalize(str(alt))
        if needle and f" {needle} " in hay:
            return True
    return False


def key_fact_recall(answer: str, key_facts: list[list[str]]) -> float | None:
    """Fraction of key facts the answer states (None when the case lists no facts)."""
    if not key_facts:
        return None
    return sum(fact_present(answer, alts) for alts in key_facts) / len(key_facts)


def chrf(answer: str, expected: str) -> float:
    """sacrebleu's sentence chrF (character n-grams 1-6, beta 2), scaled to [0, 1]."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(answer or "", [expected or ""]).score / 100.0


def answer_length(answer: str) -> dict:
    """Words and characters of the raw answer."""
    return {"answer_words": len((answer or "").split()), "answer_chars": len(answer or "")}


# Auto key facts (for cases built from a job's files, which carry no key_facts): the parts of an
# answer most likely to be what the training taught — names (runs of capitalised words that are not
# just a sentence's first word), quoted strings and numbers (multi-digit ones first).
_QUOTED = re.compile(r"[\"“«]([^\"”»]{2,60})[\"”»]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:]\d+)*")
_CAPS = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:of\s+|de\s+|la\s+)?[A-Z][\w'’-]*)*")
_LEADING = {"the", "a", "an", "this", "that", "these", "those", "it", "its", "every", "each", "our", "your",
            "my", "on", "in", "at", "from", "to", "for", "and", "but", "if", "when", "while", "yes", "no"}


def _names(text: str) -> list[str]:
    out = []
    for m in _CAPS.finditer(text):
        words = m.group(0).split()
        before = text[:m.start()].rstrip()
        if not before or before[-1] in ".!?:;\n\"“(":
            # A sentence's first word is capitalised anyway: keep it only inside a longer name.
            if len(words) == 1:
                continue
            if words[0].lower() in _LEADING:
                words = words[1:]
        name = re.sub(r"['’]s$", "", " ".join(words))
        if name and name.lower() not in _LEADING:
            out.append(name)
    return out


def derive_key_facts(text: str, limit: int = 5, *, exclude: str = "") -> list[list[str]]:
    """Salient strings of a reference answer: names, quoted text, then numbers (longest first).
    Strings that already occur in `exclude` (the question) are skipped: repeating them proves nothing."""
    text = text or ""
    asked = f" {normalize(exclude)} "
    numbers = _NUMBER.findall(text)
    ranked = _names(text) + [m.group(1).strip() for m in _QUOTED.finditer(text)] \
        + [n for n in numbers if len(n) > 1] + [n for n in numbers if len(n) == 1]
    found: list[str] = []
    for f in ranked:
        if normalize(f) and f" {normalize(f)} " not in asked and all(normalize(f) != normalize(g) for g in found):
            found.append(f)
    return [[f] for f in found[:limit]]
