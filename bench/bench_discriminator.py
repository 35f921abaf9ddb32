"""A topic discriminator the way OpenAI's legacy babbage-002 recipe makes one, on tunery, built from FEW on-topic
questions (as `tunery data generate` leaves them: one question per generated pair), then judged on questions it
never saw. For each of two invented domains — the Embyr Kilns pottery studio (bench/data/embyr_questions.txt) and
the Hollin Street Library (bench/data/library_questions.txt) — a few seed questions go through
`tunery.data.discriminator.build_discriminator` (bundled off-topic list), the set is fine-tuned through the API
with default hyperparameters (babbage-002 → the bundled model), and the classifier is asked with the official SDK
(completions, max_tokens=1, logprobs=5) about, held out:

- the held-out split of its own set (seed questions it did not train on, their rewrites, off-topic questions):
  top-2 has both labels (bar ≥ 95%) and accuracy (bar ≥ 90%, at the guard's default threshold; the greedy
  label's accuracy is printed beside it);
- every other on-topic question of the domain file: hand-written rewordings of the seeds and questions about
  the same facts (what a visitor asks) — the share ACCEPTED, P(" yes") ≥ threshold;
- off-topic questions never trained on (the split's held-out negatives + bench/data/offtopic_heldout.txt, none in
  the bundled list) — the share DECLINED, P(" yes") < threshold;
- first in the report, the FINAL CHECK: bench/data/<domain>_final.txt and offtopic_final.txt, written before the
  defaults (rewrites, guard threshold) were chosen and asked only to report them (`--no-final` while tuning);

each at several thresholds (the guard's default is one of them). Exits 1 when the default set misses a bar on
any domain. ~10-20 min per domain and setting on 2 shared cores. `--rewrites N` (repeatable; default: the
default only, `--rewrites 0` is the no-rewrite baseline) picks the settings compared; `--domain NAME` runs one
domain. The temporary folder (data, and the server's home unless `--home`) is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
# Domain name → (question file, seed stride): every stride-th question is a seed (trained), the rest held out.
DOMAINS = {"embyr": ("embyr_questions.txt", 8), "library": ("library_questions.txt", 4)}
THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
VALID_FRACTION = 0.25


def _questions(path: Path) -> list[str]:
    return [q.strip() for q in path.read_text().splitlines() if q.strip() and not q.startswith("#")]


def ask(client, model: str, prompt: str) -> tuple[dict, str]:
    """The first token's top-5 logprobs and the greedy token, as an application reads them."""
    resp = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
    ch = resp.choices[0]
    return (ch.logprobs.top_logprobs[0] if ch.logprobs and ch.logprobs.top_logprobs else {}), ch.text


def p_yes(top: dict) -> float:
    """P(positive label) the way the guard reads it (tunery.api.guard.label_probability: variants summed)."""
    return min(1.0, sum(math.exp(lp) for tok, lp in top.items() if tok.strip().lower() == "yes"))


def _finished_job(client, data: bytes):
    for job in client.fine_tuning.jobs.list(limit=100):
        if job.status == "succeeded" and job.hyperparameters and client.files.content(job.training_file).content == data:
            return job
    return None


