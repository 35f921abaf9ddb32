"""Do learned facts survive llama.cpp's Q4_1? One fine-tune trained here, asked on both backends.

Trains one bench/learning dataset (default ferry_short; never a held_out one unless named) through the
real server with all-auto hyperparameters, then serves the same fine-tuned model on the llama.cpp backend
(Q4_1 base GGUF + the job's converted f16 LoRA GGUF) and on the torch engine (the fp32/bf16 weights the
trainer tuned), and asks each the training questions and the reworded ones (temperature 0, the dataset's
system prompt and stop string; scoring is bench_learning's). Prints key-fact recall per backend, with
`uptime` before and after.

Usage: python bench/bench_backend_facts.py [DATASET] [--keep] [--reuse HOME FT_MODEL]  (--reuse: ask a model
an earlier `--keep` run trained, in the TUNERY_HOME it printed, instead of training again; without --keep the
temporary home is removed at the end)
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
if (HERE.parent / ".cache" / "models").is_dir():
    os.environ.setdefault("TUNERY_MODEL_CACHE", str(HERE.parent / ".cache" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str]) -> int:
    from openai import OpenAI

    from bench_backends import start, uptime
    from bench_learning import DATA_DIR, load_dataset, score, train_job, train_seconds
    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    keep = "--keep" in argv
    argv = [a for a in argv if a != "--keep"]
    reuse = None
    if "--reuse" in argv:
        i = argv.index("--reuse")
        reuse, argv = argv[i + 1:i + 3], argv[:i] + argv[i + 3:]
    name = argv[0] if argv else "ferry_short"
    ds = load_dataset(DATA_DIR / f"{name}.json")
    model = ds.get("model") or "smollm2-135m-instruct"
    home = Path(reuse[0]) if reuse else Path(tempfile.mkdtemp(prefix=f"tunery-bench-facts-{name}-"))
    if not reuse and not keep:
        atexit.register(shutil.rmtree, home, True)  # however the run ends
    os.environ["TUNERY_HOME"] = str(home)
    os.environ.pop("TUNERY_DATABASE_URL", None)
    settings = Settings.from_env().ensure_dirs()
    if reuse:
        tuned = reuse[1]
        print(f"{name}: asking {tuned} (trained earlier in {home}); {uptime()}", flush=True)
    else:
        print(f"{name}: training on {model} (all auto); {uptime()}", flush=True)
        server = EmbeddedServer(settings, _free_port()).start()
        try:
            client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=1, timeout=900)
            job, events = train_job(client, ds, model, home)
        finally:
            server.stop()
        if job.status != "succeeded":
            print(f"job {job.id} {job.status}: {job.error}")
            return 1
        tuned = job.fine_tuned_model
        print(f"  trained {tuned} in {train_seconds(events) or 0:.0f} s; "
              f"events: {[e.message for e in events if 'GGUF' in e.message]}", flush=True)
    rows = {}
    for backend in ("llamacpp", "torch"):
        srv = start(home, backend)
        try:
            t = time.perf_counter()
            rows[backend] = (score(ds, OpenAI(base_url=srv.base_url, api_key="unused", max_retries=1, timeout=900), tuned), time.perf_counter() - t)
        finally:
            srv.stop()
            srv.app.state.engine.close()
    print(f"\n  {'backend':<10} {'verbatim':>14} {'reworded':>14} {'stop leaks':>11} {'ask time':>9}")
    for backend, (r, secs) in rows.items():
        print(f"  {backend:<10} {r['verbatim'] * 100:7.0f}% of {r['n_keys']:<3} {r['reworded'] * 100:7.0f}% "
              f"of {r['n_reworded_keys']:<3} {r['leaks']:>5}/{r['n_answers']:<5} {secs:8.1f}s")
    for backend, (r, _) in rows.items():
        for kind, q, a in r["misses"]:
            print(f"  miss [{backend}, {kind}] {q!r} -> {a[:100]!r}")
    print(f"\n{uptime()}; home {home}" + (" (kept: --reuse it)" if keep and not reuse else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
