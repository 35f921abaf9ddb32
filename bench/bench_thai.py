"""Learning check for one invented-fact dataset (default bench/learning/thai.json on gemma-3-270m).

Through a real `tunery serve` and the official openai SDK, with every hyperparameter on auto: upload one chat
example per fact (system prompt, question, answer + answer_suffix), ask the base model, fine-tune, then ask
each fact with the training question and reworded (held out: never trained), temperature 0, max_tokens 80,
stop at the dataset's stop string. An answer counts when it holds every key (a key may be a list of
alternatives). Also counts stop leaks and streamed chunks holding U+FFFD (half a Thai character), and checks
that each stream adds up to the non-streamed answer. Prints a summary; --out writes every answer as JSON.

Stand-alone until bench/bench_learning.py (same dataset format) runs the Thai set too.

Usage: python bench/bench_thai.py [--data bench/learning/thai.json] [--model gemma-3-270m] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hit(text: str, keys: list) -> bool:
    return all(any(a in text for a in (k if isinstance(k, list) else [k])) for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "bench" / "learning" / "thai.json"))
    ap.add_argument("--model", default=None, help="base model (default: the dataset's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from openai import OpenAI

    ds = json.loads(Path(args.data).read_text())
    model = args.model or ds["model"]
    home = Path(tempfile.mkdtemp(prefix="tunery-bench-thai-"))
    port = free_port()
    env = dict(os.environ, TUNERY_HOME=str(home), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    log = open(home / "server.log", "w")
    srv = subprocess.Popen([str(Path(sys.executable).parent / "tunery"), "serve", "--port", str(port),
                            "--log-level", "warning"],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=900, max_retries=0)
    try:
        for _ in range(240):
            try:
                client.models.list()
                break
            except Exception:  # not listening yet
                time.sleep(0.5)
        suffix, stop, system = ds.get("answer_suffix", ""), ds.get("stop"), ds["system"]
        rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": f["question"]},
                              {"role": "assistant", "content": f["answer"] + suffix}]} for f in ds["facts"]]
        train = home / "train.jsonl"
        train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fid = client.files.create(file=train.open("rb"), purpose="fine-tune").id
        while client.files.retrieve(fid).status not in ("processed", "error"):
            time.sleep(0.5)

        def ask(m: str, q: str) -> str:
            r = client.chat.completions.create(model=m, messages=[{"role": "system", "content": system},
                                               {"role": "user", "content": q}], temperature=0, max_tokens=80,
                                               stop=stop)
            return r.choices[0].message.content or ""

        def score(m: str, which: str) -> tuple[float, int, list]:
            out = []
            for f in ds["facts"]:
                for q in ([f["question"]] if which == "verbatim" else f["reworded"]):
                    a = ask(m, q)
                    out.append({"q": q, "a": a, "ok": hit(a, f["keys"]), "leak": "STOP" in a or "**" in a})
            return sum(o["ok"] for o in out) / len(out), sum(o["leak"] for o in out), out

        base, _, base_out = score(model, "verbatim")
        job = client.fine_tuning.jobs.create(model=model, training_file=fid)
        t = time.time()
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
        wall = time.time() - t
        if job.status != "succeeded":
            sys.exit(f"the fine-tuning job {job.status}: {job.error}")
        ft = job.fine_tuned_model
        reworded, rleaks, rout = score(ft, "reworded")
        verbatim, vleaks, vout = score(ft, "verbatim")
        off = [{"q": o["question"], "a": (a := ask(ft, o["question"])), "ok": hit(a, o["keys"])}
               for o in ds.get("off_topic", [])]
        fffd = mismatch = 0
        for f in ds["facts"]:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": f["question"]}]
            chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=ft, messages=msgs, temperature=0, max_tokens=80, stop=stop, stream=True) if c.choices]
            fffd += sum("\ufffd" in c for c in chunks)
            mismatch += "".join(chunks) != ask(ft, f["question"])
        hp = job.hyperparameters.model_dump() if job.hyperparameters else {}
        summary = {
            "dataset": ds["name"], "model": model, "facts": len(ds["facts"]),
            "reworded_recall (held out)": round(reworded, 3), "verbatim_recall": round(verbatim, 3),
            "base_recall": round(base, 3), "stop_leaks": vleaks + rleaks, "training_wall_seconds": round(wall, 1),
            "hyperparameters": hp, "trained_tokens": job.trained_tokens, "stream_chunks_with_U+FFFD": fffd,
            "streams_differing_from_non_streamed": mismatch, "uptime": os.popen("uptime").read().strip(),
        }
        print(json.dumps(summary, ensure_ascii=False, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps({**summary, "verbatim": vout, "reworded": rout, "off_topic": off,
                                                  "base": base_out}, ensure_ascii=False, indent=1))
    finally:
        srv.terminate()
        srv.wait(timeout=60)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
