"""Question augmentation: the user turn of a chat example rewritten a few ways, the answer kept as it is.

A small model that sees each fact under one wording memorises that wording: it answers the training
question and fails the same question asked with other words. Seeing the fact under several wordings of the
question makes the answer depend on the question's content, not its exact string. The rewrites here are
generic and model-free — they know nothing about any domain or any evaluation question:

- content words only (a keyword query: function words dropped), in order or shuffled;
- other words for the same things: common English words swapped for WordNet synonyms of their most frequent
  sense, or for what they are a kind of ("shut" for "close", "boat" for "ferry"; tunery.data.synonyms),
  names and words in other scripts kept;
- the question with some words dropped;
- casing and punctuation noise (all lower case, no question mark, a letter swapped);
- the question inside a generic request frame ("Quick question: …", "… Thanks!");
- the keywords inside a generic question frame ("Tell me about …").

Only the last user message before a trained assistant message is rewritten; system prompts and answers stay
verbatim, so the model learns exactly the answers in the file. Examples with tools, prompt/completion data
and non-chat data are never changed. Every rewrite is a pure function of (text, seed, example index,
variant), so a resumed run rebuilds exactly the same training set.
"""

from __future__ import annotations

import random
import re

from tunery.data.formats import Example
from tunery.data import synonyms

# Function words of English questions. A generic list (articles, pronouns, auxiliaries, prepositions,
# question words), not a lexicon of any dataset: dropping them leaves the content words of any question.
STOPWORDS = frozenset("""
a an the this that these those there here it its it's i me my mine we us our you your yours he him his she
her they them their what which who whom whose when where why how is are was were be been being am do does
did doing done have has had having can could will would shall should may might must of in on at to for from
by with about into onto over under than then so and or but if as up out off any some much many very just
also too please tell know like get got want wanted wondering there's what's who's how's where's when's
i'm i'd i've you're don't doesn't isn't aren't
""".split())

# Generic request frames around the whole question, and question frames around its keywords.
FRAMES = ("Quick question: {q}", "{q} Thanks!", "Hi! {q}", "Can you help? {q}", "I'd like to know: {q}",
          "Please answer this: {q}", "Hello, {q}", "{q} Please be brief.")
KEYWORD_FRAMES = ("Tell me about {k}.", "{k}?", "What about {k}?", "Info on {k}, please.", "{k}")

