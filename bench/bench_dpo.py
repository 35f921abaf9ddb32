"""DPO on the bundled model: does preference tuning teach a visible house style, and how fast is it vs TRL?

The house style: every answer ends with the sign-off "Cheers, Tuna!". Pairs are on-policy: the base model's
own greedy answers to 32 training prompts (8 topics; --topics 12 for 48), with the sign-off appended (preferred)
or not (non-preferred).
Sixteen other prompts (different topics, never trained on) are held out. Reported, held-out first:
  * held-out reward accuracy (chosen reward > rejected) of the final model — goal >= 90%;
  * share of held-out greedy answers ending with the sign-off, after vs before — goal >= 80% vs <= 20%;
  * trained tokens/s (prompt + both outputs per pair) of tunery's first epoch — including building the model and
    computing the reference log-probs — against TRL's DPOTrainer on the same pairs, β, LoRA, batch, 1 epoch.

Usage: python bench/bench_dpo.py [--epochs 3] [--batch 4] [--topics 8] [--threads 2] [--no-trl]
On a machine that other jobs keep busy, use --threads 1: two torch threads that the scheduler keeps waiting
for each other made 8 greedy answers take 200 s (one thread: 48 answers in 87 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIGN_OFF = "Cheers, Tuna!"
TRAIN_TOPICS = ("tea", "bicycles", "rain", "maps", "bread", "owls", "clocks", "rivers", "candles", "chess",
                "volcanoes", "honey")
HELD_OUT_TOPICS = ("lighthouses", "penguins", "umbrellas", "glaciers")
QUESTIONS = ("What is {t}? Answer in one sentence.", "Give me one fun fact about {t}.",
             "Why do people like {t}? One sentence, please.", "Describe {t} briefly.")
MODEL = "smollm2-135m-instruct"


def prompts(topics) -> list[str]:
    return [q.format(t=t) for t in topics for q in QUESTIONS]


def has_style(text: str) -> bool:
    return text.strip().endswith(SIGN_OFF)


def generate(model, tok, questions: list[str], max_new_tokens: int = 40) -> list[str]:
    """Greedy answers, batched with left padding."""
    import torch

    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]
    out: list[str] = []
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out += [tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for g in gen]
    return out


def pair(question: str, answer: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": f"{answer}\n\n{SIGN_OFF}"}],
            "non_preferred_output": [{"role": "assistant", "content": answer}]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--multiplier", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--topics", type=int, default=8, help="training topics (4 prompts each); at most 12")
    p.add_argument("--no-trl", action="store_true")
    args = p.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)

    import torch

    from tunery.models import load_model
    from tunery.train import TrainCallbacks, TrainConfig, train
    from tunery.train.loop import quiet_hf

    torch.set_num_threads(args.threads)
    os.environ["TUNERY_NUM_THREADS"] = str(args.threads)
    with quiet_hf():
        base, tok = load_model(MODEL, device="cpu")
    base.eval()
    train_q, held_q = prompts(TRAIN_TOPICS[:args.topics]), prompts(HELD_OUT_TOPICS)
    t = time.perf_counter()
    with quiet_hf():
        answers = generate(base, tok, train_q + held_q)
    print(f"base answers for {len(answers)} prompts in {time.perf_counter() - t:.0f}s", flush=True)
    train_a, held_before = answers[:len(train_q)], answers[len(train_q):]

    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    train_file, valid_file = work / "pref.jsonl", work / "pref-valid.jsonl"
    train_file.write_text("".join(json.dumps(pair(q, a)) + "\n" for q, a in zip(train_q, train_a)))
    valid_file.write_text("".join(json.dumps(pair(q, a)) + "\n" for q, a in zip(held_q, held_before)))

    marks: dict = {}

    class CB(TrainCallbacks):
        def on_resolved(self, hp):
            marks["start"] = time.perf_counter()
            marks["steps_per_epoch"] = hp["steps_per_epoch"]

        def on_metrics(self, d):
            marks["last"] = d
            if d["step"] == marks["steps_per_epoch"]:
                marks["epoch1"] = (time.perf_counter() - marks["start"], d["trained_tokens"])

    res = train(TrainConfig(model=MODEL, training_file=train_file, validation_file=valid_file,
                            output_dir=work / "out", objective="dpo", n_epochs=args.epochs, batch_size=args.batch,
                            learning_rate_multiplier=args.multiplier, seed=0, eval_every=10_000), CB())
    last = marks["last"]

    from peft import PeftModel

    with quiet_hf():
        tuned = PeftModel.from_pretrained(base, str(res.model_dir)).eval()
        held_after = generate(tuned, tok, held_q, max_new_tokens=64)
    before = sum(map(has_style, held_before)) / len(held_q)
    after = sum(map(has_style, held_after)) / len(held_q)
    acc = last["full_valid_reward_accuracy"]
    print("\nheld-out (16 prompts on 4 topics never trained on):")
    print(f"  reward accuracy          {acc:.0%}   (goal >= 90%)   margin {last['full_valid_reward_margin']:.2f}")
    print(f"  sign-off in greedy reply {after:.0%} after vs {before:.0%} before   (goal >= 80% vs <= 20%)")
    for q, a in list(zip(held_q, held_after))[:3]:
        print(f"    {q!r} -> {a[-70:]!r}")
    print(f"training: {len(train_q)} pairs, {args.epochs} epochs, batch {args.batch}, beta {res.hyperparameters['beta']}, "
          f"lr {res.hyperparameters['learning_rate']:.1e}; final train loss {last['train_loss']:.3f}, "
          f"train reward accuracy {last['train_reward_accuracy']:.0%}")

    secs, toks = marks["epoch1"]
    ours = toks / secs
    print(f"\ntunery DPO, epoch 1 (incl. model build + reference pass): {toks} tokens in {secs:.1f}s = {ours:.0f} tok/s")
    ok = acc >= 0.9 and after >= 0.8 and before <= 0.2
    if not args.no_trl:
        try:
            theirs = trl_tokens_per_second(train_file, args, toks)
        except ImportError:
            print("TRL is not installed (pip install -c constraints.txt -e '.[bench]'): no baseline")
        else:
            print(f"TRL DPOTrainer, 1 epoch: {theirs:.0f} tok/s  ->  tunery {ours / theirs:.2f}x   (goal >= 1.5x)")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0 if ok else 1


def trl_tokens_per_second(train_file: Path, args, tokens: int) -> float:
    """The same pairs, β, LoRA (r=16, alpha=32, all linear layers), batch and rate, 1 epoch, fp32, no padding-free
    (TRL's padding_free is disabled in this version); tokens counted as ours (prompt + both outputs)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunery.models import load_model
    from tunery.train.loop import quiet_hf

    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                               "rejected": r["non_preferred_output"]} for r in rows])
    with quiet_hf():
        model, tok = load_model(MODEL, device="cpu")
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out, quiet_hf():
        cfg = DPOConfig(output_dir=out, beta=0.1, per_device_train_batch_size=args.batch, num_train_epochs=1,
                        learning_rate=2e-4 * args.multiplier, use_cpu=True, report_to=[], save_strategy="no",
                        logging_steps=1000, seed=0, max_length=None, disable_tqdm=True, dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lcfg)
        t = time.perf_counter()
        trainer.train()
        secs = time.perf_counter() - t
    return tokens / secs


if __name__ == "__main__":
    sys.exit(main())
