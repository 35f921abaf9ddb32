"""Inference backends through tunery's HTTP API, each ratio against a baseline measured in this run
(bundled SmolLM2-135M-Instruct, Q4_1 GGUF on llama.cpp, greedy):

1. single-stream decode tokens/s and time to first token, streamed over /v1/chat/completions on the
   llama.cpp backend vs raw llama.cpp without tunery (an `xllamacpp.Server` started here with the same
   settings, the same prompt token ids POSTed to its own /v1/completions; goal: overhead <= 10%) and
   vs tunery's torch engine through the same API (goal: >= 3x);
2. 8 concurrent requests vs the same 8 one after another, llama.cpp backend through the API (goal >= 4x),
   beside the same ratio of the raw llama.cpp server (what the hardware and the engine allow);
3. 8 concurrent requests spread over 4 LoRA adapters (r=16, all linear layers, 2 requests each) vs the
   same 8 one after another (goal >= 2.5x), beside the raw server's ratio with the same 4 adapters.

The torch engine's server runs beside the llama.cpp one and its requests are interleaved with theirs.
Decode speed is (completion tokens - 1) / (last token time - first token time), from the streamed
usage; the server runs in this process (uvicorn on a thread) like the API tests. Runs are interleaved
(raw, API, raw, API, ...) and the best of each is kept, so load changes on a shared machine hit both.
4. the vLLM backend (when `make vllm` installed it): single-stream decode and time to first token through the
   API vs the same vLLM server asked directly (token ids to its own /v1/completions: tunery's overhead),
   and 8 concurrent over 4 adapters vs the same 8 one after another (vLLM batches mixed adapters).
Usage: python bench/bench_backends.py [--quick] [--vllm-only | --no-vllm]
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
if (HERE.parent / ".cache" / "models").is_dir():  # the checkout's converted-model cache, not a fresh one
    os.environ.setdefault("TUNERY_MODEL_CACHE", str(HERE.parent / ".cache" / "models"))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

QUICK = "--quick" in sys.argv
VLLM_ONLY = "--vllm-only" in sys.argv
NO_VLLM = "--no-vllm" in sys.argv
TOKENS = 48 if QUICK else 128
ROUNDS = 2 if QUICK else 3
BASE = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "Write a long story about a cat who learns to fly."}]


def line(label: str, value: str) -> None:
    print(f"  {label:<62} {value}", flush=True)


def goal(ratio: float, target: float, higher: bool = True) -> str:
    ok = ratio >= target if higher else ratio <= target
    return "meets goal" if ok else "BELOW GOAL"


def uptime() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f}, {b:.2f}, {c:.2f}"


def stream_timing(client, url: str, body: dict) -> tuple[float, float, int]:
    """POST a streamed request → (time to first token s, decode tok/s, completion tokens)."""
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.read()[:300]!r}")
        for raw in r.iter_lines():
            if not raw.startswith("data: ") or raw == "data: [DONE]":
                continue
            chunk = json.loads(raw[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                text = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
    if first is None or tokens < 2:
        raise RuntimeError(f"{url}: no tokens streamed")
    return first - t0, (tokens - 1) / max(last - first, 1e-9), tokens


def encode(tok, messages) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def api_body(model: str, messages, max_tokens: int) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def chat_once(url: str, model: str, messages, max_tokens: int) -> int:
    import httpx

    r = httpx.post(url + "/v1/chat/completions", timeout=600, json={
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def sequential(url, jobs) -> tuple[float, int]:
    t = time.perf_counter()
    n = sum(chat_once(url, m, p, k) for m, p, k in jobs)
    return time.perf_counter() - t, n


def concurrent(url, jobs) -> tuple[float, int]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        t = time.perf_counter()
        n = sum(pool.map(lambda j: chat_once(url, *j), jobs))
        return time.perf_counter() - t, n


def raw_once(url: str, ids: list[int], max_tokens: int, lora: list[dict] | None = None) -> int:
    """One greedy request to the raw llama.cpp server, with the sampler settings tunery sends."""
    import httpx

    body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "cache_prompt": True, "top_k": 0,
            "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}
    if lora is not None:
        body["lora"] = lora
    r = httpx.post(url + "/v1/completions", timeout=600, json=body)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def seq_vs_conc(label: str, api_url: str, api_jobs, raw_url: str, raw_jobs, target: float) -> None:
    """The same jobs one after another and all at once, on tunery's API and on the raw server, interleaved
    (raw, API, raw, API), printed as aggregate tok/s and the two ratios."""
    raw_seq = timed(lambda: sum(raw_once(raw_url, *j) for j in raw_jobs))
    api_seq = timed(lambda: sequential(api_url, api_jobs)[1])
    raw_conc = timed(lambda: fan_out(lambda j: raw_once(raw_url, *j), raw_jobs))
    api_conc = timed(lambda: fan_out(lambda j: chat_once(api_url, *j), api_jobs))
    for name, seq, conc in (("raw llama.cpp", raw_seq, raw_conc), ("tunery API", api_seq, api_conc)):
        line(f"{name}: sequential / concurrent", f"{seq:6.1f} / {conc:6.1f} tok/s aggregate")
    raw_r, api_r = raw_conc / raw_seq, api_conc / api_seq
    line(f"=> raw llama.cpp, {label}", f"{raw_r:.2f}x  (what this machine and engine allow)")
    line(f"=> tunery API, {label}", f"{api_r:.2f}x  (goal >= {target:g}x: {goal(api_r, target)}; "
                                        f"{api_r / raw_r:.0%} of raw)")
    print(f"  [{uptime()}]", flush=True)


def timed(fn) -> float:
    """Aggregate tok/s of `fn` (which returns the completion tokens it got)."""
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def fan_out(fn, jobs) -> int:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        return sum(pool.map(fn, jobs))


def raw_llamacpp(gguf: Path, threads: int, max_batch: int, adapters: list[Path] = ()):
    """llama.cpp's server through xllamacpp, set up as the backend sets up its instances (no tunery)."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(gguf)
    p.n_parallel = max_batch
    p.kv_unified = True
    p.n_ctx = 16384
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.cpuparams.poll = p.cpuparams_batch.poll = 0  # as the backend (--poll 0)
    p.verbosity = -1
    p.warmup = False
    p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(a), 0.0) for a in adapters]
    p.lora_init_without_apply = True
    return xllamacpp.Server(p)


