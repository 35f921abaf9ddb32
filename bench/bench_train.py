"""tunery's trainer vs TRL's SFTTrainer: same model, data, LoRA config, batch, max length, threads, 1 epoch.

Each trainer runs in its own child process (so peak RSS is its own); prints trained tokens/s and peak memory
of both and the ratios. TRL is optional: `make bench` installs it (the `bench` extra); without it this prints
a clear message and only tunery's numbers. Numbers taken while others use the machine are noisy.

Usage: python bench/bench_train.py [--examples 64] [--batch 8] [--threads 2] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("robot gear brass river lantern owl tin factory museum kettle spark copper lever valve piston gauge "
         "cable engine sprocket bolt wrench signal circuit panel motor sensor switch relay coil magnet").split()


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Uneven-length single-turn chats (5-60 word questions, 5-90 word answers)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + "?"
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 90))) + "."
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_tunery(args) -> dict:
    import torch

    from tunery.train import TrainCallbacks, TrainConfig, train

    torch.set_num_threads(args.threads)
    os.environ["TUNERY_NUM_THREADS"] = str(args.threads)
    marks: dict = {}

    class CB(TrainCallbacks):
        def should_stop(self):
            marks.setdefault("start", time.perf_counter())
            return None

        def on_metrics(self, d):
            marks["end"] = time.perf_counter()
            marks["tokens"] = d["trained_tokens"]

    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(model=args.model, training_file=args.data, output_dir=out, n_epochs=1,
                          batch_size=args.batch, learning_rate_multiplier=1.0, lora_rank=16, seed=0,
                          max_length=args.max_length, precision=args.precision), CB())
    secs = marks["end"] - marks["start"]
    return {"tokens": marks["tokens"], "seconds": secs, "peak_mb": peak_mb()}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunery.models import materialize

    torch.set_num_threads(args.threads)
    d = materialize(args.model)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    # Conversational prompt/completion: TRL then trains the assistant turn only, like tunery.
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        num_train_epochs=1, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=1,
                        max_length=args.max_length, packing=False, use_cpu=True, bf16=False,
                        report_to=[], save_strategy="no", logging_steps=10_000, seed=0,
                        dataloader_num_workers=0, disable_tqdm=True)
        lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lcfg)
        t = time.perf_counter()
        trainer.train()
        secs = time.perf_counter() - t
    return {"seconds": secs, "peak_mb": peak_mb()}


def run_child(kind: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(args.data), "--batch", str(args.batch),
           "--threads", str(args.threads), "--model", args.model, "--max-length", str(args.max_length),
           "--precision", args.precision]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{kind} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child")
    p.add_argument("--data")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--precision", default="auto")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--only", choices=["tunery", "trl"])
    args = p.parse_args()
    if args.child:
        res = child_tunery(args) if args.child == "tunery" else child_trl(args)
        print(json.dumps(res))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        args.data = Path(tmp) / "bench.jsonl"
        make_data(args.data, args.examples)
        print(f"model {args.model}, {args.examples} uneven chats, LoRA r16 all-linear, batch {args.batch}, "
              f"max length {args.max_length}, {args.threads} threads, 1 epoch (load avg {os.getloadavg()[0]:.1f})")
        ours = run_child("tunery", args) if args.only != "trl" else None
        try:
            import trl  # noqa: F401
            have_trl = True
        except ImportError:
            have_trl = False
        theirs = None
        if args.only != "tunery":
            if have_trl:
                theirs = run_child("trl", args)
            else:
                print("TRL is not installed: skipping the baseline (pip install -e '.[bench]' -c constraints.txt, "
                      "or `make bench`)")
    if ours:
        ours["tok_s"] = ours["tokens"] / ours["seconds"]
        print(f"tunery: {ours['tokens']} tokens in {ours['seconds']:.1f}s = {ours['tok_s']:.0f} tok/s, "
              f"peak {ours['peak_mb']:.0f} MB")
    if theirs:
        tokens = ours["tokens"] if ours else None
        if tokens:
            theirs["tok_s"] = tokens / theirs["seconds"]
            print(f"TRL SFTTrainer: {theirs['seconds']:.1f}s = {theirs['tok_s']:.0f} tok/s (same tokens), "
                  f"peak {theirs['peak_mb']:.0f} MB")
            print(f"ratio tokens/s tunery/TRL: {ours['tok_s'] / theirs['tok_s']:.2f}x (goal >= 1.3x); "
                  f"peak memory tunery/TRL: {ours['peak_mb'] / theirs['peak_mb']:.2f}x (goal <= 1.0x)")
        else:
            print(f"TRL SFTTrainer: {theirs['seconds']:.1f}s, peak {theirs['peak_mb']:.0f} MB")
    return 0 if ours or args.only == "trl" else 1


if __name__ == "__main__":
    sys.exit(main())
