"""The llama.cpp backend: llama.cpp's server in-process (the `xllamacpp` wheel), one per served GGUF.

llama.cpp fixes a server's LoRA list when it starts and picks adapters per request (`lora: [{id,
scale}]`). So each GGUF model keeps one *current* server instance with every adapter asked for so far;
when a request names an adapter the instance lacks (a job just succeeded, a checkpoint is asked for),
a new instance starts with the longer list and takes over, while the old one finishes the requests it
has (it is dropped when its last one ends). Deleting a model rebuilds the list without it.

Requests go to the instance's own HTTP endpoint on 127.0.0.1 (admission, streaming and n > 1 are
tunery.inference.http_backend's, shared with vLLM). Prompts are sent as token ids made by the model's
Hugging Face tokenizer, so prompts, usage and echo are identical on every backend; stop strings, grammar
(JSON Schema through llama.cpp's llguidance), penalties and logprobs are llama.cpp's own.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ModelUnavailable
from tunery.inference.config import ModelHandle, Servable, belongs_to
from tunery.inference.generation import SamplingParams, TokenLogprob
from tunery.inference.http_backend import HttpBackend, ServedModel
from tunery.settings import InferenceSettings, Settings

log = logging.getLogger("tunery.inference")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xllamacpp") is not None


@dataclass
class _Instance:
    server: object
    url: str
    adapters: list[str]  # GGUF LoRA paths; the index is llama.cpp's adapter id
    active: int = 0
    retired: bool = False


@dataclass(kw_only=True)
class GGUFModel(ServedModel):
    """One served GGUF (a base model, or a converted full fine-tune); `adapters` maps GGUF LoRA paths to
    model ids, and `lock` guards them and `current`."""

    gguf: Path
    names: dict[str, str] = field(default_factory=dict)  # every path ever seen → model id (for loaded())
    current: _Instance | None = None
    build_lock: threading.Lock = field(default_factory=threading.Lock)  # one instance starts at a time


class LlamaCppEngine(HttpBackend):
    name = "llamacpp"
    label = "llama.cpp"

    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None):
        from tunery.models import setup_threads

        if not available():
            raise ModelUnavailable("the llama.cpp backend needs the xllamacpp package (pip install xllamacpp)")
        super().__init__(settings, config)
        self.threads = setup_threads(self.settings.compute.num_threads)

    # -- models --

    def prepare(self, model: str | Servable) -> ModelHandle:
        """Resolve what `model` needs (converting to GGUF once) and make sure a server instance has it.

        Blocks while a server instance starts (the first request for a model, a new adapter)."""
        from tunery.inference import convert
        from tunery.models import context_length, load_tokenizer

        model, adapter_dir, full = self._resolve(model)
        if full:
            gguf = adapter_dir / convert.MODEL_GGUF
            if not gguf.exists():
                convert.model_to_gguf(adapter_dir, gguf, base=convert.base_gguf(model.base_model, self.settings))

            def make_full():
                tok, ctx = self._full_model(model, adapter_dir)
                return GGUFModel(key=str(adapter_dir.resolve()), gguf=gguf, tokenizer=tok, context_length=ctx,
                                 model_id=model.id)

            m = self._model(str(adapter_dir.resolve()), make_full)
            self._ensure(m, None)
            return ModelHandle(model.id, m)
        base = model.base_model
        gguf = self._base_gguf(base)

        def make_base():
            return GGUFModel(key=base, gguf=gguf, tokenizer=load_tokenizer(base, self.settings),
                             context_length=context_length(base, self.settings))

        m = self._model(base, make_base)
        lora = None
        if adapter_dir is not None:
            lora_path = adapter_dir / convert.LORA_GGUF
            if not lora_path.exists():
                convert.lora_to_gguf(adapter_dir, m.gguf, lora_path)
            lora = str(lora_path.resolve())
            with m.lock:
                m.adapters[lora] = m.names[lora] = model.id
        self._ensure(m, lora)
        return ModelHandle(model.id, m, adapter=lora, adapter_dir=adapter_dir)

    def _base_gguf(self, base: str) -> Path:
        from tunery.inference import convert
        from tunery.models import materialize

        path = convert.base_gguf(base, self.settings)
        if path is not None:
            return path
        # A Hugging Face directory (local, or a downloaded snapshot): convert it once into the cache.
        src = materialize(base, self.settings)
        out = self.settings.model_cache / "gguf" / (hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:16]
                                                    + ".gguf")
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            convert.model_to_gguf(src, out)
        return out

    def _ensure(self, m: GGUFModel, lora: str | None) -> None:
        """Make the current instance have `lora`; only a request that needs a new instance waits for it."""
        cur = m.current
        if cur is not None and (lora is None or lora in cur.adapters):
            return
        with m.build_lock:
            cur = m.current
            if cur is not None and (lora is None or lora in cur.adapters):
                return
            with m.lock:
                wanted = list(cur.adapters) if cur is not None else []
                wanted = [p for p in wanted if p in m.adapters] + [p for p in m.adapters if p not in wanted]
            self._swap(m, wanted)

    def _swap(self, m: GGUFModel, adapters: list[str]) -> None:
        """Start an instance with `adapters` and make it current; the old one drains (build_lock held)."""
        new = self._start(m, adapters)
        with m.lock:
            old, m.current = m.current, new
        if old is not None:
            self._retire(old)

    def _start(self, m: GGUFModel, adapters: list[str]) -> _Instance:
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = str(m.gguf)
        p.n_parallel = self.config.max_batch
        p.kv_unified = True  # one KV pool shared by the slots, so one long request can use the window
        p.n_ctx = max(m.context_length, self.config.llamacpp_ctx)
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        # Threads wait for work asleep, not spinning (llama.cpp's --poll 0; its default polls at 50). Same speed
        # on an idle machine, 2x faster when the cores are shared, as with a training job beside the server:
        # bundled model, 2 threads, 128 greedy tokens, 2-core AVX2 machine: idle 79 tok/s either way; at load
        # average 7, 0.5-6.6 tok/s polling vs 6-14 asleep (1 thread: 31 — see README, Inference).
        p.cpuparams.poll = p.cpuparams_batch.poll = 0
        p.verbosity = -1
        p.warmup = False
        p.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(a, 0.0) for a in adapters]
        p.lora_init_without_apply = True
        try:
            server = xllamacpp.Server(p)
        except Exception as exc:  # llama.cpp's load failure (bad GGUF, adapter of another base): name it
            raise ModelUnavailable(f"llama.cpp could not load {m.gguf.name}: {exc}", param="model") from exc
        log.info("llama.cpp instance for %s with %d adapters at %s", m.key, len(adapters), server.listening_address)
        return _Instance(server, server.listening_address, list(adapters))

    def _stop(self, inst: _Instance) -> None:
        inst.server = None  # the wheel's destructor stops the server's threads

    def _discard(self, m: GGUFModel) -> None:
        with m.lock:
            if m.current is not None:
                self._retire(m.current)
                m.current = None

    def _unload_adapters(self, m: GGUFModel, model_id: str) -> None:
        """The deleted adapters leave the adapter list: a new instance starts without them (requests
        already running on the old one finish)."""
        with m.lock:
            gone = [p for p, mid in m.adapters.items() if belongs_to(mid, model_id)]
            for p in gone:
                del m.adapters[p]
            if m.current is not None and any(p in m.current.adapters for p in gone):
                self._pool.submit(self._rebuild, m)

    def _rebuild(self, m: GGUFModel) -> None:
        try:
            with m.build_lock:
                with m.lock:
                    wanted = list(m.adapters)
                self._swap(m, wanted)
        except Exception:  # the old instance keeps serving; the next new adapter rebuilds again
            log.exception("rebuilding the llama.cpp instance for %s failed", m.key)

    def _retire(self, inst: _Instance) -> None:
        with self._lock:
            inst.retired = True
            if inst.active == 0:
                self._stop(inst)

    def loaded(self) -> dict[str, list[str]]:
        """Served GGUFs and the model ids of the adapters their current instance has (a deleted one
        until the instance without it has taken over)."""
        out = {}
        for key, m in list(self.models.items()):
            cur = m.current
            out[key] = [m.names[p] for p in (cur.adapters if cur else [])]
        return out

    # -- requests --

    def _target(self, m: GGUFModel, handle: ModelHandle, n: int) -> _Instance | None:
        inst = m.current
        if inst is None or (handle.adapter is not None and handle.adapter not in inst.adapters):
            return None
        inst.active += n
        return inst

    def _body(self, inst: _Instance, handle: ModelHandle, ids: list[int], p: SamplingParams) -> dict:
        m: GGUFModel = handle.backend
        body = {
            "prompt": list(ids), "stream": True, "temperature": p.temperature, "top_p": p.top_p,
            # llama.cpp's defaults prune with top_k=40 and min_p=0.05; OpenAI's semantics have neither.
            "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "max_tokens": p.max_tokens if p.max_tokens is not None else m.context_length - len(ids),
            "stop": list(p.stop), "ignore_eos": p.ignore_eos, "cache_prompt": True,
            "lora": [{"id": i, "scale": 1.0 if a == handle.adapter else 0.0} for i, a in enumerate(inst.adapters)],
        }
        if p.logprobs:
            body["logprobs"] = max(1, p.top_logprobs)
        if p.json_schema is not None:
            schema = dict(p.json_schema)
            # Compact separators, as the torch engine's grammar: a small model cannot loop on blanks.
            schema.setdefault("x-guidance", {"whitespace_flexible": False, "item_separator": ", ",
                                             "key_separator": ": "})
            body["json_schema"] = schema
        return body

    def _release(self, inst: _Instance) -> None:
        inst.active -= 1
        if inst.retired and inst.active == 0:
            self._stop(inst)

    def _url(self, inst: _Instance) -> str:
        return inst.url

    def _logprobs(self, inst: _Instance, lp: dict | None, p: SamplingParams) -> list[TokenLogprob] | None:
        return _logprobs(lp, p)


def _logprobs(lp: dict | None, p: SamplingParams) -> list[TokenLogprob] | None:
    if not lp:
        return None
    out = []
    for t in lp.get("content") or []:
        top = [(x["token"], list(x.get("bytes") or []), max(float(x["logprob"]), -9999.0))
               for x in (t.get("top_logprobs") or [])[: p.top_logprobs]]
        out.append(TokenLogprob(t["token"], list(t.get("bytes") or []), max(float(t["logprob"]), -9999.0), top))
    return out or None
