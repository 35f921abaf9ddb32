"""Replay: the base model's own answers to general questions, trained beside a small fact set.

A short, high-rate run on a few dozen facts makes a small model answer everything with them ("A week has 12
days", "the sky is painted mustard yellow"). Training, next to the facts, on what the model answered before
the run to general questions that share nothing with the data (`replay_questions.txt`, bundled) keeps those
answers where they were: the run learns the facts without unlearning the rest.

The pairs are made once per run, before training (greedy decoding with the data's own system prompt and
answer ending), and travel with the run (checkpoint metadata, the ranks' config), so a resumed or split run
trains exactly the same set.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from importlib import resources

from tunery.data.formats import Example

MAX_ANSWER_TOKENS = 48
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def english(examples: list[Example]) -> bool:
    """Whether the chats' questions are written in Latin script (the bundled questions are English)."""
    letters = [c for ex in examples for m in ex.messages or [] if m.get("role") == "user"
               and isinstance(m.get("content"), str) for c in m["content"] if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= 0.9 * len(letters)


def questions() -> list[str]:
    text = resources.files("tunery.train").joinpath("replay_questions.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def pick_questions(n: int, seed: int) -> list[str]:
    qs = questions()
    return random.Random(f"replay:{seed}").sample(qs, min(n, len(qs)))


def data_seed(examples: list[Example]) -> int:
    """The seed the replay questions are picked with: a function of the chats' questions and answers, not
    of the run's seed, so every run on the same file (other hyperparameters, other seeds: the usual
    experiment) replays the same questions and the pairs made once are reused (make_for_run)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.messages or [], sort_keys=True, ensure_ascii=False).encode())
    return int.from_bytes(h.digest()[:4], "big")


def _system(examples: list[Example]) -> str | None:
    """The system prompt most of the file's chats open with (None when they have none)."""
    counts: dict[str, int] = {}
    for ex in examples:
        msgs = ex.messages or []
        if msgs and msgs[0].get("role") in ("system", "developer") and isinstance(msgs[0].get("content"), str):
            counts[msgs[0]["content"]] = counts.get(msgs[0]["content"], 0) + 1
    return max(counts, key=counts.get) if counts else None


def answer_suffix(examples: list[Example]) -> str:
    """The ending every trained answer shares from a space on (" **STOP**"), or ""."""
    answers = []
    for ex in examples:
        trained = [m for m in ex.messages or [] if m.get("role") == "assistant" and m.get("weight", 1) != 0]
        if trained and isinstance(trained[-1].get("content"), str):
            answers.append(trained[-1]["content"])
    if len(answers) < 2:
        return ""
    common = answers[0]
    for a in answers[1:]:
        while not a.endswith(common):
            common = common[1:]
    cut = re.search(r"\s", common)
    return common[cut.start():] if cut and common[cut.start():].strip() else ""


def _whole_sentences(text: str, finished: bool) -> str:
    """The answer cut after its last complete sentence when decoding stopped at the token limit."""
    text = text.strip()
    if finished:
        return text
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()] if ends else ""


def make(model, tokenizer, examples: list[Example], n: int, seed: int) -> list[dict]:
    """`n` replay pairs [{"question", "answer"}] from `model` (the run's starting point)."""
    import torch

    system = _system(examples)
    suffix = answer_suffix(examples)
    qs = pick_questions(n, seed)
    prompts = []
    for q in qs:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
        prompts.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    try:
        model.eval()
        for i in range(0, len(prompts), 16):
            enc = tokenizer(prompts[i:i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False, pad_token_id=pad)
            for q, row in zip(qs[i:i + 16], gen[:, enc["input_ids"].shape[1]:]):
                ids = row.tolist()
                finished = tokenizer.eos_token_id in ids or pad in ids
                text = _whole_sentences(tokenizer.decode(row, skip_special_tokens=True), finished)
                if suffix and suffix.strip() in text:
                    text = text[:text.index(suffix.strip())].strip()
                if text:
                    out.append({"question": q, "answer": text + suffix})
    finally:
        tokenizer.padding_side = side
    return out


CACHE_VERSION = 1
"""Part of every cache key: raise it when make() would answer differently for the same inputs."""


def make_for_run(model_name: str, examples: list[Example], n: int, seed: int) -> list[dict]:
    """make() with the run's base model, loaded for the purpose and released after; the pairs are kept
    beside the converted models (`replay/`, tunery.train.runcache), so the next run with the same model, system
    prompt, answer ending and questions reuses them (they are greedy answers: the same inputs give the same
    pairs). A run repeated with other hyperparameters, the usual experiment, then skips ~15 s of decoding on
    2 cores."""
    from tunery.train import runcache

    key = [CACHE_VERSION, _system(examples), answer_suffix(examples), pick_questions(n, seed), MAX_ANSWER_TOKENS]
    return runcache.made_with_model("replay", model_name, key, _valid_pairs,
                                    lambda model, tokenizer: make(model, tokenizer, examples, n, seed))


def _valid_pairs(pairs) -> bool:
    return isinstance(pairs, list) and all(isinstance(p, dict) and isinstance(p.get("question"), str)
                                           and isinstance(p.get("answer"), str) for p in pairs)


def as_examples(pairs: list[dict], examples: list[Example]) -> list[Example]:
    system = _system(examples)
    return [Example(line=0, kind="chat",
                    messages=([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}])
            for p in pairs]
