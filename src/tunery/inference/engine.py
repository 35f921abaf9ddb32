"""The inference engine: base models loaded once, LoRA adapters per request, continuous batching.

One background thread owns every model and runs the scheduling loop. Each pass it
  1. attaches adapters whose files a loader thread has read (LRU-evicting idle ones),
  2. admits waiting requests into their model's running batch (prefilling each prompt once,
     its KV rows repeated for n > 1),
  3. runs one decode step for all running sequences of each model together — rows that use
     different adapters of the same base share the forward pass (PEFT mixed-adapter batches),
  4. samples each row with its own parameters and streams text out, holding back any tail that
     could still turn into a stop string.
Requests arrive through `submit()` from any thread; it refuses with 429 when the queue is full.
Results come back as events on a `Generation` (iterate it, or `async for` when created with a loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tunery.errors import InvalidRequest, ModelUnavailable, RateLimited, TuneryError
from tunery.settings import Settings, get_settings

log = logging.getLogger("tunery.inference")


# --- requests and results ---------------------------------------------------------------

@dataclass
class SamplingParams:
    """How to generate; the field names are the OpenAI request's."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: dict | None = None
    ignore_eos: bool = False
    """Benchmarks only: keep generating past end-of-sequence."""

    def validate(self, max_top_logprobs: int = 20) -> "SamplingParams":
        def bad(param: str, msg: str):
            raise InvalidRequest(f"Invalid '{param}': {msg}", param=param, code="invalid_value")

        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            bad("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be greater than 0 and at most 1, got {self.top_p}")
        if not 1 <= self.n <= 128:
            bad("n", f"must be between 1 and 128, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not -2 <= v <= 2:
                bad(name, f"must be between -2 and 2, got {v}")
        if len(self.stop) > 4:
            bad("stop", f"at most 4 stop sequences, got {len(self.stop)}")
        if not 0 <= self.top_logprobs <= max_top_logprobs:
            bad("top_logprobs", f"must be between 0 and {max_top_logprobs}, got {self.top_logprobs}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


@dataclass
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class Delta:
    """New text of choice `index` (never containing a stop string), with the logprobs of its tokens."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    index: int
    finish_reason: str  # "stop" | "length"


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class Done:
    usage: Usage


@dataclass
class Failed:
    error: Exception


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] | None


class Generation:
    """The event stream of one request: Delta/Finished per choice, then Done (or Failed)."""

    def __init__(self, n: int, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None):
        self.n = n
        self.prompt_tokens = prompt_tokens
        self._loop = loop
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._aq: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.cancelled = False

    def _emit(self, ev) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (client went away, server stopping)
                self.cancelled = True
        else:
            self._q.put(ev)

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine drops the sequences at its next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator:
        while True:
            ev = self._q.get()
            yield ev
            if isinstance(ev, (Done, Failed)):
                return

    async def aiter(self):
        try:
            while True:
                ev = await self._aq.get()
                yield ev
                if isinstance(ev, (Done, Failed)):
                    return
        finally:
            self.cancel()

    @staticmethod
    def _collect(events) -> tuple[list[Choice], Usage]:
        texts: dict[int, list[str]] = {}
        lps: dict[int, list[TokenLogprob] | None] = {}
        reasons: dict[int, str] = {}
        for ev in events:
            if isinstance(ev, Delta):
                texts.setdefault(ev.index, []).append(ev.text)
                if ev.logprobs is not None:
                    lps.setdefault(ev.index, []).extend(ev.logprobs)
            elif isinstance(ev, Finished):
                reasons[ev.index] = ev.finish_reason
            elif isinstance(ev, Failed):
                raise ev.error
            elif isinstance(ev, Done):
                usage = ev.usage
        choices = [Choice(i, "".join(texts.get(i, [])), reasons.get(i, "stop"), lps.get(i))
                   for i in sorted(reasons)]
        return choices, usage

    def result(self) -> tuple[list[Choice], Usage]:
        """Block until done: the choices (ordered by index) and usage."""
        return self._collect(iter(self))

    async def aresult(self) -> tuple[list[Choice], Usage]:
        return self._collect([ev async for ev in self.aiter()])


# --- configuration and model handles ----------------------------------------------------

def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


@dataclass
class EngineConfig:
    max_batch: int = 16
    """TUNERY_MAX_BATCH: sequences decoded together per model."""
    max_queue: int = 64
    """TUNERY_MAX_QUEUE: sequences allowed to wait; beyond it requests get 429."""
    max_adapters: int = 16
    """TUNERY_MAX_ADAPTERS: LoRA adapters kept attached per base model (least recently used leave)."""
    max_models: int = 3
    """TUNERY_MAX_MODELS: base models and full fine-tunes kept loaded."""
    dtype: str = "auto"
    """TUNERY_INFERENCE_DTYPE: auto (bf16 where the CPU/GPU has it, else fp32) | float32 | bfloat16 | float16."""

    @classmethod
    def from_env(cls) -> "EngineConfig":
        return cls(max_batch=_env_int("TUNERY_MAX_BATCH", 16), max_queue=_env_int("TUNERY_MAX_QUEUE", 64),
                   max_adapters=_env_int("TUNERY_MAX_ADAPTERS", 16), max_models=_env_int("TUNERY_MAX_MODELS", 3),
                   dtype=os.environ.get("TUNERY_INFERENCE_DTYPE", "auto"))


@dataclass(frozen=True)
class Servable:
    """What a model name means for serving (same fields as tunery.store.ServableModel)."""

    id: str
    base_model: str
    adapter_dir: Path | None = None


@dataclass
class ModelHandle:
    """A model ready to take requests: its backend (weights + tokenizer) and, for LoRA, which adapter."""

    model_id: str
    backend: "Backend"
    adapter: str | None = None
    adapter_dir: Path | None = None

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    def encode_chat(self, messages: list[dict]) -> list[int]:
        from tunery.models import require_chat_template

        tok = self.tokenizer
        require_chat_template(tok, self.model_id)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
            ids = [tok.bos_token_id] + ids
        return ids


@dataclass
class _Adapter:
    name: str
    path: Path
    model_id: str
    state: str = "loading"  # loading | ready | failed
    error: Exception | None = None
    pins: int = 0
    doomed: bool = False


class Backend:
    """One set of loaded weights (a base model, or a full fine-tune) with its adapters and running batch."""

    def __init__(self, key: str, model, tokenizer, context_length: int, model_id: str | None = None):
        from tunery.inference.kvcache import BatchKV
        from tunery.inference.text import TokenText

        self.key = key
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.model_id = model_id  # set for full fine-tunes (what unload() matches)
        self.config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.num_layers = self.config.num_hidden_layers
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.eos_ids = _eos_ids(model, tokenizer)
        self.lora = None  # MultiLora once an adapter is attached
        self.adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self.kv = BatchKV()
        self.running: list[_Seq] = []
        self.waiting: deque[_Request] = deque()
        self.token_text = TokenText(tokenizer)
        self._grammar = None
        self._grammar_lock = threading.Lock()
        self.last_used = time.monotonic()
        self.doomed = False

    def grammar(self):
        from tunery.inference.grammar import GrammarFactory

        with self._grammar_lock:
            if self._grammar is None:
                self._grammar = GrammarFactory(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
            return self._grammar

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # Chat models built on ChatML end a turn with <|im_end|>, sometimes not declared as eos.
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return ids


class _Request:
    def __init__(self, gen: Generation, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams):
        self.gen = gen
        self.handle = handle
        self.prompt_ids = prompt_ids
        self.params = params
        self.active = params.n
        self.completion_tokens = 0
        self.json = None  # compiled grammar

    @property
    def adapter(self) -> str | None:
        return self.handle.adapter


class _Seq:
    def __init__(self, req: _Request, index: int, backend: Backend):
        import torch

        from tunery.inference.text import Detokenizer, StopMatcher

        self.req = req
        self.index = index
        p = req.params
        self.params = p
        seed = (p.seed + index) if p.seed is not None else int.from_bytes(os.urandom(7), "little")
        self.rng = torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
        self.detok = Detokenizer(backend.tokenizer, req.prompt_ids[-4:])
        self.stops = StopMatcher(p.stop)
        self.tokens: list[int] = []
        self.counts = (torch.zeros(backend.vocab_size) if (p.presence_penalty or p.frequency_penalty) else None)
        self.matcher = backend.grammar().matcher(req.json) if req.json is not None else None
        self.pending_lp: list[TokenLogprob] = []
        self.next_token: int | None = None
        self.done = False

    @property
    def adapter_name(self) -> str | None:
        return self.req.adapter


# --- the engine -------------------------------------------------------------------------

class Engine:
    """Serves base models, LoRA adapters and full fine-tunes; see the module docstring."""

    def __init__(self, settings: Settings | None = None, config: EngineConfig | None = None):
        from tunery.models import setup_threads

        self.settings = settings or get_settings()
        self.config = config or EngineConfig.from_env()
        setup_threads(self.settings)
        self.backends: OrderedDict[str, Backend] = OrderedDict()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._load_locks: dict[str, threading.Lock] = {}
        self._ready_adapters: list[tuple[Backend, str, Any, Any]] = []
        self._commands: list = []
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-adapter-loader")
        self._closed = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="tunery-engine", daemon=True)
        self._thread.start()

    # -- public API --

    def prepare(self, model: str | Servable | Any) -> ModelHandle:
        """Load (once) what `model` needs and return a handle; adapters load in the background.

        `model` is a ServableModel from the store (id, base_model, adapter_dir), or a plain base-model name.
        Blocks while a base model loads (the first request for it), so call it off the event loop.
        """
        if isinstance(model, str):
            from tunery.models import resolve

            # The canonical name, so an alias and its target share one loaded copy.
            model = Servable(id=model, base_model=resolve(model, self.settings).name, adapter_dir=None)
        adapter_dir = Path(model.adapter_dir) if getattr(model, "adapter_dir", None) else None
        if adapter_dir is not None and not (adapter_dir / "adapter_config.json").exists():
            backend = self._backend(str(adapter_dir.resolve()), model_id=model.id, path=adapter_dir,
                                    base=model.base_model)
            return ModelHandle(model.id, backend)
        backend = self._backend(model.base_model)
        if adapter_dir is None:
            return ModelHandle(model.id, backend)
        name = "ad_" + hashlib.sha1(str(adapter_dir.resolve()).encode()).hexdigest()[:16]
        with self._lock:
            entry = backend.adapters.get(name)
            if entry is None or entry.state == "failed":
                if not (adapter_dir / "adapter_model.safetensors").exists():
                    raise ModelUnavailable(f"model {model.id!r} has no adapter_model.safetensors in {adapter_dir}",
                                           param="model")
                entry = backend.adapters[name] = _Adapter(name, adapter_dir, model.id)
                self._loader.submit(self._read_adapter, backend, entry)
        return ModelHandle(model.id, backend, adapter=name, adapter_dir=adapter_dir)

    def submit(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams,
               loop: asyncio.AbstractEventLoop | None = None, prompt_param: str = "messages") -> Generation:
        """Queue a request. Raises InvalidRequest (context too long) or RateLimited (queue full) at once."""
        ctx = handle.context_length
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty", param=prompt_param)
        if params.max_tokens is None:
            if n_prompt >= ctx:
                raise InvalidRequest(
                    f"This model's maximum context length is {ctx} tokens. However, your {prompt_param} "
                    f"resulted in {n_prompt} tokens. Please reduce the length of the {prompt_param}.",
                    param=prompt_param, code="context_length_exceeded")
        elif n_prompt + params.max_tokens > ctx:
            raise InvalidRequest(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the {prompt_param}, {params.max_tokens} "
                f"in the completion). Please reduce the length of the {prompt_param} or completion.",
                param=prompt_param, code="context_length_exceeded")
        backend = handle.backend
        req = _Request(Generation(params.n, n_prompt, loop), handle, list(prompt_ids), params)
        if params.json_schema is not None:
            req.json = backend.grammar().compile(params.json_schema)
        with self._cond:
            if self._closed:
                raise ModelUnavailable("the inference engine is shut down")
            waiting = sum(r.params.n for b in self.backends.values() for r in b.waiting)
            if waiting + params.n > self.config.max_queue:
                raise RateLimited(
                    f"The server is busy: {waiting} sequences are already waiting (limit {self.config.max_queue}, "
                    "TUNERY_MAX_QUEUE). Retry after a short wait.")
            if self.backends.get(backend.key) is not backend:
                self.backends[backend.key] = backend
            if req.adapter:
                entry = backend.adapters.get(req.adapter)
                if entry is None:  # evicted between prepare() and now: read it again
                    entry = backend.adapters[req.adapter] = _Adapter(req.adapter, handle.adapter_dir, handle.model_id)
                    self._loader.submit(self._read_adapter, backend, entry)
                entry.pins += 1
            backend.waiting.append(req)
            self._cond.notify_all()
        return req.gen

    def generate(self, model: str | Servable | Any, *, prompt: str | list[int] | None = None,
                 messages: list[dict] | None = None, **params) -> Generation:
        """Convenience for in-process use (CLI, benchmarks): prepare + encode + submit."""
        handle = self.prepare(model)
        if messages is not None:
            ids = handle.encode_chat(messages)
        elif isinstance(prompt, str):
            ids = handle.encode(prompt)
        else:
            ids = list(prompt or [])
        return self.submit(handle, ids, SamplingParams(**params).validate())

    def unload(self, model_id: str) -> None:
        """Forget a model (deleted): its adapter or full weights leave memory once no request uses them."""
        with self._cond:
            self._commands.append(("unload", model_id))
            self._cond.notify_all()

    def loaded(self) -> dict[str, list[str]]:
        """Loaded backends and the model ids of their attached adapters (for tests and diagnostics)."""
        with self._lock:
            return {k: [a.model_id for a in b.adapters.values() if a.state == "ready"]
                    for k, b in self.backends.items()}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        self._loader.shutdown(wait=False, cancel_futures=True)
        err = ModelUnavailable("the inference engine shut down before this request finished")
        for b in self.backends.values():
            for r in list(b.waiting) + list({id(s.req): s.req for s in b.running}.values()):
                r.gen._emit(Failed(err))
            b.waiting.clear()
            b.running.clear()

    # -- loading --

    def _dtype(self):
        import torch

        name = self.config.dtype
        if name == "auto":
            from tunery.models import pick_device

            dev = pick_device(self.settings)
            if dev == "cpu":
                try:
                    ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
                except (AttributeError, RuntimeError):
                    ok = False
                return torch.bfloat16 if ok else torch.float32
            if dev.startswith("cuda"):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
        except KeyError:
            raise InvalidRequest(f"TUNERY_INFERENCE_DTYPE must be auto, float32, bfloat16 or float16, not {name!r}")

    def _backend(self, key: str, *, model_id: str | None = None, path: Path | None = None,
                 base: str | None = None) -> Backend:
        with self._lock:
            b = self.backends.get(key)
            if b is not None and not b.doomed:
                b.last_used = time.monotonic()
                return b
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                b = self.backends.get(key)
                if b is not None and not b.doomed:
                    return b
            b = self._load_backend(key, model_id=model_id, path=path, base=base)
            with self._lock:
                self.backends[key] = b
                self._cond.notify_all()
            return b

    def _load_backend(self, key: str, *, model_id, path, base) -> Backend:
        from tunery.models import context_length, load_model, load_tokenizer, pick_device

        device = pick_device(self.settings)
        dtype = self._dtype()
        t = time.perf_counter()
        if path is None:
            model, tok = load_model(key, self.settings, dtype=dtype, device=device)
            ctx = context_length(key, self.settings)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False,
                                                         use_safetensors=True).to(device)
            has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
            tok = load_tokenizer(str(path) if has_tok else base, self.settings)
            ctx = context_length(base, self.settings) if base else 2048
            cfg_ctx = getattr(model.config.get_text_config(), "max_position_embeddings", None)
            ctx = min(ctx, cfg_ctx) if cfg_ctx else ctx
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        log.info("loaded %s (%s, %s) in %.1fs", key, dtype, device, time.perf_counter() - t)
        return Backend(key, model, tok, ctx, model_id=model_id)

    def _read_adapter(self, backend: Backend, entry: _Adapter) -> None:
        """Loader thread: read and check an adapter's weights (the slow, I/O part) off the engine thread."""
        try:
            from tunery.inference.lora import read_adapter

            weights = read_adapter(entry.path, next(backend.model.parameters()).dtype)
            item = (backend, entry.name, weights, None)
        except Exception as exc:  # any failure to read is reported to the requests waiting on it
            err = exc if isinstance(exc, TuneryError) else ModelUnavailable(
                f"could not load adapter for {entry.model_id!r}: {exc}", param="model")
            item = (backend, entry.name, None, err)
        with self._cond:
            self._ready_adapters.append(item)
            self._cond.notify_all()

    def _attach_adapters(self) -> None:
        with self._lock:
            ready, self._ready_adapters = self._ready_adapters, []
        for backend, name, weights, err in ready:
            entry = backend.adapters.get(name)
            if entry is None:
                continue
            if weights is None:
                entry.state, entry.error = "failed", err
                self._fail_waiting(backend, name, err)
                with self._lock:
                    backend.adapters.pop(name, None)
                continue
            try:
                from tunery.inference.lora import MultiLora

                if backend.lora is None:
                    backend.lora = MultiLora(backend.model)
                backend.lora.add(name, weights)
                entry.state = "ready"
            except Exception as exc:  # a mismatched adapter must not take the engine down
                log.exception("attaching adapter %s failed", entry.path)
                err = exc if isinstance(exc, TuneryError) else ModelUnavailable(
                    f"could not load adapter for {entry.model_id!r}: {exc}", param="model")
                self._fail_waiting(backend, name, err)
                with self._lock:
                    backend.adapters.pop(name, None)
                self._drop_adapter(backend, name)
        for backend in {id(b): b for b, *_ in ready}.values():
            self._evict_adapters(backend)

    def _evict_adapters(self, backend: Backend) -> None:
        with self._lock:
            ready = [a for a in backend.adapters.values() if a.state == "ready"]
            extra = len(ready) - self.config.max_adapters
            victims = [a for a in ready if a.pins == 0][:max(extra, 0)]  # OrderedDict order = LRU first
            victims += [a for a in ready if a.doomed and a.pins == 0 and a not in victims]
            for a in victims:
                backend.adapters.pop(a.name, None)
        for a in victims:
            self._drop_adapter(backend, a.name)

    def _drop_adapter(self, backend: Backend, name: str) -> None:
        if backend.lora is not None:
            backend.lora.remove(name)

    def _fail_waiting(self, backend: Backend, name: str, err: Exception) -> None:
        with self._lock:
            keep = deque()
            for r in backend.waiting:
                if r.adapter == name:
                    r.gen._emit(Failed(err))
                else:
                    keep.append(r)
            backend.waiting = keep

    def _run_commands(self) -> None:
        with self._lock:
            cmds, self._commands = self._commands, []
        for op, model_id in cmds:
            if op != "unload":
                continue
            with self._lock:
                for b in list(self.backends.values()):
                    if b.model_id == model_id:
                        b.doomed = True
                    for a in b.adapters.values():
                        if a.model_id == model_id or a.model_id.startswith(model_id + ":ckpt-step-"):
                            a.doomed = True
            for b in list(self.backends.values()):
                self._evict_adapters(b)
        self._drop_idle_backends()

    def _drop_idle_backends(self) -> None:
        with self._lock:
            idle = [b for b in self.backends.values() if not b.busy]
            extra = len(self.backends) - self.config.max_models
            victims = [b for b in idle if b.doomed]
            victims += sorted((b for b in idle if not b.doomed), key=lambda b: b.last_used)[:max(extra, 0)]
            for b in victims:
                if self.backends.get(b.key) is b:
                    del self.backends[b.key]

    # -- the loop --

    def _has_work(self) -> bool:
        return bool(self._ready_adapters or self._commands
                    or any(b.running or any(self._admissible(b, r) for r in b.waiting)
                           for b in self.backends.values()))

    def _admissible(self, backend: Backend, req: _Request) -> bool:
        if req.gen.cancelled:
            return True
        if req.adapter is None:
            return True
        entry = backend.adapters.get(req.adapter)
        return entry is not None and entry.state == "ready"

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._has_work():
                        self._cond.wait(timeout=1.0)
                    if self._closed:
                        return
                try:
                    self._attach_adapters()
                    self._run_commands()
                    for backend in list(self.backends.values()):
                        self._admit(backend)
                        if backend.running:
                            self._step(backend)
                except Exception as exc:  # fail the affected requests, keep serving the others
                    log.exception("inference step failed")
                    self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        from tunery.inference.kvcache import BatchKV

        err = exc if isinstance(exc, TuneryError) else ModelUnavailable(
            f"generation failed ({type(exc).__name__}: {exc})")
        with self._lock:
            for b in self.backends.values():
                for r in {id(s.req): s.req for s in b.running}.values():
                    r.gen._emit(Failed(err))
                    self._unpin(b, r)
                b.running = []
                b.kv = BatchKV()

    def _admit(self, backend: Backend) -> None:
        while True:
            with self._lock:
                req = None
                for r in backend.waiting:
                    if r.gen.cancelled:
                        req = r
                        break
                    if not self._admissible(backend, r):
                        continue
                    if backend.running and len(backend.running) + r.params.n > self.config.max_batch:
                        return
                    req = r
                    break
                if req is None:
                    return
                backend.waiting.remove(req)
                if req.adapter:
                    backend.adapters.move_to_end(req.adapter)
            if req.gen.cancelled:
                self._unpin(backend, req)
                continue
            try:
                self._prefill(backend, req)
            except Exception as exc:  # this request's failure (bad grammar, OOM...) is its own
                log.exception("prefill failed")
                err = exc if isinstance(exc, TuneryError) else ModelUnavailable(
                    f"generation failed ({type(exc).__name__}: {exc})")
                req.gen._emit(Failed(err))
                self._unpin(backend, req)
                backend.running = [s for s in backend.running if s.req is not req]
                from tunery.inference.kvcache import BatchKV

                if not backend.running:
                    backend.kv = BatchKV()

    def _forward(self, backend: Backend, ids, cache, *, mask=None, positions=None, names=None):
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
        if backend.lora is not None:
            backend.lora.set_batch(names)
        out = backend.model(**kwargs)
        self.steps += 1
        return out.logits[:, -1, :].float()

    def _prefill(self, backend: Backend, req: _Request) -> None:
        import torch

        from tunery.inference.kvcache import SlotLayer, make_cache

        layers = [SlotLayer() for _ in range(backend.num_layers)]
        ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=backend.model.device)
        logits = self._forward(backend, ids, make_cache(layers), names=[req.adapter])
        seqs = [_Seq(req, i, backend) for i in range(req.params.n)]
        backend.kv.add(layers, repeat=len(seqs))
        backend.running.extend(seqs)
        self._sample_and_emit(backend, logits.expand(len(seqs), -1), seqs)
        self._reap(backend)

    def _step(self, backend: Backend) -> None:
        import torch

        seqs = backend.running
        kv = backend.kv
        dev = backend.model.device
        ids = torch.tensor([[s.next_token] for s in seqs], dtype=torch.long, device=dev)
        mask = kv.attention_mask(1)
        logits = self._forward(backend, ids, kv.cache(), mask=None if mask is None else mask.to(dev),
                               positions=kv.positions().to(dev), names=[s.adapter_name for s in seqs])
        kv.advance()
        self._sample_and_emit(backend, logits, seqs)
        self._reap(backend)

    def _reap(self, backend: Backend) -> None:
        seqs = backend.running
        if all(not s.done for s in seqs):
            return
        keep = [i for i, s in enumerate(seqs) if not s.done]
        backend.kv.keep(keep)
        backend.running = [seqs[i] for i in keep]

    # -- sampling --

    def _sample_and_emit(self, backend: Backend, logits, seqs: list[_Seq]) -> None:
        import torch

        for s in seqs:
            if s.req.gen.cancelled and not s.done:
                self._finish(backend, s, None)
        live = [i for i, s in enumerate(seqs) if not s.done]
        if not live:
            return
        want_lp = any(s.params.logprobs for s in seqs)
        lps = torch.log_softmax(logits, dim=-1) if want_lp else None
        plain = all(s.params.greedy and s.counts is None and s.matcher is None and not s.params.ignore_eos
                    for s in seqs)
        if plain:
            chosen = logits.argmax(dim=-1).tolist()
        else:
            x = logits.clone()
            grammar_rows = [i for i in live if seqs[i].matcher is not None]
            if grammar_rows:
                g = backend.grammar()
                mask = g.bitmask(len(seqs))
                for i in grammar_rows:
                    seqs[i].matcher.fill_next_token_bitmask(mask, i)
                g.apply(x, mask, grammar_rows)
            chosen = []
            for i, s in enumerate(seqs):
                if s.done:
                    chosen.append(-1)
                    continue
                row = x[i]
                p = s.params
                if s.counts is not None:
                    row = row - p.frequency_penalty * s.counts - p.presence_penalty * (s.counts > 0).float()
                if p.ignore_eos:
                    row = row.clone()
                    row[list(backend.eos_ids)] = float("-inf")
                if p.greedy:
                    chosen.append(int(row.argmax()))
                    continue
                probs = torch.softmax(row / p.temperature, dim=-1)
                if p.top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    keep = (sp.cumsum(0) - sp) < p.top_p
                    keep[0] = True
                    sp = sp * keep
                    chosen.append(int(si[torch.multinomial(sp, 1, generator=s.rng)]))
                else:
                    chosen.append(int(torch.multinomial(probs, 1, generator=s.rng)))
        for i in live:
            s = seqs[i]
            tok = chosen[i]
            info = None
            if s.params.logprobs:
                info = self._logprob(backend, lps[i], tok, s.params.top_logprobs)
            self._accept(backend, s, tok, info)

    def _logprob(self, backend: Backend, lp_row, tok: int, k: int) -> TokenLogprob:
        import torch

        text, raw = backend.token_text(tok)
        top = []
        if k:
            vals, idx = torch.topk(lp_row, k)
            for v, t in zip(vals.tolist(), idx.tolist()):
                tt, tb = backend.token_text(t)
                top.append((tt, tb, max(float(v), -9999.0)))
        return TokenLogprob(text, raw, max(float(lp_row[tok]), -9999.0), top)

    def _accept(self, backend: Backend, s: _Seq, tok: int, info: TokenLogprob | None) -> None:
        p = s.params
        s.tokens.append(tok)
        s.req.completion_tokens += 1
        s.next_token = tok
        if s.counts is not None:
            s.counts[tok] += 1
        if s.matcher is not None and not s.matcher.is_terminated():
            s.matcher.accept_token(tok)
        if tok in backend.eos_ids and not p.ignore_eos:
            self._finish(backend, s, "stop")
            return
        if info is not None:
            s.pending_lp.append(info)
        text, stopped = s.stops.feed(s.detok.push(tok))
        if stopped:
            if text:
                self._emit_text(s, text)
            self._finish(backend, s, "stop", flush=False)
            return
        if text:
            self._emit_text(s, text)
        total = len(s.req.prompt_ids) + len(s.tokens)
        if (p.max_tokens is not None and len(s.tokens) >= p.max_tokens) or total >= backend.context_length:
            self._finish(backend, s, "length")

    def _emit_text(self, s: _Seq, text: str) -> None:
        lps = None
        if s.params.logprobs:
            lps, s.pending_lp = s.pending_lp, []
        s.req.gen._emit(Delta(s.index, text, lps))

    def _finish(self, backend: Backend, s: _Seq, reason: str | None, flush: bool = True) -> None:
        s.done = True
        if reason is not None:
            if flush:
                tail = s.stops.feed(s.detok.flush())[0] + s.stops.flush()
                if tail:
                    self._emit_text(s, tail)
            s.req.gen._emit(Finished(s.index, reason))
        req = s.req
        req.active -= 1
        if req.active == 0:
            self._unpin(backend, req)
            if reason is not None:
                req.gen._emit(Done(Usage(len(req.prompt_ids), req.completion_tokens)))

    def _unpin(self, backend: Backend, req: _Request) -> None:
        if req.adapter:
            with self._lock:
                entry = backend.adapters.get(req.adapter)
                if entry is not None:
                    entry.pins = max(0, entry.pins - 1)
                    doomed = entry.doomed and entry.pins == 0
                else:
                    doomed = False
            if doomed:
                self._evict_adapters(backend)


# --- attaching to the app ---------------------------------------------------------------

_engine_lock = threading.Lock()


def get_engine(app_or_settings=None) -> Engine:
    """The app's engine (created on first use, on app.state.engine), or a new one for a Settings object."""
    state = getattr(app_or_settings, "state", None)
    if state is None:
        return Engine(app_or_settings if isinstance(app_or_settings, Settings) else None)
    engine = getattr(state, "engine", None)
    if engine is None:
        with _engine_lock:
            engine = getattr(state, "engine", None)
            if engine is None:
                engine = Engine(getattr(state, "settings", None))
                state.engine = engine
    return engine
