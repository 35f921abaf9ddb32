"""What the llama.cpp and vLLM backends share: each serves its models through an OpenAI-style HTTP server on
127.0.0.1 (llama.cpp's in-process, vLLM's a child process) and relays the streamed answers.

This base owns the table of served models (one start per model; a server that died is started anew),
admission (429 past TUNERY_MAX_QUEUE), submitting a request as n streamed /v1/completions sequences on a
thread pool (seed + i, as the torch engine; no GIL held while the server decodes), relaying the server's SSE
chunks as Generation events, and the accounting that lets a server drain. A backend says how to start and
stop its servers, which server a request goes to, the request body, and how its logprobs read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ModelUnavailable, RateLimited, TuneryError
from tunery.inference.config import ModelHandle, Servable, belongs_to, servable
from tunery.inference.generation import (
    Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob, Usage, check_context,
)
from tunery.settings import InferenceSettings, Settings, get_settings
from tunery.train.checkpoint import is_adapter_dir

log = logging.getLogger("tunery.inference")


@dataclass(kw_only=True)
class ServedModel:
    """One model a backend serves (a base model, or a full fine-tune) with its tokenizer and adapters."""

    key: str
    tokenizer: object
    context_length: int
    model_id: str | None = None  # set for full fine-tunes (what unload() matches)
    adapters: dict[str, str] = field(default_factory=dict)  # the backend's adapter name → model id
    lock: threading.Lock = field(default_factory=threading.Lock)  # adapters, and the backend's own state


class _Sequences:
    """The n sequences of one request: the first failure fails the request, the last one to end reports
    the usage of all."""

    def __init__(self, gen: Generation, n: int, n_prompt: int):
        self.gen, self.left, self.n_prompt = gen, n, n_prompt
        self.tokens = 0
        self.failed = False
        self._lock = threading.Lock()

    def fail(self, err: Exception) -> None:
        with self._lock:
            first, self.failed = not self.failed, True
        if first:
            self.gen._emit(Failed(err))

    def end(self, tokens: int) -> None:
        with self._lock:
            self.tokens += tokens
            self.left -= 1
            done = self.left == 0 and not self.failed
        if done and not self.gen.cancelled:
            self.gen._emit(Done(Usage(self.n_prompt, self.tokens)))


class HttpBackend:
    """Base of the backends that serve through an HTTP server; see the module docstring."""

    name = ""
    label = ""  # the engine's name in messages

    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None):
        self.settings = settings or get_settings()
        self.config = config or self.settings.inference
        self.models: dict[str, ServedModel] = {}
        self._lock = threading.RLock()
        self._starting: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.config.max_batch + self.config.max_queue + 4,
                                        thread_name_prefix=f"tunery-{self.name}")
        self._seqs = 0  # sequences submitted and not finished
        self._closed = False

    # -- what a backend says --

    def _launch(self, m: ServedModel) -> None:
        """Start what serves `m` (called once per model, and again after its server died)."""

    def _alive(self, m: ServedModel) -> bool:
        return True

    def _discard(self, m: ServedModel) -> None:
        """Stop serving `m` (deleted, dead, or the engine closes); requests running on it may finish."""

    def _unload_adapters(self, m: ServedModel, model_id: str) -> None:
        """Stop serving the adapters of `m` that belong to the deleted `model_id`."""

    def _target(self, m: ServedModel, handle: ModelHandle, n: int):
        """The server that takes the `n` sequences of a request for `handle`, or None if none serves it any
        more (self._lock held)."""
        raise NotImplementedError

    def _release(self, target) -> None:
        """One sequence on `target` ended (self._lock held)."""

    def _url(self, target) -> str:
        raise NotImplementedError

    def _body(self, target, handle: ModelHandle, ids: list[int], p: SamplingParams) -> dict:
        raise NotImplementedError

    def _logprobs(self, target, lp: dict | None, p: SamplingParams) -> list[TokenLogprob] | None:
        raise NotImplementedError

    # -- models --

    def _model(self, key: str, make) -> ServedModel:
        """The served model `key`, made and launched on first use (other requests for it wait meanwhile);
        one whose server died (crashed, killed from outside) is launched anew."""
        with self._lock:
            m = self.models.get(key)
            if m is not None and self._alive(m):
                return m
            start_lock = self._starting.setdefault(key, threading.Lock())
        with start_lock:
            with self._lock:
                m = self.models.get(key)
            if m is not None and self._alive(m):
                return m
            if m is not None:
                log.warning("the %s server for %s has stopped; starting it again", self.label, key)
                self._discard(m)
            m = make()
            self._launch(m)
            with self._lock:
                closed = self._closed
                if not closed:
                    self.models[key] = m
            if closed:
                self._discard(m)
                raise ModelUnavailable("the inference engine is shut down")
            return m

    def _resolve(self, model: str | Servable) -> tuple[Servable, Path | None, bool]:
        """`model` as a Servable, its adapter or full fine-tune directory, and whether it is a full fine-tune."""
        model, adapter_dir = servable(model, self.settings)
        return model, adapter_dir, adapter_dir is not None and not is_adapter_dir(adapter_dir)

    def _full_model(self, model: Servable, path: Path) -> tuple[object, int]:
        """A full fine-tune's tokenizer (its own, else its base model's) and context length."""
        from tunery.models import context_length, load_tokenizer

        tok = load_tokenizer(str(path) if (path / "tokenizer.json").exists() else model.base_model, self.settings)
        own = json.loads((path / "config.json").read_text()).get("max_position_embeddings", 2048)
        return tok, min(context_length(model.base_model, self.settings), own)

    def unload(self, model_id: str) -> None:
        """Forget a deleted model: a full fine-tune stops being served, an adapter leaves its server
        (requests already running finish)."""
        for m in list(self.models.values()):
            if m.model_id is not None and belongs_to(m.model_id, model_id):
                with self._lock:
                    self.models.pop(m.key, None)
                self._pool.submit(self._discard, m)
            else:
                self._unload_adapters(m, model_id)

    def waiting(self) -> int:
        return max(0, self._seqs - self.config.max_batch)

    # -- requests --

    def submit(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams, loop=None,
               prompt_param: str = "messages") -> Generation:
        """Queue a request. Raises InvalidRequest (context too long, bad schema) or RateLimited (full) at once."""
        check_context(handle.context_length, len(prompt_ids), params, prompt_param)
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
            target = self._target(handle.backend, handle, params.n)
            if target is None:
                raise ModelUnavailable(f"model {handle.model_id!r} was unloaded; retry", param="model")
            body = self._body(target, handle, prompt_ids, params)
            self._seqs += params.n
        gen = Generation(params.n, len(prompt_ids), loop)
        seqs = _Sequences(gen, params.n, len(prompt_ids))
        for i in range(params.n):
            self._pool.submit(self._relay, target, seqs, body, params, i)
        return gen

    def generate(self, model, *, prompt=None, messages=None, **params) -> Generation:
        """Convenience for in-process use (benchmarks): prepare + encode + submit."""
        handle = self.prepare(model)
        return self.submit(handle, handle.prompt_ids(prompt, messages), SamplingParams(**params).validate())

    def _relay(self, target, seqs: _Sequences, body: dict, p: SamplingParams, index: int) -> None:
        """One sequence: stream it from the server and emit its text, logprobs and finish reason."""
        import httpx

        gen = seqs.gen
        seed = (p.seed + index) if p.seed is not None else int.from_bytes(os.urandom(4), "little")
        body = {**body, "seed": seed & 0x7FFF_FFFF}
        tokens = 0
        reason = None
        try:
            with httpx.Client(timeout=httpx.Timeout(600, connect=10)) as client, client.stream(
                    "POST", self._url(target) + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise ModelUnavailable(f"{self.label} refused the request: {message(r.read().decode())}")
                for line in r.iter_lines():
                    if gen.cancelled:
                        break
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ModelUnavailable(f"{self.label}: {message(json.dumps(chunk))}")
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens", tokens)
                    for c in chunk.get("choices", []):
                        lps = self._logprobs(target, c.get("logprobs"), p) if p.logprobs else None
                        if c.get("text") or lps:
                            gen._emit(Delta(index, c.get("text") or "", lps))
                        if c.get("finish_reason"):
                            reason = "length" if c["finish_reason"] == "length" else "stop"
            if reason is not None:
                gen._emit(Finished(index, reason))
            elif not gen.cancelled:
                raise ModelUnavailable(f"{self.label} ended the stream without a finish reason")
        except Exception as exc:  # fail this request, keep serving the others
            if not gen.cancelled:
                seqs.fail(exc if isinstance(exc, TuneryError) else ModelUnavailable(
                    f"generation failed ({type(exc).__name__}: {exc})"))
        finally:
            with self._lock:
                self._seqs -= 1
                self._release(target)
            seqs.end(tokens)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            models = list(self.models.values())
            self.models.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for m in models:
            self._discard(m)


def message(text: str) -> str:
    """The message of a server's error body (OpenAI's {"error": {"message": …}} or plain text), cut short."""
    try:
        err = json.loads(text)
        err = err.get("error", err) if isinstance(err, dict) else err
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        return text[:300]