def run_one(client, domain: str, rewrites: int, work: Path, final: bool = True) -> dict:
    from tunery.data.discriminator import _key, build_discriminator, bundled_negatives, classifier_prompt

    fname, stride = DOMAINS[domain]
    qs = _questions(HERE / "data" / fname)
    seeds = qs[::stride]
    reworded = [q for i, q in enumerate(qs) if i % stride]
    chat = work / f"{domain}_qa.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": "…"}]}) + "\n"
                            for q in seeds))
    r = build_discriminator(chat, work / f"{domain}_r{rewrites}.jsonl", valid_fraction=VALID_FRACTION, seed=0,
                            rewrites=rewrites)
    valid = [json.loads(x) for x in Path(r.valid_path).read_text().splitlines()]
    trained = {_key(json.loads(x)["prompt"]) for x in Path(r.train_path).read_text().splitlines()}
    bundled = {_key(q) for q in bundled_negatives()}
    sep = "\n\n###\n\n"
    # Held-out off-topic: the split's held-out negatives as written (not their rewrites) + the bench's own list.
    off = [row["prompt"] for row in valid if row["completion"] == " no"
           and any(row["prompt"] == classifier_prompt(q, sep) for q in bundled_negatives())]
    off += [classifier_prompt(q, sep) for q in _questions(HERE / "data" / "offtopic_heldout.txt")
            if _key(q) not in bundled]
    on = [classifier_prompt(q, sep) for q in reworded]
    assert not (set(map(_key, on + off)) & trained), "a held-out question was trained on"

    t0 = time.perf_counter()
    data = Path(r.train_path).read_bytes()
    job = _finished_job(client, data)  # --home: a run that already trained this exact set is reused
    reused = job is not None
    if not reused:
        f = client.files.create(file=(f"{domain}_train.jsonl", io.BytesIO(data)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="babbage-002", training_file=f.id, suffix="disc")
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.status}: {job.error}")
    hp = job.hyperparameters
    train_s = None if reused else time.perf_counter() - t0
    model = job.fine_tuned_model

    both = right = 0
    split = []  # (P(yes), is on topic) of every held-out split prompt
    for row in valid:
        top, text = ask(client, model, row["prompt"])
        first2 = sorted(top, key=top.get, reverse=True)[:2]
        both += " yes" in first2 and " no" in first2
        right += text.strip() == row["completion"].strip()
        split.append((p_yes(top), row["completion"] == " yes"))
    p_on = [p_yes(ask(client, model, p)[0]) for p in on]
    p_off = [p_yes(ask(client, model, p)[0]) for p in off]
    m = {"domain": domain, "rewrites": rewrites, "n_seeds": len(seeds), "n_train": r.n_train,
         "n_valid": len(valid), "top2_both": both / len(valid), "greedy_accuracy": right / len(valid),
         "split_accuracy": {t: sum((p >= t) == pos for p, pos in split) / len(split) for t in THRESHOLDS},
         "n_on": len(on), "n_off": len(off),
         "accept": {t: sum(p >= t for p in p_on) / len(on) for t in THRESHOLDS},
         "decline": {t: sum(p < t for p in p_off) / len(off) for t in THRESHOLDS},
         "split": split, "p_on": p_on, "p_off": p_off, "train_s": train_s,
         "hp": f"n_epochs {hp.n_epochs}, batch_size {hp.batch_size}, lr× {hp.learning_rate_multiplier}"}
    if final:
        # Written after the settings were chosen, asked only to report them (never to tune): see the files.
        f_on = [classifier_prompt(q, sep) for q in _questions(HERE / "data" / f"{domain}_final.txt")]
        f_off = [classifier_prompt(q, sep) for q in _questions(HERE / "data" / "offtopic_final.txt")]
        assert not (set(map(_key, f_on + f_off)) & trained), "a final-check question was trained on"
        pf_on = [p_yes(ask(client, model, p)[0]) for p in f_on]
        pf_off = [p_yes(ask(client, model, p)[0]) for p in f_off]
        m["final"] = {"n_on": len(f_on), "n_off": len(f_off), "p_on": pf_on, "p_off": pf_off,
                      "accept": {t: sum(p >= t for p in pf_on) / len(pf_on) for t in THRESHOLDS},
                      "decline": {t: sum(p < t for p in pf_off) / len(pf_off) for t in THRESHOLDS},
                      "accuracy": {t: (sum(p >= t for p in pf_on) + sum(p < t for p in pf_off))
                                   / (len(pf_on) + len(pf_off)) for t in THRESHOLDS}}
    return m


