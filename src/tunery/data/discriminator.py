"""Discriminator (classifier) data in the seed style of OpenAI's legacy recipe: prompt/completion examples
whose prompt is the question followed by a separator and whose completion is " yes" (on topic) or " no".

On-topic questions are the user turns of a chat file (what the bot was fine-tuned on); off-topic ones come
from a bundled, varied list (offtopic_questions.txt) or a file of your own. The two labels are balanced,
split into training and held-out validation files (stratified, seeded), and no question appears in both.

A chat file often holds only a few questions (one per generated pair), each asked one way; a classifier
trained on those alone learns their exact wordings and declines the same questions asked otherwise. So each
question also appears in `rewrites` rewritten forms (tunery.data.augment: keywords only, synonyms, a request
frame, typos, …) — and the off-topic side gets exactly the same kinds of rewrite, so that "looks rewritten" tells
the classifier nothing about the label. A question and its rewrites always land on the same side of the split.

The label keeps its leading space (" yes"): the prompt ends at the separator, and a byte-level BPE
tokenizer writes " yes" as one token, so the classifier's whole answer is its first generated token and
`logprobs` on that token is the probability an application reads.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from importlib import resources
from os import PathLike
from pathlib import Path

from tunery.data.reading import iter_lines, parse_line
from tunery.errors import InvalidRequest

DEFAULT_SEPARATOR = "\n\n###\n\n"
POSITIVE = " yes"
NEGATIVE = " no"
DEFAULT_TEMPLATE = "{question}"
DEFAULT_REWRITES = 4
"""Rewritten forms of each question added (both labels); measured in bench/bench_discriminator.py."""


def bundled_negatives() -> list[str]:
    """The bundled off-topic questions (many subjects and forms)."""
    text = resources.files("tunery.data").joinpath("offtopic_questions.txt").read_text(encoding="utf-8")
    return _lines(text)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_questions(path: str | PathLike) -> list[str]:
    """Questions from a text file (one per line) or JSONL (chat lines' last user turn, or a "question" /
    "prompt" field)."""
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".json"):
        return _lines(p.read_text(encoding="utf-8"))
    out = []
    for _n, raw in iter_lines(p):
        obj, problem = parse_line(raw)
        if problem or not isinstance(obj, dict):
            continue
        q = last_user(obj.get("messages")) if "messages" in obj else obj.get("question") or obj.get("prompt")
        if isinstance(q, str) and q.strip():
            out.append(q.strip())
    return out


def chat_questions(path: str | PathLike) -> list[str]:
    """The last user turn of every chat line of a JSONL file (other lines are ignored)."""
    out = []
    for _n, raw in iter_lines(Path(path)):
        obj, problem = parse_line(raw)
        q = last_user(obj.get("messages")) if not problem and isinstance(obj, dict) else None
        if isinstance(q, str) and q.strip():
            out.append(q.strip())
    return out


def last_user(messages) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return None


def classifier_prompt(question: str, separator: str = DEFAULT_SEPARATOR, template: str = DEFAULT_TEMPLATE,
                      answer: str | None = None) -> str:
    """The prompt a discriminator sees: the template filled in, whitespace-trimmed, then the separator.
    The guard builds its prompts with this same function, so training and serving cannot drift apart."""
    filled = template.replace("{question}", " ".join(question.split()))
    if "{answer}" in template:
        filled = filled.replace("{answer}", " ".join((answer or "").split()))
    return filled.strip() + separator


@dataclass
class DiscriminatorResult:
    train_path: str
    valid_path: str
    n_positive_available: int
    n_negative_available: int
    n_train: int
    n_valid: int
    n_per_label: int
    """On-topic questions used (before rewrites); the off-topic side has as many rows."""
    n_dropped_overlap: int
    """Off-topic questions dropped because they also occur among the on-topic ones."""
    n_rewrites: int = 0
    """Rewritten forms added per question (both labels)."""
    n_negative_used: int = 0
    """Distinct off-topic questions used (up to (1 + n_rewrites) per on-topic question)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _key(q: str) -> str:
    return " ".join(q.lower().split())


def _forms(question: str, rewrites: int, seed: int) -> list[str]:
    """The question itself (form 0) followed by its rewrites (forms 1..rewrites); a function of the question's
    text and the seed only, so the same question gets the same rewrites wherever it lands."""
    from tunery.data.augment import rewrites as rewrite_question  # pure Python, no torch

    return [question] + rewrite_question(question, rewrites, seed, 0) if rewrites else [question]


