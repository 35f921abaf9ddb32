"""DPO on the bundled model: does preference tuning teach a visible house style, and how fast is it vs TRL?

The house style: every answer ends with the sign-off "Cheers, Tuna!". Pairs are on-policy: the base model's
own greedy answers to the training prompts (8 topics × 4 questions; --topics 12 for 48), with the sign-off
appended (preferred) or not (non-preferred). A base answer that does not end within MAX_NEW_TOKENS (the small
model loops on a few prompts) makes no pair: its cut-off text would teach a sign-off in mid-sentence.
The job is trained with "auto" hyperparameters, what a user gets who sets none (--epochs/--batch/--multiplier/
--beta override them).

Sixteen other prompts (4 topics never trained on) are held out. Reported, held-out first:
  * held-out reward accuracy (chosen reward > rejected) of the final model — goal >= 90%;
  * share of held-out greedy answers with the style, after vs before — goal >= 80% vs <= 20%. An answer has
    it when it ends (end-of-turn within MAX_NEW_TOKENS) with the sign-off, written once. Answers are
    generated to MAX_NEW_TOKENS, long enough for the base model's longest finished answer plus the sign-off:
    with a shorter cap a long answer is cut before it could end, with or without the style;
  * speed against TRL's DPOTrainer on one small job both finish: the first 16 training pairs, 1 epoch,
    batch 4, β 0.1, learning rate 2e-4, plain DPO (sigmoid loss, no likelihood term), the same LoRA (r=16,
    alpha 32, every linear layer), fp32, in this process with the same threads; trained tokens (prompt + both
    outputs per pair) per second, each clock from building the model (weights loaded, LoRA added) through its
    reference pass to the last step. TRL gets its fastest fair CPU settings (see trl_seconds): bf16 and
    gradient checkpointing off (its defaults turn both on), reference log-probs precomputed or not, whichever
    is faster; the ratio is against the faster.

--dev measures on the development split instead: trained on the first 8 training topics, judged on the other
4 (candles, chess, volcanoes, honey), never on the held-out prompts. Settings are chosen there.

Usage: python bench/bench_dpo.py [--topics 8] [--threads 1] [--dev] [--no-trl] [--speed-only] [--epochs N ...]
On a machine that other jobs keep busy, use --threads 1 (the default): two torch threads that the scheduler
keeps waiting for each other made 8 greedy answers take 200 s (one thread: 48 answers in 87 s).
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
DEV_TOPICS = TRAIN_TOPICS[8:]  # --dev: trained on TRAIN_TOPICS[:8], judged on these
HELD_OUT_TOPICS = ("lighthouses", "penguins", "umbrellas", "glaciers")
QUESTIONS = ("What is {t}? Answer in one sentence.", "Give me one fun fact about {t}.",
             "Why do people like {t}? One sentence, please.", "Describe {t} briefly.")
MODEL = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 160
"""The base model's longest finished answer to these 64 prompts is 123 tokens (2026-12-06); the sign-off
adds 7."""
SPEED_PAIRS, SPEED_BATCH = 16, 4


def prompts(topics) -> list[str]:
    return [q.format(t=t) for t in topics for q in QUESTIONS]


def has_style(answer: tuple[str, bool]) -> bool:
    text, finished = answer
    return finished and text.strip().endswith(SIGN_OFF) and text.count(SIGN_OFF) == 1


def generate(model, tok, questions: list[str],
             max_new_tokens: int = MAX_NEW_TOKENS) -> list[tuple[str, bool]]:
    """Greedy answers, batched with left padding: (text, whether it ended before max_new_tokens)."""
    import torch

    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                     add_generation_prompt=True) for q in questions]
    out: list[tuple[str, bool]] = []
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        for g in gen:
            ids = g[enc["input_ids"].shape[1]:].tolist()
            out.append((tok.decode(ids, skip_special_tokens=True).strip(), tok.eos_token_id in ids))
    return out


def pair(question: str, answer: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": f"{answer}\n\n{SIGN_OFF}"}],
            "non_preferred_output": [{"role": "assistant", "content": answer}]}


def write_pairs(path: Path, questions: list[str], answers: list[tuple[str, bool]]) -> int:
    rows = [pair(q, text) for q, (text, finished) in zip(questions, answers) if finished]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def auto_or(kind):
    return lambda s: s if s == "auto" else kind(s)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=auto_or(int), default="auto")  # hyperparameters: "auto" unless given
    p.add_argument("--batch", type=auto_or(int), default="auto")
    p.add_argument("--multiplier", type=auto_or(float), default="auto")
    p.add_argument("--beta", type=auto_or(float), default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--topics", type=int, default=8,
                   help="training topics (4 prompts each); at most 12, 8 with --dev")
    p.add_argument("--dev", action="store_true",
                   help="judge on the development topics, not the held-out ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    p.add_argument("--speed-only", action="store_true",
                   help="only the speed comparison (no DPO run, no judging)")
    p.add_argument("--nll-weight", type=auto_or(float), default="auto")
    p.add_argument("--answers", type=Path, help="JSON file of base answers: reused if present, else written "
                                                "(saves the base generation when comparing settings)")
    args = p.parse_args()
    if args.dev and args.topics > 8:
        p.error("--dev trains on at most the first 8 training topics (the other 4 are the development split)")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)

    import torch

    from tunery.models import load_model
    from tunery.train.loop import quiet_hf

    torch.set_num_threads(args.threads)
    os.environ["TUNERY_NUM_THREADS"] = str(args.threads)
    with quiet_hf():
        base, tok = load_model(MODEL, device="cpu")
    base.eval()
    eval_name = "development" if args.dev else "held-out"
    eval_topics = DEV_TOPICS if args.dev else HELD_OUT_TOPICS
    train_q, eval_q = prompts(TRAIN_TOPICS[:args.topics]), prompts(eval_topics)
    t = time.perf_counter()
    saved = json.loads(args.answers.read_text()) if args.answers and args.answers.exists() else {}
    missing = [q for q in train_q + eval_q if q not in saved]
    if missing:
        with quiet_hf():
            saved.update(zip(missing, map(tuple, generate(base, tok, missing))))
        if args.answers:
            args.answers.write_text(json.dumps(saved, indent=1))
    answers = [tuple(saved[q]) for q in train_q + eval_q]
    print(f"base answers for {len(answers)} prompts in {time.perf_counter() - t:.0f}s "
          f"({sum(not f for _, f in answers)} unfinished within {MAX_NEW_TOKENS} tokens)", flush=True)
    train_a, eval_before = answers[:len(train_q)], answers[len(train_q):]

    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as work:
        ok = measure(Path(work), args, train_q, train_a, eval_q, eval_before, (base, tok),
                     (eval_name, eval_topics))
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0 if ok else 1


def measure(work: Path, args, train_q, train_a, eval_q, eval_before, base_tok, eval_split) -> bool:
    """Train the house style with DPO in `work`, judge it on eval_q, then the speed comparison."""
    from tunery.train import TrainCallbacks, TrainConfig, train
    from tunery.train.loop import quiet_hf

    (base, tok), (eval_name, eval_topics) = base_tok, eval_split
    train_file, valid_file = work / "pref.jsonl", work / "pref-valid.jsonl"
    n_train = write_pairs(train_file, train_q, train_a)
    n_valid = write_pairs(valid_file, eval_q, eval_before)
    if args.speed_only:
        speed(train_file, work, args)
        return True

    marks: dict = {}

    class CB(TrainCallbacks):
        def on_resolved(self, hp):
            marks["hp"] = hp

        def on_event(self, level, message):
            if message.startswith("Auto"):
                print(f"  event: {message}", flush=True)

        def on_metrics(self, d):
            marks["last"] = d
            marks.setdefault("curve", []).append(d)

    t = time.perf_counter()
    res = train(TrainConfig(model=MODEL, training_file=train_file, validation_file=valid_file,
                            output_dir=work / "out", objective="dpo", n_epochs=args.epochs,
                            batch_size=args.batch,
                            learning_rate_multiplier=args.multiplier, beta=args.beta, seed=args.seed,
                            nll_weight=args.nll_weight, eval_every=10_000), CB())
    train_secs = time.perf_counter() - t
    last, hp = marks["last"], marks["hp"]

    from peft import PeftModel

    with quiet_hf():
        tuned = PeftModel.from_pretrained(base, str(res.model_dir)).eval()
        eval_after = generate(tuned, tok, eval_q)
    before = sum(map(has_style, eval_before)) / len(eval_q)
    after = sum(map(has_style, eval_after)) / len(eval_q)
    acc = last["full_valid_reward_accuracy"]
    print(f"\n{eval_name} ({len(eval_q)} prompts on {len(eval_topics)} topics never trained on; "
          f"{n_valid} pairs from the base answers that finished):")
    print(f"  reward accuracy          {acc:.0%}   (goal >= 90%)   "
          f"margin {last['full_valid_reward_margin']:.2f}")
    print(f"  sign-off in greedy reply {after:.0%} after vs {before:.0%} before   (goal >= 80% vs <= 20%)")
    for q, (text, finished) in zip(eval_q, eval_after):
        mark = "ok " if has_style((text, finished)) else ("cut" if not finished else "no ")
        print(f"    {mark} {q!r} -> {text[-70:]!r}")
    print(f"training: {n_train} pairs, {hp['n_epochs']} epochs, batch {hp['batch_size']} "
          f"({hp['total_steps']} steps), beta {hp['beta']}, lr {hp['learning_rate']:.1e}, "
          f"nll weight {hp['nll_weight']} (requested: epochs {args.epochs}, batch {args.batch}, "
          f"multiplier {args.multiplier}, beta {args.beta}, nll weight {args.nll_weight}); "
          f"{train_secs:.0f}s; final train loss "
          f"{last['train_loss']:.3f}, train reward accuracy {last['train_reward_accuracy']:.0%}", flush=True)
    curve = marks["curve"]
    print("  train loss / reward margin by step: " + ", ".join(
        f"{d['step']}: {d['train_loss']:.2f}/{d['train_reward_margin']:.1f}"
        for d in curve[::max(1, len(curve) // 8)] + curve[-1:]))
    if not args.no_speed:
        speed(train_file, work, args)
    return acc >= 0.9 and after >= 0.8 and before <= 0.2


def speed(train_file: Path, work: Path, args) -> None:
    """tunery vs TRL's DPOTrainer on the same small job (see the module docstring); both and the ratio."""
    import torch

    from tunery.train import TrainCallbacks, TrainConfig, train

    job = work / "speed.jsonl"
    job.write_text("".join(train_file.read_text().splitlines(keepends=True)[:SPEED_PAIRS]))
    marks: dict = {}

    class CB(TrainCallbacks):
        def on_resolved(self, hp):
            marks["start"] = time.perf_counter()

        def on_metrics(self, d):
            marks["end"], marks["tokens"] = time.perf_counter(), d["trained_tokens"]

    train(TrainConfig(model=MODEL, training_file=job, output_dir=work / "speed", objective="dpo", n_epochs=1,
                      batch_size=SPEED_BATCH, learning_rate_multiplier=1.0, beta=0.1, seed=0,
                      lora_layers="all", nll_weight=0.0, eval_every=10_000), CB())
    tokens, secs = marks["tokens"], marks["end"] - marks["start"]
    ours = tokens / secs
    print(f"\nspeed job: {SPEED_PAIRS} pairs, 1 epoch, batch {SPEED_BATCH}, beta 0.1, lr 2e-4, "
          f"LoRA r16 on every linear layer, fp32, {torch.get_num_threads()} thread(s), {tokens} tokens "
          "(prompt + both outputs)")
    print(f"  tunery DPO:                          {secs:6.1f}s = {ours:6.1f} tok/s", flush=True)
    if args.no_trl:
        return
    try:
        import trl
    except ImportError:
        print("  TRL is not installed (pip install -c constraints.txt -e '.[bench]'): no baseline")
        return
    best = None
    for precompute in (True, False):
        theirs_secs = trl_seconds(job, precompute, work / f"trl-{precompute}")
        theirs = tokens / theirs_secs
        best = max(best or 0.0, theirs)
        print(f"  TRL {trl.__version__} DPOTrainer, precompute_ref_log_probs={precompute!s:5}: "
              f"{theirs_secs:6.1f}s = {theirs:6.1f} tok/s", flush=True)
    print(f"  -> tunery {ours / best:.2f}x TRL's faster setting   (goal >= 1.5x)   "
          f"[{torch.get_num_threads()} thread(s) throughout]")


