"""What the torch engine holds in memory (a mixin of Engine, which owns the lock and the loop): base models
and full fine-tunes loaded once and dropped when idle past TUNERY_MAX_MODELS or deleted; adapters read on a
loader thread, attached on the engine thread (MultiLora), LRU-evicted past TUNERY_MAX_ADAPTERS, dropped when
deleted; requests waiting on an adapter that failed to load fail with its error."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable, TuneryError
from tunery.inference.config import belongs_to
from tunery.inference.generation import Failed
from tunery.inference.torch_models import Backend, _Adapter

log = logging.getLogger("tunery.inference")


class Residency:

    def _dtype(self):
        import torch

        name = self.config.dtype
        if name == "auto":
            from tunery.models import pick_device

            dev = pick_device(self.settings.compute.device)
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

        device = pick_device(self.settings.compute.device)
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
                    if b.model_id is not None and belongs_to(b.model_id, model_id):
                        b.doomed = True
                    for a in b.adapters.values():
                        if belongs_to(a.model_id, model_id):
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