# A word is a run of anything but spaces and sentence punctuation. (Not \w: Thai, Devanagari and other scripts
# write vowels and tones as combining marks, which \w does not match, so \w-words cut their words apart.)
_WORD = re.compile(r"[^\s!?.,;:\"“”«»()\[\]{}¡¿。、！？，；：]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _content(words: list[str]) -> list[str]:
    kept = [w for w in words if w.lower().replace("’", "'") not in STOPWORDS]
    return kept or words


def _lower_no_punct(text: str, rng: random.Random) -> str:
    return " ".join(_words(text)).lower()


def _keywords(text: str, rng: random.Random) -> str:
    return " ".join(_content(_words(text)))


def _shuffled_keywords(text: str, rng: random.Random) -> str:
    k = _content(_words(text))
    rng.shuffle(k)
    return " ".join(k)


def _keyword_frame(text: str, rng: random.Random) -> str:
    k = _content(_words(text))
    if len(k) > 2 and rng.random() < 0.5:  # a subset of the content words
        k = [w for w in k if rng.random() > 0.3] or k
    return rng.choice(KEYWORD_FRAMES).format(k=" ".join(k))


def _drop_words(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 4:
        return _lower_no_punct(text, rng)
    n_drop = max(1, round(len(words) * 0.3))
    drop = set(rng.sample(range(len(words)), n_drop))
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def _frame(text: str, rng: random.Random) -> str:
    q = text.strip()
    return rng.choice(FRAMES).format(q=q)


def _typo(text: str, rng: random.Random) -> str:
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not long:
        return _frame(text, rng)
    i = rng.choice(long)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words).rstrip("?") + ("" if rng.random() < 0.5 else "?")


def _synonym_words(text: str, rng: random.Random, share: float = 0.7) -> tuple[str, bool]:
    """The question with some of its lower-case content words replaced by other words for them (WordNet's)."""
    out, changed, previous = [], False, None
    for token in text.split():
        m = _WORD.search(token)
        w = m.group(0) if m else ""
        if w and w.islower() and w.lower() not in STOPWORDS and rng.random() < share:
            other = synonyms.pick(w, rng, previous)
            if other:
                token = token[:m.start()] + other + token[m.end():]
                changed = True
        out.append(token)
        previous = w
    return " ".join(out), changed


def _synonyms(text: str, rng: random.Random) -> str:
    new, changed = _synonym_words(text, rng)
    return new if changed else _frame(text, rng)


def _synonym_keywords(text: str, rng: random.Random) -> str:
    new, changed = _synonym_words(text, rng)
    return " ".join(_content(_words(new))) if changed else _keyword_frame(text, rng)


# The order is the order variants are added in: a run asking for k variants uses the first k rewrites
# (each with its own randomness), cycling if k is larger than the list.
REWRITES = (_keywords, _synonyms, _frame, _synonym_keywords, _drop_words, _lower_no_punct, _keyword_frame,
            _shuffled_keywords, _typo)


def rewrite(text: str, variant: int, seed: int, index: int) -> str:
    """Variant number `variant` (0-based) of one user message; a pure function of its arguments."""
    rng = random.Random(f"{seed}:{index}:{variant}:{text}")
    out = REWRITES[variant % len(REWRITES)](text, rng)
    out = out.strip()
    return out if out and out != text.strip() else _frame(text, rng)


def rewrites(text: str, n_variants: int, seed: int, index: int) -> list[str]:
    """The first `n_variants` rewrites of one question, each differing from the question and (nearly always) from
    the others; a pure function of its arguments (also used by tunery.data.discriminator)."""
    seen, out = {text.strip()}, []
    for v in range(n_variants):
        new = rewrite(text, v, seed, index)
        if new in seen:  # a short question can make two rewrites equal; ask a different frame
            new = _frame(text, random.Random(f"{seed}:{index}:{v}:dup"))
        seen.add(new)
        out.append(new)
    return out


def question_turn(messages: list[dict]) -> int | None:
    """Index of the user message answered by the last trained assistant message, if it is plain text."""
    last_assistant = None
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("weight", 1) != 0:
            last_assistant = i
    if last_assistant is None:
        return None
    for i in range(last_assistant - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "user":
            return i if isinstance(m.get("content"), str) and m["content"].strip() else None
        if m.get("role") not in ("system", "developer"):
            return None
    return None


def augmentable(example: Example) -> bool:
    return example.kind == "chat" and not example.tools and example.messages is not None \
        and question_turn(example.messages) is not None


def augment(examples: list[Example], n_variants: int, seed: int) -> list[Example]:
    """The examples followed by `n_variants` rewrites of each augmentable one (same line numbers)."""
    if n_variants <= 0:
        return list(examples)
    out = list(examples)
    for index, ex in enumerate(examples):
        if not augmentable(ex):
            continue
        u = question_turn(ex.messages)
        for new in rewrites(ex.messages[u]["content"], n_variants, seed, index):
            msgs = [dict(m) for m in ex.messages]
            msgs[u]["content"] = new
            out.append(Example(line=ex.line, kind="chat", messages=msgs))
    return out


def describe(examples: list[Example], rewritten: list[Example], n_variants: int, shown: int = 3) -> str:
    """A short sample of what augmentation does, for the job's events: the first question and its first
    rewrites as trained (`rewritten`: what augment() added, n_variants per augmentable example, in order)."""
    for ex in examples:
        if augmentable(ex):
            text = ex.messages[question_turn(ex.messages)]["content"]
            firsts = [r.messages[question_turn(r.messages)]["content"] for r in rewritten[:min(shown, n_variants)]]
            return f"{clip(text)!r} also as " + ", ".join(repr(clip(r)) for r in firsts) + \
                (", …" if n_variants > shown else "")
    return "no chat example to rewrite"


def clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"