def _negative_rows(pool: list[str], need: int, rewrites: int, seed: int, fresh) -> list[str]:
    """Up to `need` off-topic questions from `pool`, not seen before (`fresh`), whose forms (original or rewrite
    number v) come in the same proportions as the on-topic side's: distinct questions first, each under one
    form; when the pool is short, its questions come back under other forms."""
    n_forms = rewrites + 1
    out = []
    for r in range(n_forms):
        for j, q in enumerate(pool):
            if len(out) == need:
                return out
            form = _forms(q, rewrites, seed)[(j + r) % n_forms]
            if fresh(form):
                out.append(form)
    return out


def build_discriminator(chat_file: str | PathLike, out: str | PathLike, *, negatives: str | PathLike | None = None,
                        separator: str = DEFAULT_SEPARATOR, valid_fraction: float = 0.2, seed: int = 0,
                        max_per_label: int | None = None, positive: str = POSITIVE, negative: str = NEGATIVE,
                        template: str = DEFAULT_TEMPLATE, rewrites: int = DEFAULT_REWRITES) -> DiscriminatorResult:
    """Write <out stem>_train.jsonl and <out stem>_valid.jsonl (prompt/completion) beside `out`."""
    if not separator:
        raise InvalidRequest("the separator must not be empty (it tells the classifier the question ended)",
                             param="separator")
    if positive == negative or not positive.strip() or not negative.strip():
        raise InvalidRequest("the two labels must be different, non-blank strings", param="labels")
    if not 0 < valid_fraction < 1:
        raise InvalidRequest("--valid-fraction must be between 0 and 1", param="valid_fraction")
    if "{question}" not in template:
        raise InvalidRequest("the template must contain {question}", param="template")
    if not 0 <= rewrites <= 50:
        raise InvalidRequest(f"--rewrites must be between 0 and 50, got {rewrites}", param="rewrites")
    pos = list(dict.fromkeys(q.strip() for q in chat_questions(chat_file)))
    if not pos:
        raise InvalidRequest(f"{chat_file} has no user questions (expected chat JSONL)", param="file")
    neg_all = read_questions(negatives) if negatives is not None else bundled_negatives()
    pos_keys = {_key(q) for q in pos}
    neg = [q for q in dict.fromkeys(q.strip() for q in neg_all) if _key(q) not in pos_keys]
    dropped = len(set(map(_key, neg_all))) - len(neg)
    if not neg:
        raise InvalidRequest("no off-topic questions left (every negative is also an on-topic question)",
                             param="negatives")
    rng = random.Random(seed)
    n = min(len(pos), len(neg), max_per_label or 10**9)
    if n < 2:
        raise InvalidRequest(f"need at least 2 questions per label for a held-out split, have {n}", param="file")
    n_forms = rewrites + 1
    pos_s = rng.sample(pos, n)
    # Off-topic questions are usually plentiful: use a distinct one for every on-topic row where there are enough.
    neg_s = rng.sample(neg, min(len(neg), n * n_forms))
    n_valid = max(1, round(n * valid_fraction))
    n_valid_neg = min(len(neg_s) - 1, max(1, round(len(neg_s) * n_valid / n)))
    pos_forms = [_forms(q, rewrites, seed) for q in pos_s]
    seen: set[str] = set()

    def fresh(q: str) -> bool:
        # Near-identical questions can share a rewrite: each prompt once, and never on both sides of the split.
        k = _key(classifier_prompt(q, separator, template))
        if k in seen:
            return False
        seen.add(k)
        return True

    halves = [(pos_forms[n_valid:], neg_s[n_valid_neg:]), (pos_forms[:n_valid], neg_s[:n_valid_neg])]
    pos_rows = [[q for g in groups for q in g if fresh(q)] for groups, _ in halves]
    sides = []
    for ps, (_, pool) in zip(pos_rows, halves):
        ns = _negative_rows(pool, len(ps), rewrites, seed, fresh)
        if len(ns) < len(ps):  # too few off-topic questions left: keep the labels balanced
            ps = rng.sample(ps, len(ns))
        rows = [(q, positive) for q in ps] + [(q, negative) for q in ns]
        rng.shuffle(rows)
        sides.append(rows)
    train, valid = sides
    if not train or not valid:
        raise InvalidRequest("too few distinct questions for a training and a held-out split", param="file")
    out = Path(out)
    stem = out.name[:-len(out.suffix)] if out.suffix else out.name
    train_path = out.with_name(f"{stem}_train.jsonl")
    valid_path = out.with_name(f"{stem}_valid.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, rows in ((train_path, train), (valid_path, valid)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for q, label in rows:
                f.write(json.dumps({"prompt": classifier_prompt(q, separator, template), "completion": label},
                                   ensure_ascii=False) + "\n")
        tmp.replace(path)
    return DiscriminatorResult(str(train_path), str(valid_path), len(pos), len(neg), len(train), len(valid), n,
                               dropped, rewrites, len(neg_s))
