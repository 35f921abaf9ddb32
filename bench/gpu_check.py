"""tunery on one NVIDIA GPU in under five minutes: a LoRA job trained by the worker on CUDA (bf16), served,
and its greedy answers compared with the same adapter run on the CPU in fp32.

    bash bench/gpu_check.sh [WHEEL_DIR]       # installs tunery's wheels offline, then runs this
    python bench/gpu_check.py --device cpu    # the same checks on the CPU (how the script itself is tested)

It prints one line per check, `PASS name: detail` or `FAIL name: detail`, and exits 1 if any failed. Nothing
is downloaded: the base model is the bundled SmolLM2-135M-Instruct, the data the quickstart's demo set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SAME_TOKENS = 8  # bf16 on the GPU against fp32 on the CPU: the first tokens of a greedy answer must agree
LIMIT_SECONDS = 300

results: list[tuple[bool, str, str]] = []


def check(ok: bool, name: str, detail: str) -> bool:
    results.append((ok, name, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def device_check(device: str) -> bool:
    import torch

    if device == "cpu":
        return check(True, "device", "cpu (dry run: nothing here is CUDA)")
    if not torch.cuda.is_available():
        return check(False, "device", f"torch {torch.__version__} sees no CUDA device")
    name = torch.cuda.get_device_name(0)
    return check(torch.cuda.is_bf16_supported(), "device", f"{name}, torch {torch.__version__}, "
                 f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'}")


def train_job(client, epochs: int | None):
    from tunery import demo

    data = demo.read_text(demo.TRAIN_FILE).encode()
    fid = client.files.create(file=("train.jsonl", data), purpose="fine-tune").id
    hp = {"n_epochs": epochs} if epochs else {}
    job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=fid, suffix="gpu-check",
                                         hyperparameters=hp)
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    return job


def training_checks(client, job, device: str) -> None:
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    started = next((e.message for e in events if e.message.startswith("Fine-tuning started")), "")
    metrics = [e.data for e in events if e.type == "metrics" and e.data and "tokens_per_second" in e.data]
    tps = max((m["step"], m["tokens_per_second"]) for m in metrics)[1] if metrics else 0.0
    on = started.rsplit(" on ", 1)[-1] if " on " in started else "?"
    check(job.status == "succeeded" and on.startswith(device), "training",
          f"{job.status} on {on}, {job.trained_tokens or 0:,} tokens at {tps:,.0f} tokens/s"
          + (f" ({job.error.message})" if job.error and job.error.message else ""))


def _messages(question: str) -> list[dict]:
    from tunery import demo

    return [{"role": "system", "content": demo.SYSTEM_PROMPT}, {"role": "user", "content": question}]


def serve_checks(client, model: str) -> list[str]:
    from tunery.demo import QUESTIONS

    answers, tokens, seconds = [], 0, 0.0
    for q in QUESTIONS:
        t = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=_messages(q),
                                           temperature=0, max_tokens=64)
        seconds += time.perf_counter() - t
        tokens += r.usage.completion_tokens
        answers.append(r.choices[0].message.content or "")
    backend = next((getattr(m, "backend", "?") for m in client.models.list() if m.id == model), "?")
    check(tokens > 0, "decoding", f"{tokens / seconds:,.1f} tokens/s over {len(QUESTIONS)} greedy answers "
          f"({tokens} tokens, backend {backend})")
    return answers


def cpu_reference(settings, model: str, answers: list[str]) -> None:
    """The same adapter on the CPU in fp32 (transformers + PEFT), greedy: its first tokens must match."""
    import torch
    from peft import PeftModel

    from tunery.demo import QUESTIONS
    from tunery.models.registry import load_model
    from tunery.store import find_servable_model, get_org, open_store

    store = open_store(settings)
    path = find_servable_model(store, get_org(store, settings.default_org), model).adapter_dir
    base, tok = load_model("smollm2-135m-instruct", device="cpu")
    net = PeftModel.from_pretrained(base, str(path)).eval()
    same = 0
    for q, served in zip(QUESTIONS, answers):
        ids = tok.apply_chat_template(_messages(q), add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = net.generate(**ids, max_new_tokens=SAME_TOKENS, do_sample=False)
        cpu = out[0, ids["input_ids"].shape[1]:].tolist()
        gpu = tok(served, add_special_tokens=False)["input_ids"][:len(cpu)]
        same += cpu == gpu
        if cpu != gpu:
            print(f"     {q!r}: served {tok.decode(gpu)!r}, CPU {tok.decode(cpu)!r}", flush=True)
    check(same == len(QUESTIONS), "answers", f"{same}/{len(QUESTIONS)} greedy answers equal the CPU fp32 run's "
          f"first {SAME_TOKENS} tokens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the script")
    ap.add_argument("--epochs", type=int, default=None, help="explicit n_epochs (default: auto, as users run)")
    a = ap.parse_args()
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="tunery-gpu-check-"))
    os.environ.update(TUNERY_HOME=str(home), TUNERY_DEVICE=a.device, HF_HUB_OFFLINE="1")
    from tunery.quiet import quiet_libraries

    quiet_libraries()
    if not device_check(a.device):
        return 1
    import openai

    from tunery.quickstart import EmbeddedServer, _free_port
    from tunery.settings import Settings

    settings = Settings.from_env().ensure_dirs()
    server = EmbeddedServer(settings, _free_port()).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
        job = train_job(client, a.epochs)
        training_checks(client, job, a.device)
        if job.status == "succeeded":
            answers = serve_checks(client, job.fine_tuned_model)
            cpu_reference(settings, job.fine_tuned_model, answers)
    finally:
        server.stop()
    took = time.monotonic() - t0
    check(took < LIMIT_SECONDS, "time", f"{took:.0f} s in all (limit {LIMIT_SECONDS} s); state in {home}")
    print(json.dumps({"passed": sum(ok for ok, _, _ in results), "checks": len(results)}))
    return 0 if all(ok for ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
