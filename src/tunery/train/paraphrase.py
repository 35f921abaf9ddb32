"""Paraphrases: the starting model's own rewordings of a small set's questions, trained as question rewrites.

The rule-based rewrites (tunery.data.augment) change a question's surface: its keywords, a synonym, a frame.
Someone asking again changes its structure as well ("How early does the earliest boat leave Halvern Bay?" for
"What time does the first ferry leave Halvern Bay?"), and a small model that never saw that kind of change
misses the fact. So the run's model is asked, few-shot, to reword each question; a sample is kept only when
it keeps every name and number of the question, adds none, is one line ending in a question mark, and is
new. The paraphrases take the place of some of the rule-based rewrites (SLOTS), so the run trains as many
examples as without them.

Made once per run before training, like the replay pairs: sampled with a seed that follows the data, cached
beside the converted models (tunery.train.runcache), carried in the checkpoint metadata and handed to the
ranks a run starts, so a resumed or split run trains exactly the same set. Opt-in for now
(TrainConfig.paraphrase; see AUTO_PARAPHRASES for what it measured and what it costs).
"""

from __future__ import annotations

import hashlib
import re

from tunery.data.formats import Example

SYSTEM = ("You rewrite questions with different words. Keep every name and number. "
          "Reply with the new question only.")
SHOTS = (("When does the museum close on Sundays?", "What time do the museum's doors shut on a Sunday?"),
         ("How much does a bike rental cost?", "What is the price of renting a bicycle?"),
         ("Who looks after the garden?", "Which person takes care of the garden?"))
"""Generic examples of the rewording wanted (no domain of any benchmark)."""
SLOTS = (2, 4, 3, 0, 1)
"""Which rule-based rewrites (tunery.data.augment.REWRITES order) paraphrases replace first: the request
frame, the question with words dropped, the synonym keywords, then the rest."""
TRIES = 3
"""Rounds of sampling for the questions still short of paraphrases."""
MAX_NEW_TOKENS = 40
CACHE_VERSION = 1
_PROTECTED = re.compile(r"\d[\d:.,]*\d|\d|(?<!^)(?<![.?!] )\b[A-Z][\w'-]*")


def protected(question: str) -> set[str]:
    """What a paraphrase must keep and may not add to: numbers, and capitalised words that do not open a
    sentence (names)."""
    return {m.group(0) for m in _PROTECTED.finditer(question.strip())} - {"I"}


def acceptable(question: str, candidate: str, seen: set[str]) -> bool:
    c = candidate.strip()
    if not c.endswith("?") or "\n" in c or c in seen or len(c) > 2 * len(question) + 20:
        return False
    keep = protected(question)
    return keep <= protected(c) <= keep


def make(model, tokenizer, questions: list[str], n: int, seed: int) -> list[list[str]]:
    """Up to `n` accepted paraphrases of each question (fewer when the samples fail the checks)."""
    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out: list[list[str]] = [[] for _ in questions]
    seen = [{q.strip()} for q in questions]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        model.eval()
        for _ in range(TRIES):
            todo = [i for i in range(len(questions)) for _ in range(n - len(out[i]))]
            for s in range(0, len(todo), 16):
                chunk = todo[s:s + 16]
                enc = tokenizer([_prompt(tokenizer, questions[i]) for i in chunk], return_tensors="pt",
                                padding=True, add_special_tokens=False)
                with torch.no_grad():
                    gen = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.8,
                                         top_p=0.95, pad_token_id=pad)
                for i, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
                    text = tokenizer.decode(row, skip_special_tokens=True).strip()
                    if len(out[i]) < n and acceptable(questions[i], text, seen[i]):
                        out[i].append(text)
                        seen[i].add(text)
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
    return out


def _prompt(tokenizer, question: str) -> str:
    msgs = [{"role": "system", "content": SYSTEM}]
    for asked, reworded in SHOTS:
        msgs += [{"role": "user", "content": asked}, {"role": "assistant", "content": reworded}]
    msgs.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def data_seed(questions: list[str]) -> int:
    """The sampling seed: a function of the questions, not of the run's seed, so every run on the same file
    trains the same paraphrases and the ones made once are read back (make_for_run)."""
    return int.from_bytes(hashlib.sha256("\n".join(questions).encode()).digest()[:4], "big")


def make_for_run(model_name: str, questions: list[str], n: int) -> list[list[str]]:
    """make() with the run's base model, loaded for the purpose and released after, cached (`paraphrase/`)."""
    from tunery.train import runcache

    seed = data_seed(questions)
    return runcache.made_with_model(
        "paraphrase", model_name, [CACHE_VERSION, SYSTEM, SHOTS, questions, n, seed, MAX_NEW_TOKENS, TRIES],
        lambda v: isinstance(v, list) and len(v) == len(questions) and all(
            isinstance(ps, list) and all(isinstance(p, str) for p in ps) for ps in v),
        lambda model, tokenizer: make(model, tokenizer, questions, n, seed))


def place(rewritten: list[Example], n_variants: int, paraphrases: list[list[str]], user_turn) -> list[Example]:
    """The rewrites (n_variants per augmentable example, in order, as tunery.data.augment.augment adds them)
    with each example's paraphrases in the SLOTS; `user_turn(messages)` finds the question to replace."""
    out = list(rewritten)
    slots = [s for s in SLOTS if s < n_variants]
    for j, ps in enumerate(paraphrases):
        for slot, text in zip(slots, ps):
            ex = out[j * n_variants + slot]
            msgs = [dict(m) for m in ex.messages]
            msgs[user_turn(msgs)]["content"] = text
            out[j * n_variants + slot] = Example(line=ex.line, kind="chat", messages=msgs)
    return out
