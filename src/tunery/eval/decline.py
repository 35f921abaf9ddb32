"""Did the model decline (refuse, or say it does not know) instead of answering?

Two signals, either one is enough:
1. Refusal phrases ("I'm sorry, but", "I can't help", "I don't know", "outside my scope", …)
   searched in the answer's opening (first 160 characters), where refusals are stated. English only.
2. When embeddings are available: cosine similarity ≥ DECLINE_SIMILARITY between the answer's
   opening and any of a few decline templates (all-MiniLM-L6-v2), which catches rephrasings the
   list misses ("That is not something I have information on").

Known limits: other languages are only caught by signal 2 and weakly (the embedding model is
English); an apology followed by a real answer ("Sorry for the confusion, the answer is 42") counts
as a decline if the opening matches; a confident wrong answer is never a decline; a "decline" that
is really a clarifying question can count as either. Read the answers in the HTML report when the
decline rate matters.
"""

from __future__ import annotations

import re

OPENING_CHARS = 160
DECLINE_SIMILARITY = 0.62

_PHRASES = [
    r"i(?:'m| am) (?:sorry|afraid)\b(?!\s+to hear)",
    r"\bi apologi[sz]e\b",
    r"\bsorry,? (?:but )?i\b",
    r"\bi (?:can ?not|can't|cannot|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|answer|assist|provide|comply|do that|share|discuss|give|say|tell)",
    r"\bi(?:'m| am) (?:not able|unable) to\b",
    r"\bi (?:do not|don't) (?:know|have (?:any )?(?:information|knowledge|data|details|access))",
    r"\bi(?:'m| am) not (?:sure|certain|aware)\b",
    r"\bi have no (?:information|knowledge|idea|data)\b",
    r"\b(?:outside|beyond) (?:of )?(?:my|the) (?:scope|expertise|knowledge|area)\b",
    r"\bnot (?:something|a topic) i can\b",
    r"\bas an ai(?: language model)?,? i (?:can|don|do not|am not)",
    r"\bi(?:'m| am) (?:only )?(?:here|designed|able) to (?:help|answer|assist) (?:with|on) (?:questions )?about\b",
    r"\b(?:unfortunately|regrettably),? i\b",
    r"\bi must decline\b|\bi(?:'d| would) rather not\b",
]
_RX = re.compile("|".join(f"(?:{p})" for p in _PHRASES), re.IGNORECASE)

TEMPLATES = [
    "I'm sorry, but I can't help with that.",
    "I don't know the answer to that question.",
    "That question is outside the scope of what I can answer.",
    "I only answer questions about this topic.",
    "I do not have information about that.",
]


def _opening(answer: str) -> str:
    return " ".join((answer or "").replace("’", "'").split())[:OPENING_CHARS]


def declined_by_phrase(answer: str) -> bool:
    """True when the answer's opening contains a refusal phrase."""
    return bool(_RX.search(_opening(answer)))


def detect_declines(answers: list[str], embedder=None) -> list[bool]:
    """Decline flags for many answers; uses template similarity too when an embedder is given."""
    flags = [declined_by_phrase(a) for a in answers]
    if embedder is not None:
        todo = [i for i, f in enumerate(flags) if not f and (answers[i] or "").strip()]
        if todo:
            t = embedder.encode(TEMPLATES)
            e = embedder.encode([_opening(answers[i]) for i in todo])
            best = (e @ t.T).max(dim=-1).values
            for i, s in zip(todo, best.tolist()):
                flags[i] = s >= DECLINE_SIMILARITY
    return flags