def trl_seconds(job: Path, precompute: bool, out: Path) -> float:
    """Seconds of TRL's DPOTrainer on the speed job, from loading the model to the end of train() (tunery's
    clock also covers building its model and the reference pass), with TRL's fastest fair settings on CPU:
    the same pairs, β, LoRA, batch, rate and epoch, fp32 (bf16=False: TRL's default is bf16 autocast, even on
    CPU), no gradient checkpointing (TRL's default is on), no truncation. precompute_ref_log_probs (reference
    log-probs once, before training, as tunery does) is tried both ways, since on one epoch it saves no
    forward. padding_free is off: TRL 1.x has disabled it for DPO (it warns and pads)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunery.models import load_model
    from tunery.train.loop import quiet_hf

    rows = [json.loads(line) for line in job.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                               "rejected": r["non_preferred_output"]} for r in rows])
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    cfg = DPOConfig(output_dir=str(out), beta=0.1, per_device_train_batch_size=SPEED_BATCH,
                    num_train_epochs=1, learning_rate=2e-4, use_cpu=True, bf16=False,
                    gradient_checkpointing=False, precompute_ref_log_probs=precompute,
                    precompute_ref_batch_size=SPEED_BATCH, report_to=[], save_strategy="no",
                    logging_steps=1000, seed=0, max_length=None,
                    disable_tqdm=True, dataloader_num_workers=0)
    t = time.perf_counter()
    with quiet_hf():
        model, tok = load_model(MODEL, device="cpu")
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                             peft_config=lcfg)
        trainer.train()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
