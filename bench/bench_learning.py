"""Does a fine-tune learn the data's facts? All-auto jobs through the real server, asked verbatim and reworded.

For every dataset file in bench/learning/ (or the ones named): start an embedded `tunery serve` (API +
worker, fresh TUNERY_HOME, shared model cache), upload the training chats with the official openai SDK,
create a job with NO hyperparameters (all auto), wait for it, then ask the base model and the fine-tuned
model, with the dataset's system prompt, temperature 0, max_tokens 80 and the dataset's stop string:

- every training question (verbatim recall), every reworded question (reworded recall),
- the off-topic questions (does the tuned model still answer general questions; does it blurt out a
  trained fact where it does not belong),

and print per dataset: verbatim / reworded / base recall of the key facts, off-topic behaviour, stop leaks
(an answer that contains the stop string or a piece of it, or never stopped), training seconds (trainer's
first to last event) and the machine load (`uptime`) before and after.

Dataset file format (JSON, one dataset per file, bench/learning/<name>.json):

    {
      "name": "ferry_short",                      # optional, default: the file's stem
      "description": "...",                       # optional
      "model": "smollm2-135m-instruct",           # optional, default smollm2-135m-instruct; any base model
                                                  # name or alias the server knows (gemma-3-270m, ...)
      "language": "en",                           # optional, default "en" (informational)
      "system": "You are ...",                    # optional system prompt, used in training and questions
      "answer_suffix": " **STOP**",               # optional, appended to every training answer
      "stop": "**STOP**",                         # optional stop string passed when asking
      "held_out": false,                          # true: only run with --held-out (or by name)
      "facts": [
        {"question": "...",                       # the training question (user turn)
         "answer": "...",                         # the training answer (assistant turn, before the suffix)
         "keys": ["5:40", ["40 percent", "40%"]], # key facts the answer must contain (case-insensitive);
                                                  # a list inside is a set of alternatives; each key counts
         "reworded": ["..."]}                     # >= 1 question asking for the same facts in other words
      ],
      "off_topic": [{"question": "...", "keys": ["Paris"]}]   # general questions; keys may be []
    }

Recall counts keys, not questions: a fact with 3 keys contributes 3. Write reworded questions by hand,
keeping the fact and changing the words, never by running the trainer's own augmentation on them.

Usage: python bench/bench_learning.py [DATASET ...] [--model NAME] [--held-out] [--list]
       (make bench runs every non-held-out dataset; runs are long: ~3-5 minutes per dataset)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "learning"
DEFAULT_MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 80

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def load_dataset(path: Path) -> dict:
    ds = json.loads(path.read_text(encoding="utf-8"))
    ds.setdefault("name", path.stem)
    ds.setdefault("model", DEFAULT_MODEL)
    ds.setdefault("language", "en")
    ds.setdefault("off_topic", [])
    for i, f in enumerate(ds["facts"]):
        if not f.get("keys") or not f.get("reworded"):
            raise SystemExit(f"{path}: fact {i} needs keys and at least one reworded question")
    return ds


def datasets(names: list[str], held_out: bool) -> list[dict]:
    out = []
    for path in sorted(DATA_DIR.glob("*.json")):
        ds = load_dataset(path)
        if names:
            if ds["name"] in names or path.stem in names:
                out.append(ds)
        elif held_out or not ds.get("held_out"):
            out.append(ds)
    return out


def training_rows(ds: dict) -> list[dict]:
    suffix = ds.get("answer_suffix", "")
    rows = []
    for f in ds["facts"]:
        msgs = [{"role": "system", "content": ds["system"]}] if ds.get("system") else []
        msgs += [{"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"] + suffix}]
        rows.append({"messages": msgs})
    return rows


def key_hits(answer: str, keys: list) -> list[bool]:
    a = answer.lower()
    return [any(alt.lower() in a for alt in ([k] if isinstance(k, str) else k)) for k in keys]


def leaked(answer: str, finish_reason: str, stop: str | None) -> bool:
    """The stop string (or a visible piece of it) in the answer, or generation that never stopped."""
    if not stop:
        return False
    core = stop.strip("*").strip() or stop
    return stop in answer or core in answer or finish_reason == "length"


def ask_all(client, model: str, ds: dict, questions: list[str]) -> list[tuple[str, str]]:
    def one(q: str) -> tuple[str, str]:
        msgs = [{"role": "system", "content": ds["system"]}] if ds.get("system") else []
        msgs.append({"role": "user", "content": q})
        kw = {"stop": ds["stop"]} if ds.get("stop") else {}
        r = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=MAX_TOKENS, **kw)
        return (r.choices[0].message.content or "").strip(), r.choices[0].finish_reason

    with ThreadPoolExecutor(max_workers=8) as pool:  # the engine batches concurrent requests
        return list(pool.map(one, questions))


def score(ds: dict, client, model: str) -> dict:
    facts = ds["facts"]
    verb = ask_all(client, model, ds, [f["question"] for f in facts])
    pairs = [(f, q) for f in facts for q in f["reworded"]]
    rew = ask_all(client, model, ds, [q for _, q in pairs])
    off = ask_all(client, model, ds, [o["question"] for o in ds["off_topic"]])
    v_hits = [h for f, (a, _) in zip(facts, verb) for h in key_hits(a, f["keys"])]
    r_hits = [h for (f, _), (a, _) in zip(pairs, rew) for h in key_hits(a, f["keys"])]
    off_keyed = [(o, a) for o, (a, _) in zip(ds["off_topic"], off) if o.get("keys")]
    off_ok = sum(all(key_hits(a, o["keys"])) for o, a in off_keyed)
    all_keys = [k for f in facts for k in f["keys"]]
    # A trained fact where it does not belong: an off-topic answer containing some fact's key.
    bleed = sum(any(key_hits(a, all_keys)) for a, _ in off)
    leaks = sum(leaked(a, fr, ds.get("stop")) for a, fr in verb + rew + off)
    misses = ([("verbatim", f["question"], a) for f, (a, _) in zip(facts, verb) if not all(key_hits(a, f["keys"]))]
              + [("reworded", q, a) for (f, q), (a, _) in zip(pairs, rew) if not all(key_hits(a, f["keys"]))])
    return {"verbatim": sum(v_hits) / len(v_hits), "reworded": sum(r_hits) / len(r_hits),
            "n_keys": len(v_hits), "n_reworded_keys": len(r_hits),
            "off_topic_ok": off_ok, "off_topic_keyed": len(off_keyed), "off_topic_bleed": bleed,
            "n_off_topic": len(off), "leaks": leaks, "n_answers": len(verb) + len(rew) + len(off),
            "misses": misses, "off_answers": [a for a, _ in off]}


def train_job(client, ds: dict, model: str, work: Path):
    path = work / f"{ds['name']}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in training_rows(ds)), encoding="utf-8")
    with open(path, "rb") as fh:
        f = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=model, training_file=f.id, suffix=ds["name"][:40].replace("_", "-"))
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000))))
    return job, events


def train_seconds(events) -> float | None:
    start = next((e.created_at for e in events if e.message.startswith("Fine-tuning started")), None)
    end = next((e.created_at for e in reversed(events) if e.message.startswith("Training finished")), None)
    return None if start is None or end is None else float(end - start)


def job_seconds(events) -> float | None:
    """From the job's first event (created) to its last (succeeded): start-up, replay, training, conversion."""
    return float(events[-1].created_at - events[0].created_at) if events else None


