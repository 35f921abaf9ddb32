"""A topic discriminator the way OpenAI's legacy babbage-002 recipe makes one, on tunery: on-topic questions
(bench/data/embyr_questions.txt, an invented pottery studio) vs the bundled off-topic list, built with
`tunery.data.discriminator`, fine-tuned through the API with default hyperparameters (babbage-002 → the bundled
model), then asked on the HELD-OUT prompts with the official SDK: completions, max_tokens=1, logprobs=2.

Reports, held-out first: the share of prompts with both " yes" and " no" among the top-2 logprobs (bar: ≥ 95%)
and accuracy (bar: ≥ 90%), for the fine-tuned classifier and, as the baseline of the same run, the base model.
Exits 1 when the fine-tuned classifier misses a bar. ~5-15 min on 2 shared cores.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent


def classify(client, model: str, rows: list[dict]) -> dict:
    """Top-2 coverage, accuracy and mean P(label) over rows of {prompt, completion}."""
    both = correct = 0
    p_true = []
    for r in rows:
        resp = client.completions.create(model=model, prompt=r["prompt"], max_tokens=1, temperature=0, logprobs=2)
        ch = resp.choices[0]
        top = ch.logprobs.top_logprobs[0] if ch.logprobs and ch.logprobs.top_logprobs else {}
        both += " yes" in top and " no" in top
        correct += ch.text.strip() == r["completion"].strip()
        p_true.append(math.exp(top[r["completion"]]) if r["completion"] in top else 0.0)
    n = len(rows)
    return {"n": n, "top2_both": both / n, "accuracy": correct / n, "mean_p_label": sum(p_true) / n}


def main() -> int:
    import openai

    from tunery.data.discriminator import build_discriminator
    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="tunery-bench-disc-"))
    os.environ["TUNERY_HOME"] = str(work / "home")
    chat = work / "qa.jsonl"
    questions = [q.strip() for q in (HERE / "data" / "embyr_questions.txt").read_text().splitlines()
                 if q.strip() and not q.startswith("#")]
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": "…"}]}) + "\n"
                            for q in questions))
    r = build_discriminator(chat, work / "disc.jsonl", valid_fraction=0.3, seed=0)
    valid = [json.loads(x) for x in Path(r.valid_path).read_text().splitlines()]
    print(f"data: {r.n_train} training and {r.n_valid} held-out prompt/completion examples "
          f"({r.n_per_label} per label, separator \\n\\n###\\n\\n)")
    server = EmbeddedServer(Settings.from_env().ensure_dirs(), _free_port()).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        t0 = time.perf_counter()
        f = client.files.create(file=("disc_train.jsonl", io.BytesIO(Path(r.train_path).read_bytes())),
                                purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="babbage-002", training_file=f.id, suffix="disc")
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
            job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded":
            print(f"job {job.status}: {job.error}")
            return 1
        hp = job.hyperparameters
        print(f"fine-tuned in {time.perf_counter() - t0:.0f}s with default hyperparameters: n_epochs {hp.n_epochs}, "
              f"batch_size {hp.batch_size}, learning_rate_multiplier {hp.learning_rate_multiplier}")
        tuned = classify(client, job.fine_tuned_model, valid)
        base = classify(client, "babbage-002", valid)
    finally:
        server.stop()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"held-out ({tuned['n']} prompts)          top-2 has both labels   accuracy   mean P(true label)")
    for name, m in (("fine-tuned discriminator", tuned), ("base model (baseline)", base)):
        print(f"  {name:<28} {m['top2_both']:>10.1%} {m['accuracy']:>17.1%} {m['mean_p_label']:>12.3f}")
    print(f"uptime: {load}")
    ok = tuned["top2_both"] >= 0.95 and tuned["accuracy"] >= 0.90
    print("PASS" if ok else "FAIL: bars are top-2 ≥ 95% and accuracy ≥ 90%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
