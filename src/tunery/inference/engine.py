"""The torch inference engine (a backend of the router): base models loaded once, LoRA adapters per request, continuous batching.

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
What is loaded and evicted is torch_loading's (Residency); how each row is sampled, torch_sampling's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunery.errors import ModelUnavailable, RateLimited, TuneryError
from tunery.inference.config import ModelHandle, Servable, servable
from tunery.inference.generation import (  # noqa: F401  (re-exported: the torch engine's old import path)
    Choice, Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob, Usage, check_context,
)
from tunery.inference.torch_loading import Residency
from tunery.inference.torch_models import Backend, _Adapter, _Request, _Seq
from tunery.inference.torch_sampling import Sampling
from tunery.settings import InferenceSettings, Settings, get_settings
from tunery.train.checkpoint import is_adapter_dir

log = logging.getLogger("tunery.inference")


# --- the engine -------------------------------------------------------------------------

class Engine(Residency, Sampling):
    """Serves base models, LoRA adapters and full fine-tunes; see the module docstring."""

    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None):
        from tunery.models import setup_threads

        self.settings = settings or get_settings()
        self.config = config or self.settings.inference
        setup_threads(self.settings.compute.num_threads)
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
        model, adapter_dir = servable(model, self.settings)
        if adapter_dir is not None and not is_adapter_dir(adapter_dir):
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
        n_prompt = len(prompt_ids)
        check_context(handle.context_length, n_prompt, params, prompt_param)
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
        return self.submit(handle, handle.prompt_ids(prompt, messages), SamplingParams(**params).validate())

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
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        kwargs[backend.cache_kwarg] = cache
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

