"""Inference engine speed on the bundled SmolLM2-135M-Instruct, each number against a baseline from this run:

1. single-request decode tokens/s vs plain transformers `generate` (fp32, the default), also showing
   generate in bf16 and with a static KV cache (goal: engine >= 1.0x plain generate);
2. aggregate tokens/s of 8 concurrent requests vs the same 8 one after another (goal: >= 3x);
3. latency cost of serving from 10 different LoRA adapters vs one (goal: < 20%), both for requests one
   after another and for 10 requests at once (one shared batch, 10 adapters in it);
4. constrained decoding (JSON mode) cost per token: xgrammar vs lm-format-enforcer (if installed).

The machine is shared: run it when nothing else is busy, or read the ratios, not the absolute numbers.
Usage: python bench/bench_inference.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUICK = "--quick" in sys.argv
TOKENS = 32 if QUICK else 64
MSG = [{"role": "user", "content": "Write a long story about a cat who learns to fly."}]


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


def goal(ratio: float, target: float, higher: bool = True) -> str:
    ok = ratio >= target if higher else ratio < target
    return "meets goal" if ok else "BELOW GOAL"


def bench_generate(model_dir: Path, dtype, cache: str | None) -> float:
    """generate's tokens/s, run on a worker thread like the engine's loop: on a busy machine torch in the
    main thread can be several times slower than in a fresh thread, which would flatter the engine."""
    import threading

    out: list = []
    t = threading.Thread(target=lambda: out.append(_generate_speed(model_dir, dtype, cache)))
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _generate_speed(model_dir: Path, dtype, cache: str | None):
    try:
        return _generate_speed_inner(model_dir, dtype, cache)
    except Exception as exc:  # handed to the caller's thread
        return exc


def _generate_speed_inner(model_dir: Path, dtype, cache: str | None) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    ids = tok(tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True), return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    kw = dict(do_sample=False, pad_token_id=tok.eos_token_id)
    if cache:
        kw["cache_implementation"] = cache
    best = 0.0
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
        for _ in range(2):  # best of two: the first long run in a process is often slow (allocator warm-up)
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=TOKENS, min_new_tokens=TOKENS, **kw)
            best = max(best, TOKENS / (time.perf_counter() - t))
    return best


def engine_single(engine, model: str) -> float:
    engine.generate(model, messages=MSG, max_tokens=8, temperature=0, ignore_eos=True).result()
    best = 0.0
    for _ in range(2):  # measured exactly like the baseline: best of two
        t = time.perf_counter()
        _, usage = engine.generate(model, messages=MSG, max_tokens=TOKENS, temperature=0, ignore_eos=True).result()
        assert usage.completion_tokens == TOKENS
        best = max(best, TOKENS / (time.perf_counter() - t))
    return best


def make_adapters(base_dir: Path, out: Path, count: int) -> list[Path]:
    """`count` LoRA adapters shaped like the trainer's (r=16, all linear layers), random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    dirs = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.01)
        d = out / f"adapter{i}"
        peft_model.save_pretrained(d)
        (d / "tunery.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct"}))
        dirs.append(d)
    return dirs


def timed_batch(engine, models, prompts, n_tokens) -> float:
    t = time.perf_counter()
    gens = [engine.generate(m, messages=p, max_tokens=n_tokens, temperature=0, ignore_eos=True)
            for m, p in zip(models, prompts)]
    for g in gens:
        g.result()
    return time.perf_counter() - t


def timed_sequential(engine, models, prompts, n_tokens) -> float:
    t = time.perf_counter()
    for m, p in zip(models, prompts):
        engine.generate(m, messages=p, max_tokens=n_tokens, temperature=0, ignore_eos=True).result()
    return time.perf_counter() - t


def bench_grammar(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from tunery.inference.grammar import GrammarFactory

    tok = AutoTokenizer.from_pretrained(model_dir)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age", "tags"]}
    target = json.dumps({"name": "Luna the flying cat", "age": 7, "tags": ["cat", "sky", "story"]})
    ids = tok(target, add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id]
    t = time.perf_counter()
    g = GrammarFactory(tok, len(tok), eos)
    compiled = g.compile(schema)
    setup = time.perf_counter() - t
    m = g.matcher(compiled)
    mask = g.bitmask(1)
    t = time.perf_counter()
    for tid in ids:
        m.fill_next_token_bitmask(mask, 0)
        assert m.accept_token(tid)
    xg = (time.perf_counter() - t) / len(ids) * 1000
    line("JSON mode, xgrammar: setup (tokenizer + schema)", f"{setup:.2f} s")
    line("JSON mode, xgrammar: token mask per step", f"{xg:.3f} ms")
    try:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer
        from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData
    except ImportError:
        line("JSON mode, lm-format-enforcer", "not installed (pip install lm-format-enforcer to compare)")
        return
    t = time.perf_counter()
    # Its transformers integration does not import on transformers 5 (a point against it); build its
    # tokenizer data the way that integration does.
    zero = tok.encode("0")[-1]
    special = set(tok.all_special_ids)
    regular = []
    for i in range(len(tok)):
        if i not in special:
            after0 = tok.decode([zero, i])[1:]
            regular.append((i, after0, len(after0) > len(tok.decode([i]))))
    data = TokenEnforcerTokenizerData(regular, lambda t: tok.decode(t).rstrip("\ufffd"), tok.eos_token_id,
                                      False, len(tok))
    enforcer = TokenEnforcer(data, JsonSchemaParser(schema))
    setup = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(ids)):
        allowed = enforcer.get_allowed_tokens(ids[:i])
        allowed = getattr(allowed, "allowed_tokens", allowed)
        assert ids[i] in allowed
    lm = (time.perf_counter() - t) / len(ids) * 1000
    line("JSON mode, lm-format-enforcer: setup", f"{setup:.2f} s")
    line("JSON mode, lm-format-enforcer: allowed tokens per step", f"{lm:.3f} ms  ({lm / max(xg, 1e-6):.0f}x xgrammar)")