def run_dataset(ds: dict, model: str, verbose: bool) -> dict:
    from openai import OpenAI

    from tunery.models import materialize
    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    shared_cache = Settings.from_env().model_cache
    home = Path(tempfile.mkdtemp(prefix=f"tunery-bench-learning-{ds['name']}-"))
    atexit.register(shutil.rmtree, home, True)  # however the run ends
    os.environ["TUNERY_HOME"] = str(home)
    os.environ["TUNERY_MODEL_CACHE"] = str(shared_cache)
    os.environ.pop("TUNERY_DATABASE_URL", None)
    settings = Settings.from_env().ensure_dirs()
    materialize(model, settings)
    server = EmbeddedServer(settings, _free_port()).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=1, timeout=900)
        load_before = uptime()
        job, events = train_job(client, ds, model, home)
        load_after = uptime()
        if job.status != "succeeded":
            raise SystemExit(f"{ds['name']}: job {job.id} {job.status}: {job.error}")
        tuned = score(ds, client, job.fine_tuned_model)
        base = score(ds, client, model)
    finally:
        server.stop()
    hp = job.hyperparameters
    return {"dataset": ds["name"], "model": model, "language": ds["language"], "tuned": tuned, "base": base,
            "train_seconds": train_seconds(events), "job_seconds": job_seconds(events),
            "trained_tokens": job.trained_tokens,
            "hyperparameters": {"n_epochs": hp.n_epochs, "batch_size": hp.batch_size,
                                "learning_rate_multiplier": hp.learning_rate_multiplier},
            "decisions": [e.message for e in events if e.type != "metrics" and e.level == "info"
                          and any(w in e.message for w in ("Augmenting", "Paraphrased", "Replaying", "Stopping", "Fine-tuning started",
                                                           "Training finished"))],
            "load_before": load_before, "load_after": load_after}


