"""Validation throughput: tunery's streaming validator vs simple baselines, on a generated 200,000-example
chat file, with the bundled model's own tokenizer, in the same run.

Baselines (each loads every line with json and tokenizes it one at a time, doing no checks at all):
  A "template": json.loads + tokenizer.apply_chat_template(messages, tokenize=True) — the exact count;
  B "per message": json.loads + tokenizer.encode(content) for every message (the cookbook's method;
    cheaper but only approximate, it ignores the template's tokens).
tunery does every check of `tunery data validate` (format, duplicates, context) and an exact count.
Goal: tunery ≥ 3x baseline A. Usage: python bench/bench_validate.py [N]
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TUNERY_MODEL_CACHE", str(REPO / ".cache" / "models"))
os.environ["HF_HUB_OFFLINE"] = "1"

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
GOAL = 3.0

WORDS = ("the a an of to in for on with how why what when where which model data train token epoch loss "
         "learning rate batch context window file line example answer question city river temple market "
         "north south east west coffee tea noodle rice mountain weather rain season festival night day "
         "quick slow simple careful exact bright small large open close read write count check run").split()
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise travel guide for Chiang Mai. Answer in two sentences at most.",
    "You are Marv, a factual chatbot that is also sarcastic.",
    "You answer questions about machine learning precisely, with one short example.",
    "You are a support agent for a small software company. Be polite and specific.",
]


def sentence(rnd: random.Random, lo: int, hi: int) -> str:
    words = rnd.choices(WORDS, k=rnd.randint(lo, hi))
    return " ".join(words).capitalize() + rnd.choice([".", "?", "!", "."])


def generate(path: Path, n: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            msgs = [{"role": "system", "content": rnd.choice(SYSTEMS)}]
            for _ in range(1 if rnd.random() < 0.8 else 2):
                msgs.append({"role": "user", "content": f"{sentence(rnd, 6, 30)} ({i})"})
                msgs.append({"role": "assistant", "content": " ".join(sentence(rnd, 5, 20)
                                                                       for _ in range(rnd.randint(1, 4)))})
            f.write(json.dumps({"messages": msgs}) + "\n")


def baseline_template(path: Path, tok) -> int:
    total = 0
    with open(path) as f:
        for line in f:
            msgs = json.loads(line)["messages"]
            total += len(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))
    return total


def baseline_per_message(path: Path, tok) -> int:
    total = 0
    with open(path) as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                total += len(tok.encode(m["content"], add_special_tokens=False))
    return total


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> int:
    from tunery.data import validate_file
    from tunery.data.tokens import get_counter
    from tunery.models import DEFAULT_MODEL, load_tokenizer

    os.environ["TUNERY_HOME"] = tempfile.mkdtemp(prefix="tunery-bench-home-")
    tmp = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    path = tmp / "train.jsonl"
    _, t_gen = timed(generate, path, N)
    size = path.stat().st_size
    print(f"generated {N:,} chat examples ({size / 1e6:.1f} MB) in {t_gen:.1f}s")
    tok = load_tokenizer(DEFAULT_MODEL)
    get_counter(DEFAULT_MODEL)  # load the tokenizer outside every timing

    report, t_tunery = timed(lambda: validate_file(path, model=DEFAULT_MODEL))
    assert report.ok, report.summary()
    tunery_total = report.token_stats["tokens"]["total"]
    # Baseline A is slow; on the full file it alone would take minutes, so it runs on a prefix whose
    # size keeps the whole benchmark within ~5 minutes, and its rate is per example.
    n_a = min(N, 50_000)
    prefix = tmp / "prefix.jsonl"
    with open(path) as src, open(prefix, "w") as dst:
        for _, line in zip(range(n_a), src):
            dst.write(line)
    total_a, t_a = timed(baseline_template, prefix, tok)
    _, t_b = timed(baseline_per_message, path, tok)

    prefix_report = validate_file(prefix, model=DEFAULT_MODEL)
    assert prefix_report.token_stats["tokens"]["total"] == total_a, "tunery's counts differ from the template's"

    rate_t, rate_a, rate_b = N / t_tunery, n_a / t_a, N / t_b
    print(f"tunery validate (all checks, exact tokens): {rate_t:>9,.0f} examples/s  ({t_tunery:.1f}s, "
          f"{tunery_total:,} tokens)")
    print(f"baseline A json + apply_chat_template:      {rate_a:>9,.0f} examples/s  ({t_a:.1f}s for {n_a:,}; "
          f"same token counts as tunery)")
    print(f"baseline B json + encode per message:       {rate_b:>9,.0f} examples/s  ({t_b:.1f}s, approximate)")
    print(f"ratio vs A: {rate_t / rate_a:.1f}x (goal >= {GOAL:.0f}x)   ratio vs B: {rate_t / rate_b:.1f}x")
    print("note: the machine is shared; absolute rates are noisy, ratios less so")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return 0 if rate_t / rate_a >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