def main() -> int:
    import torch

    from dataclasses import replace

    from tunery.inference import Engine, Servable
    from tunery.models import materialize, setup_threads
    from tunery.settings import get_settings

    threads = setup_threads()
    model_dir = materialize("smollm2-135m-instruct")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bundled SmolLM2-135M-Instruct, {threads} torch threads, load average {load:.1f} "
          f"({'quick' if QUICK else f'{TOKENS} tokens per request'})", flush=True)
    t0 = time.perf_counter()

    print("\n1. single-request decode, greedy", flush=True)
    base = bench_generate(model_dir, torch.float32, None)
    line("transformers generate, fp32 (baseline)", f"{base:6.1f} tok/s")
    for label, dtype, cache in [("generate, bf16", torch.bfloat16, None),
                                ("generate, fp32, static KV cache", torch.float32, "static"),
                                ("generate, bf16, static KV cache", torch.bfloat16, "static")]:
        try:
            v = bench_generate(model_dir, dtype, cache)
            line(f"transformers {label}", f"{v:6.1f} tok/s  {v / base:.2f}x")
        except Exception as exc:  # a variant this transformers cannot do is reported, not fatal
            line(f"transformers {label}", f"failed: {type(exc).__name__}: {exc}"[:80])
    results = {}
    for dtype in ("float32", "auto"):
        engine = Engine(config=replace(get_settings().inference, dtype=dtype, max_batch=16, max_adapters=16))
        try:
            results[dtype] = engine_single(engine, "smollm2-135m-instruct")
            label = f"tunery engine, {engine._dtype()}".replace("torch.", "")
            if dtype == "auto":
                label += " (default: auto)"
            line(label, f"{results[dtype]:6.1f} tok/s  {results[dtype] / base:.2f}x")
        finally:
            if dtype != "auto":
                engine.close()
    r = results["auto"] / base
    line("=> engine (default dtype) vs plain generate", f"{r:.2f}x  (goal >= 1.0x: {goal(r, 1.0)})")

    print("\n2. 8 concurrent requests vs the same 8 one after another (engine, default dtype)", flush=True)
    n_tok = TOKENS // 2
    prompts = [[{"role": "user", "content": f"Tell me a fact about the number {i}."}] for i in range(8)]
    models = ["smollm2-135m-instruct"] * 8
    seq = timed_sequential(engine, models, prompts, n_tok)
    conc = timed_batch(engine, models, prompts, n_tok)
    line("sequential", f"{8 * n_tok / seq:6.1f} tok/s aggregate ({seq:.1f} s)")
    line("concurrent (continuous batching)", f"{8 * n_tok / conc:6.1f} tok/s aggregate ({conc:.1f} s)")
    r = seq / conc
    line("=> concurrent vs sequential", f"{r:.2f}x  (goal >= 3x: {goal(r, 3.0)})")

    print("\n3. 10 different LoRA adapters vs 1 (r=16, all linear layers)", flush=True)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp:
        dirs = make_adapters(model_dir, Path(tmp), 10)
        ads = [Servable(f"ft:bench{i}", "smollm2-135m-instruct", d) for i, d in enumerate(dirs)]
        n_tok = TOKENS // 4 if QUICK else 24
        prompts = [[{"role": "user", "content": f"Say hello to friend number {i}."}] for i in range(10)]
        t = time.perf_counter()
        timed_batch(engine, ads, prompts, 1)  # first use: load all 10 in the background
        line("loading 10 adapters (first request for each)", f"{time.perf_counter() - t:.1f} s")
        # Interleaved (1-adapter run, then 10-adapter run, ...) so load changes on a shared machine hit both alike.
        one = ten = 0.0
        for i in range(10):
            one += timed_sequential(engine, [ads[0]], prompts[i:i + 1], n_tok)
            ten += timed_sequential(engine, [ads[i]], prompts[i:i + 1], n_tok)
        r = ten / one - 1
        line("one after another: 10 requests on 1 adapter", f"{one / 10 * 1000:7.0f} ms per request")
        line("one after another: 10 requests on 10 adapters", f"{ten / 10 * 1000:7.0f} ms per request")
        line("=> latency cost of 10 adapters (sequential)", f"{r * 100:+.1f}%  (goal < 20%: {goal(r, 0.2, False)})")
        one_b = ten_b = float("inf")
        for _ in range(2):  # best of two each, interleaved
            one_b = min(one_b, timed_batch(engine, [ads[0]] * 10, prompts, n_tok))
            ten_b = min(ten_b, timed_batch(engine, ads, prompts, n_tok))
        r = ten_b / one_b - 1
        line("at once: 10 requests on 1 adapter (one batch)", f"{one_b * 1000:7.0f} ms")
        line("at once: 10 requests on 10 adapters (one batch)", f"{ten_b * 1000:7.0f} ms")
        line("=> latency cost of 10 adapters (batched)", f"{r * 100:+.1f}%  (goal < 20%: {goal(r, 0.2, False)})")
        base_b = timed_batch(engine, models[:1] * 10, prompts, n_tok)
        line("at once: 10 requests on the base model (reference)", f"{base_b * 1000:7.0f} ms")
    engine.close()

    print("\n4. constrained decoding (JSON schema) per-token cost", flush=True)
    bench_grammar(model_dir)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
