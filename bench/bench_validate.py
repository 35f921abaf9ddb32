"""Validation throughput: tunery's streaming validator vs simple baselines, on a generated 200,000-example
chat file, with the bundled model's own tokenizer, in the same run.

Baselines (each loads every line with json and tokenizes it one at a time, doing no checks at all):
  A "template": json.loads + tokenizer.apply_chat_template(messages, tokenize=True) — the exact count;
  B "per message": json.loads + tokenizer.encode(content) for every message (the cookbook's method;
    cheaper but only approximate, it ignores the template's tokens).
tunery does every check of `tunery data validate` (format, duplicates, context) and an exact count.
Goal: tunery ≥ 3x baseline A (examples/s by process CPU time; wall-clock is printed too, but on a
shared machine it mostly measures the neighbours). Usage: python bench/bench_validate.py [N]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TUNERY_MODEL_CACHE", str(REPO / ".cache" / "models"))
os.environ["HF_HUB_OFFLINE"] = "1"

N_DEFAULT = 200_000
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
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> int:
    from tunery.data import validate_file
    from tunery.data.tokens import get_counter
    from tunery.models import DEFAULT_MODEL, load_tokenizer

    N = int(sys.argv[1]) if len(sys.argv) > 1 else N_DEFAULT
    tmp = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    os.environ["TUNERY_HOME"] = str(tmp / "home")
    try:
        return run(N, tmp, validate_file, get_counter, DEFAULT_MODEL, load_tokenizer)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(N: int, tmp: Path, validate_file, get_counter, DEFAULT_MODEL: str, load_tokenizer) -> int:
    path = tmp / "train.jsonl"
    _, t_gen, _ = timed(generate, path, N)
    size = path.stat().st_size
    print(f"generated {N:,} chat examples ({size / 1e6:.1f} MB) in {t_gen:.1f}s")
    tok = load_tokenizer(DEFAULT_MODEL)
    get_counter(DEFAULT_MODEL)  # load the tokenizer outside every timing

    report, w_t, c_t = timed(lambda: validate_file(path, model=DEFAULT_MODEL))
    assert report.ok, report.summary()
    tunery_total = report.token_stats["tokens"]["total"]
    # The baselines are slow; on the full file they alone would take minutes, so they run on a prefix
    # (which keeps the whole benchmark within ~5 minutes) and their rates are per example.
    n_a = min(N, 30_000)
    prefix = tmp / "prefix.jsonl"
    with open(path) as src, open(prefix, "w") as dst:
        for _, line in zip(range(n_a), src):
            dst.write(line)
    total_a, w_a, c_a = timed(baseline_template, prefix, tok)
    _, w_b, c_b = timed(baseline_per_message, prefix, tok)

    prefix_report = validate_file(prefix, model=DEFAULT_MODEL)
    assert prefix_report.token_stats["tokens"]["total"] == total_a, "tunery's counts differ from the template"

    def line(label, n, wall, cpu, note):
        print(f"{label:<44} {n / cpu:>8,.0f} ex/s CPU  {n / wall:>8,.0f} ex/s wall  "
              f"({n:,} ex, {wall:.1f}s) {note}")
    line("tunery validate (all checks, exact tokens)", N, w_t, c_t, f"{tunery_total:,} tokens")
    line("baseline A: json + apply_chat_template", n_a, w_a, c_a, "same token counts as tunery")
    line("baseline B: json + encode each message", n_a, w_b, c_b, "approximate counts")
    ratio_a_cpu, ratio_a_wall = (N / c_t) / (n_a / c_a), (N / w_t) / (n_a / w_a)
    print(f"ratio vs A: {ratio_a_cpu:.1f}x by CPU time, {ratio_a_wall:.1f}x by wall time "
          f"(goal >= {GOAL:.0f}x)   "
          f"ratio vs B: {(N / c_t) / (n_a / c_b):.1f}x by CPU time")
    print("note: CPU time is this process's (all threads); on a shared machine it is steadier than wall time")
    return 0 if ratio_a_cpu >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