def start(home: Path, backend: str):
    from test_api_support import start_server
    from tunery.inference.router import Router
    from tunery.settings import Settings

    settings = Settings.from_env(home=home)
    srv = start_server(settings)
    srv.app.state.engine = Router(settings, backend=backend)
    return srv


def main() -> int:
    import warnings

    import httpx
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from bench_inference import make_adapters
    from tunery.inference.convert import base_gguf
    from tunery.models import load_tokenizer, materialize, setup_threads
    from tunery.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="tunery-bench-backends-"))
    atexit.register(shutil.rmtree, home, True)  # however the run ends
    os.environ["TUNERY_HOME"] = str(home)
    settings = Settings.from_env(home=home)
    threads = setup_threads(settings.compute.num_threads)
    cfg = settings.inference  # (EngineConfig is gone: its fields are InferenceSettings now)
    print(f"bundled {BASE}, {threads} threads, {TOKENS} tokens per single request; {uptime()}", flush=True)
    t_all = time.perf_counter()

    tok = load_tokenizer(BASE, settings)
    ids = encode(tok, MSG)
    gguf = base_gguf(BASE, settings)

    if VLLM_ONLY:
        return bench_vllm(home, settings, ids, t_all)
    print("\n1. single-stream decode, greedy, streamed", flush=True)
    raw = raw_llamacpp(gguf, threads, cfg.max_batch)
    raw_url = raw.listening_address + "/v1/completions"
    raw_body = {"prompt": ids, "max_tokens": TOKENS, "temperature": 0, "stream": True, "cache_prompt": True,
                "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
    srv = start(home, "llamacpp")
    tsrv = start(home / "torch", "torch")
    api_url = srv.url + "/v1/chat/completions"
    torch_url = tsrv.url + "/v1/chat/completions"
    runs = [("raw", raw_url, raw_body), ("api", api_url, api_body(BASE, MSG, TOKENS)),
            ("torch", torch_url, api_body(BASE, MSG, TOKENS))]
    best = {k: (1e9, 0.0) for k, _, _ in runs}
    tokens = {}
    with httpx.Client(timeout=600) as c:
        for key, url, body in runs:  # warm-up: load, first graph
            stream_timing(c, url, dict(body, max_tokens=8))
        for _ in range(ROUNDS):
            for key, url, body in runs:
                ttft, rate, n = stream_timing(c, url, body)
                tokens[key] = n
                b = best[key]
                best[key] = (min(b[0], ttft), max(b[1], rate))
    tsrv.stop()
    tsrv.app.state.engine.close()
    line(f"raw llama.cpp (xllamacpp server, no tunery), {tokens['raw']} tokens", f"{best['raw'][1]:6.1f} tok/s")
    line(f"tunery API, llama.cpp backend, {tokens['api']} tokens", f"{best['api'][1]:6.1f} tok/s")
    over = best["raw"][1] / best["api"][1] - 1
    line("=> tunery overhead vs raw llama.cpp (decode)", f"{over * 100:+.1f}%  (goal <= 10%: {goal(over, 0.10, False)})")
    line(f"tunery API, torch engine (default dtype), {tokens['torch']} tokens", f"{best['torch'][1]:6.1f} tok/s")
    r = best["api"][1] / best["torch"][1]
    line("=> llama.cpp backend vs torch engine (decode, API)", f"{r:.2f}x  (goal >= 3x: {goal(r, 3.0)})")
    line("time to first token: raw llama.cpp", f"{best['raw'][0] * 1000:6.0f} ms")
    line("time to first token: tunery API, llama.cpp backend", f"{best['api'][0] * 1000:6.0f} ms")
    line("time to first token: tunery API, torch engine", f"{best['torch'][0] * 1000:6.0f} ms")
    print(f"  [{uptime()}]", flush=True)

    # 2 and 3 on the same llama.cpp server (before the torch one: one heavy thing at a time).
    print("\n2. 8 concurrent vs the same 8 one after another (llama.cpp backend; raw server beside)",
          flush=True)
    n_tok = 32 if QUICK else 64
    prompts = [[{"role": "user", "content": f"Tell me a long story about the number {i}."}] for i in range(8)]
    prompt_ids = [encode(tok, p) for p in prompts]
    seq_vs_conc("8 concurrent vs sequential", srv.url, [(BASE, p, n_tok) for p in prompts],
                raw.listening_address, [(i, n_tok) for i in prompt_ids], 4.0)
    raw = None  # its destructor stops the raw server

    print("\n3. 8 concurrent over 4 LoRA adapters vs the same 8 one after another (llama.cpp backend; "
          "raw server with the same 4 adapters beside)", flush=True)
    from tunery.inference.convert import LORA_GGUF
    from tunery.store import ensure_org, register_model

    dirs = make_adapters(materialize(BASE, settings), home / "adapters", 4)
    org = ensure_org(srv.store, "personal")
    names = []
    for i, d in enumerate(dirs):
        name = f"ft:{BASE}:personal:bench{i}:abcd000{i}"
        register_model(srv.store, org, model_id=name, base_model=BASE, job_id=None, path=d)
        names.append(name)
    t = time.perf_counter()
    for name in names:  # first use: conversion to GGUF and one new instance per new adapter
        chat_once(srv.url, name, MSG, 1)
    line("first request for each of 4 adapters (convert + new instance)", f"{time.perf_counter() - t:.1f} s")
    raw = raw_llamacpp(gguf, threads, cfg.max_batch, [d / LORA_GGUF for d in dirs])
    lora = [[{"id": k, "scale": 1.0 if k == i % 4 else 0.0} for k in range(4)] for i in range(8)]
    raw_once(raw.listening_address, prompt_ids[0], 1, lora[0])  # warm-up
    seq_vs_conc("8 concurrent over 4 adapters vs sequential", srv.url,
                [(names[i % 4], p, n_tok) for i, p in enumerate(prompts)],
                raw.listening_address, [(ids_, n_tok, lora[i]) for i, ids_ in enumerate(prompt_ids)], 2.5)
    raw = None
    srv.stop()
    srv.app.state.engine.close()
    return bench_vllm(home, settings, ids, t_all)


def bench_vllm(home: Path, settings, ids: list[int], t_all: float) -> int:
    import httpx

    from bench_inference import make_adapters
    from tunery.inference.vllm import available
    from tunery.models import materialize
    from tunery.store import ensure_org, register_model

    print("\n4. vLLM backend (its OpenAI server from .venv-vllm), greedy, streamed", flush=True)
    if NO_VLLM:
        print("  skipped (--no-vllm)", flush=True)
    elif not available(settings):
        print("  vLLM is not installed (make vllm): no rows", flush=True)
    else:
        srv = start(home / "vllm", "vllm")
        t = time.perf_counter()
        m = srv.app.state.engine.prepare(BASE).backend
        line("vLLM server start (bundled model)", f"{time.perf_counter() - t:.0f} s")
        runs = [("raw", m.url + "/v1/completions", {"model": "base", "prompt": ids, "max_tokens": TOKENS,
                                                     "temperature": 0, "stream": True,
                                                     "stream_options": {"include_usage": True}}),
                ("api", srv.url + "/v1/chat/completions", api_body(BASE, MSG, TOKENS))]
        best = {k: (1e9, 0.0) for k, _, _ in runs}
        with httpx.Client(timeout=900) as c:
            for key, url, body in runs:
                stream_timing(c, url, dict(body, max_tokens=8))
            for _ in range(ROUNDS):
                for key, url, body in runs:
                    ttft, rate, _n = stream_timing(c, url, body)
                    best[key] = (min(best[key][0], ttft), max(best[key][1], rate))
        line("raw vLLM (its server, no tunery)", f"{best['raw'][1]:6.1f} tok/s, first token {best['raw'][0] * 1000:.0f} ms")
        line("tunery API, vLLM backend", f"{best['api'][1]:6.1f} tok/s, first token {best['api'][0] * 1000:.0f} ms")
        over = best["raw"][1] / best["api"][1] - 1
        line("=> tunery overhead vs raw vLLM (decode)", f"{over * 100:+.1f}%  (goal <= 10%: {goal(over, 0.10, False)})")
        n_tok = 32 if QUICK else 64
        dirs = make_adapters(materialize(BASE, settings), home / "vllm-adapters", 4)
        org = ensure_org(srv.store, "personal")
        names = []
        for i, d in enumerate(dirs):
            names.append(f"ft:{BASE}:personal:vbench{i}:abcd000{i}")
            register_model(srv.store, org, model_id=names[-1], base_model=BASE, job_id=None, path=d)
        t = time.perf_counter()
        for name in names:
            chat_once(srv.url, name, MSG, 1)
        line("first request for each of 4 adapters (runtime load)", f"{time.perf_counter() - t:.1f} s")
        prompts = [[{"role": "user", "content": f"Tell me a long story about the number {i}."}] for i in range(8)]
        jobs = [(names[i % 4], p, n_tok) for i, p in enumerate(prompts)]
        seq, n_seq = sequential(srv.url, jobs)
        conc, n_conc = concurrent(srv.url, jobs)
        r = (n_conc / conc) / (n_seq / seq)
        line("sequential, 4 adapters", f"{n_seq / seq:6.1f} tok/s aggregate ({seq:.1f} s, {n_seq} tokens)")
        line("concurrent, 4 adapters x 2 requests", f"{n_conc / conc:6.1f} tok/s aggregate ({conc:.1f} s)")
        line("=> concurrent vs sequential, mixed adapters", f"{r:.2f}x  (goal >= 2.5x: {goal(r, 2.5)})")
        srv.stop()
        srv.app.state.engine.close()
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; {uptime()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