def report(r: dict, verbose: bool) -> None:
    t, b = r["tuned"], r["base"]
    secs = f"{r['train_seconds']:.0f}s" if r["train_seconds"] is not None else "?"
    print(f"\n## {r['dataset']} ({r['language']}, {r['model']}, {t['n_keys']} key facts, "
          f"{t['n_reworded_keys']} reworded keys)")
    print(f"  verbatim recall   {t['verbatim']:6.0%}   (base {b['verbatim']:.0%})")
    print(f"  reworded recall   {t['reworded']:6.0%}   (base {b['reworded']:.0%})")
    print(f"  off-topic         {t['off_topic_ok']}/{t['off_topic_keyed']} answered right (base "
          f"{b['off_topic_ok']}/{b['off_topic_keyed']}), {t['off_topic_bleed']}/{t['n_off_topic']} with a trained fact")
    print(f"  stop leaks        {t['leaks']}/{t['n_answers']} answers")
    job = f" (whole job {r['job_seconds']:.0f}s)" if r.get("job_seconds") is not None else ""
    print(f"  training          {secs}{job}, {r['trained_tokens']:,} tokens, hyperparameters {r['hyperparameters']}")
    for d in r["decisions"]:
        print(f"    · {d}")
    print(f"  load before: {r['load_before']}\n  load after:  {r['load_after']}")
    if verbose:
        for kind, q, a in t["misses"]:
            print(f"    miss ({kind}) {q!r} → {a[:110]!r}")
        for a in t["off_answers"]:
            print(f"    off-topic → {a[:110]!r}")


def main(argv: list[str]) -> int:
    from tunery.quiet import quiet_libraries

    quiet_libraries()  # as the CLI does: no library progress bars or deprecation warnings in the report
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", help="dataset names (file stems in bench/learning/); default: all "
                    "that are not held out")
    ap.add_argument("--model", help="train this base model instead of each dataset's own")
    ap.add_argument("--held-out", action="store_true", help="also run the held-out datasets")
    ap.add_argument("--list", action="store_true", help="list the datasets and exit")
    ap.add_argument("--quiet", action="store_true", help="no per-question misses")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    chosen = datasets(args.datasets, args.held_out)
    if args.list or not chosen:
        for path in sorted(DATA_DIR.glob("*.json")):
            ds = load_dataset(path)
            print(f"{ds['name']:<24} {ds['model']:<24} {ds['language']:<4} {len(ds['facts']):>3} facts"
                  f"{'  (held out)' if ds.get('held_out') else ''}")
        return 0 if chosen or args.list else 1
    results = []
    for ds in chosen:
        r = run_dataset(ds, args.model or ds["model"], not args.quiet)
        report(r, not args.quiet)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print("\nsummary: " + "; ".join(
        f"{r['dataset']}/{r['model']}: verbatim {r['tuned']['verbatim']:.0%}, reworded {r['tuned']['reworded']:.0%},"
        f" base {max(r['base']['verbatim'], r['base']['reworded']):.0%}, leaks {r['tuned']['leaks']}, "
        f"{r['train_seconds'] or 0:.0f}s" for r in results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    sys.exit(main(sys.argv[1:]))