def main() -> int:
    from tunery.data.discriminator import DEFAULT_REWRITES
    from tunery.store.guards import DEFAULT_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rewrites", type=int, action="append", help=f"settings to compare (default: "
                    f"{DEFAULT_REWRITES}, the default; 0 is the no-rewrite baseline)")
    ap.add_argument("--domain", choices=sorted(DOMAINS), action="append")
    ap.add_argument("--json", type=Path, help="also write every figure (and each question's P(yes)) here")
    ap.add_argument("--home", type=Path, help="TUNERY_HOME to use (default: a new temporary one); fine-tunes of "
                    "the same set that finished there before are reused, so an interrupted bench resumes")
    ap.add_argument("--no-final", action="store_true", help="skip the final check (bench/data/*_final.txt): "
                    "tune on the held-out figures without looking at it")
    args = ap.parse_args()
    settings = args.rewrites or [DEFAULT_REWRITES]
    domains = args.domain or list(DOMAINS)

    import openai

    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="tunery-bench-disc-"))
    results = []
    try:
        os.environ["TUNERY_HOME"] = str(args.home or work / "home")
        server = EmbeddedServer(Settings.from_env().ensure_dirs(), _free_port()).start()
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
            for d in domains:
                for k in settings:
                    m = run_one(client, d, k, work, final=not args.no_final)
                    results.append(m)
                    print(f"  [{d}, rewrites {k}: {m['n_train']} training rows from {m['n_seeds']} seed questions, "
                          + (f"trained in {m['train_s']:.0f}s" if m["train_s"] is not None
                             else "model reused from --home") + f" ({m['hp']})]", flush=True)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)  # (--home, when given, is the caller's and stays)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    report(results, DEFAULT_THRESHOLD)
    print(f"loadavg: {' '.join(load)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    default = [m for m in results if m["rewrites"] == DEFAULT_REWRITES]
    if not default:
        print(f"no run with the default --rewrites {DEFAULT_REWRITES}: bars not judged")
        return 0
    ok = all(m["top2_both"] >= 0.95 and m["split_accuracy"][DEFAULT_THRESHOLD] >= 0.90 for m in default)
    print(("PASS" if ok else "FAIL") + f": bars (default --rewrites {DEFAULT_REWRITES}, every domain) are both labels "
          f"in the top 2 for ≥ 95% and accuracy at the guard's default threshold {DEFAULT_THRESHOLD} ≥ 90%, "
          "on the held-out split")
    return 0 if ok else 1


def report(results: list[dict], default_threshold: float) -> None:
    """Per domain and setting, the final check first, then the held-out figures, one column per threshold."""
    head = f"  {'':<44}" + "".join(f"{'≥ ' + str(t) + ('*' if t == default_threshold else ''):>8}"
                                   for t in THRESHOLDS)

    def line(label: str, n: int, shares: dict) -> str:
        return f"    {label:<34}{n:>6} " + "".join(f"{shares[t]:>8.0%}" for t in THRESHOLDS)

    if any("final" in m for m in results):
        print("\nFINAL CHECK (bench/data/*_final.txt: written before the settings were tuned, asked only to report "
              f"them). Share at P(yes) thresholds; * = the guard's default\n{head}")
        for m in results:
            if "final" in m:
                f = m["final"]
                print(f"  {m['domain']}, --rewrites {m['rewrites']}")
                print(line("on-topic ACCEPTED", f["n_on"], f["accept"]))
                print(line("off-topic DECLINED", f["n_off"], f["decline"]))
                print(line("accuracy (both)", f["n_on"] + f["n_off"], f["accuracy"]))
    print(f"\nHELD OUT (never trained on). Share at P(yes) thresholds; * = the guard's default\n{head}")
    for m in results:
        print(f"  {m['domain']}, --rewrites {m['rewrites']}: split of {m['n_valid']} prompts, both labels in the "
              f"top 2 for {m['top2_both']:.0%} (bar 95%), greedy label right for {m['greedy_accuracy']:.0%}")
        print(line("split accuracy (bar 90%)", m["n_valid"], m["split_accuracy"]))
        print(line("reworded on-topic ACCEPTED", m["n_on"], m["accept"]))
        print(line("off-topic DECLINED", m["n_off"], m["decline"]))


if __name__ == "__main__":
    sys.exit(main())
