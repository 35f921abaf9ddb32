"""The router in front of the inference backends: which backend serves a model, and one interface
(prepare → submit → Generation events, unload, loaded) for the OpenAI routes, the CLI and benchmarks.

Backends: `llamacpp` (llama.cpp's server in-process, through xllamacpp), `vllm` (vLLM's OpenAI server as a
child process from its own interpreter, see tunery.inference.vllm) and `torch` (tunery's own engine).
TUNERY_INFERENCE_BACKEND=torch|llamacpp|vllm|auto picks one for everything it can serve. The default, `auto`,
is llama.cpp on CPU: measured in one run of bench/bench_backends.py it decodes 4.6x faster than the torch
engine through the API with tunery's overhead within noise of raw llama.cpp, and a fine-tune trained here
keeps its facts on the Q4_1 base (bench/bench_backend_facts.py: the same recall as on the torch engine).
On a GPU (TUNERY_DEVICE or a visible CUDA/MPS device) `auto` picks vLLM when its interpreter is found
(TUNERY_VLLM_PYTHON or the checkout's .venv-vllm), else the torch engine (the xllamacpp wheel is a CPU build).
vLLM serves every Hugging Face model directory it supports, base models, LoRA adapters and full fine-tunes.
The torch engine also serves what llama.cpp cannot: full fine-tunes and base models that are not
Llama-architecture and have no GGUF (conversion here writes Llama GGUFs only), and every model when
xllamacpp is missing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable, TuneryError
from tunery.inference.config import ModelHandle, Servable
from tunery.inference.generation import Generation, SamplingParams
from tunery.settings import InferenceSettings, Settings, get_settings
from tunery.train.checkpoint import is_adapter_dir

log = logging.getLogger("tunery.inference")
BACKENDS = ("auto", "llamacpp", "torch", "vllm")
DEFAULT_BACKEND = "auto"  # llama.cpp on CPU, vLLM (else the torch engine) on a GPU (see the module docstring)


def configured_backend(backend: str) -> str:
    """InferenceSettings.backend (TUNERY_INFERENCE_BACKEND), checked."""
    name = (backend or DEFAULT_BACKEND).strip().lower()
    if name not in BACKENDS:
        raise InvalidRequest(f"TUNERY_INFERENCE_BACKEND must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name


def serving_backend(model: str | Servable, settings: Settings | None = None, choice: str | None = None, *,
                    listing: bool = False) -> str:
    from tunery.inference import vllm
    from tunery.inference.llamacpp import available

    settings = settings or get_settings()
    choice = choice or configured_backend(settings.inference.backend)
    if choice == "vllm":  # not installed: its engine says how to install it (a 400 naming `make vllm`)
        return "vllm"
    if choice == "auto" and _on_gpu(settings):
        return "vllm" if vllm.available(settings) else "torch"
    if choice == "torch" or not available():
        return "torch"
    adapter_dir = getattr(model, "adapter_dir", None)
    if adapter_dir is not None and not is_adapter_dir(adapter_dir):
        if _model_type(Path(adapter_dir)) != "llama":  # a full fine-tune: conversion writes Llama GGUFs
            return "torch"
    base = model if isinstance(model, str) else model.base_model
    return "llamacpp" if _llamacpp_base(base, settings, listing) else "torch"


def _on_gpu(settings: Settings) -> bool:
    if settings.compute.device and settings.compute.device != "auto":
        return settings.compute.device != "cpu"
    from tunery.models import pick_device

    return pick_device(settings.compute.device) != "cpu"


def _model_type(model_dir: Path) -> str | None:
    import json

    try:
        return json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _llamacpp_base(base: str, settings: Settings, listing: bool = False) -> bool:
    from tunery.inference.convert import base_gguf
    from tunery.models import registry

    try:
        spec = registry.resolve(base, settings).spec
        if spec.kind == "gguf_package":
            if listing:
                return True
            return base_gguf(base, settings) is not None or not registry.is_available(spec, settings)
        if listing:
            where = Path(spec.source) if spec.kind == "local" else registry.cache_dir(spec, settings)
            return _model_type(where) == "llama"
        return _model_type(registry.materialize(base, settings)) == "llama"
    except TuneryError:
        return not listing  # serving: let prepare() raise the precise error
    except (OSError, ValueError):
        return False


class Router:
    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None,
                 backend: str | None = None):
        self.settings = settings or get_settings()
        self.config = config or self.settings.inference
        self.choice = backend or configured_backend(self.config.backend)
        self._engines: dict[str, object] = {}
        self._lock = threading.Lock()
        self._where: dict[str, str] = {}  # model id → backend that served it last

    # -- backends --

    def engine(self, name: str):
        with self._lock:
            e = self._engines.get(name)
            if e is None:
                if name == "llamacpp":
                    from tunery.inference.llamacpp import LlamaCppEngine

                    e = LlamaCppEngine(self.settings, self.config)
                elif name == "vllm":
                    from tunery.inference.vllm import VllmEngine

                    e = VllmEngine(self.settings, self.config)
                else:
                    from tunery.inference.engine import Engine

                    e = Engine(self.settings, self.config)
                self._engines[name] = e
            return e

    def backend_for(self, model: str | Servable, *, listing: bool = False) -> str:
        """Which backend serves `model`, without loading it. `listing`: never convert or download a base
        model to find out (for /v1/models and `tunery models list`; an unconverted Hugging Face base is
        judged by its config.json where one is on disk, else it is reported as the torch engine's)."""
        return serving_backend(model, self.settings, self.choice, listing=listing)

    # -- the engine interface --

    def prepare(self, model: str | Servable) -> ModelHandle:
        name = self.backend_for(model)
        model_id = model if isinstance(model, str) else model.id
        try:
            handle = self.engine(name).prepare(model)
        except TuneryError:
            raise
        except Exception as exc:  # a model directory that does not load is the request's problem: 400
            log.exception("loading %s on %s failed", model_id, name)
            raise ModelUnavailable(f"model {model_id!r} could not be loaded: {type(exc).__name__}: {exc}",
                                   param="model") from exc
        handle.engine = self.engine(name)
        handle.backend_name = name
        self._where[model_id] = name
        return handle

    def submit(self, handle: ModelHandle, prompt_ids: list[int], params: SamplingParams, loop=None,
               prompt_param: str = "messages") -> Generation:
        return handle.engine.submit(handle, prompt_ids, params, loop, prompt_param)

    def generate(self, model, *, prompt=None, messages=None, **params) -> Generation:
        handle = self.prepare(model)
        return self.submit(handle, handle.prompt_ids(prompt, messages), SamplingParams(**params).validate())

    def unload(self, model_id: str) -> None:
        for e in list(self._engines.values()):
            e.unload(model_id)

    def loaded(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in list(self._engines.values()):
            for k, v in e.loaded().items():
                out.setdefault(k, []).extend(v)
        return out

    def waiting(self) -> int:
        n = 0
        for e in list(self._engines.values()):
            n += e.waiting() if hasattr(e, "waiting") else sum(
                r.params.n for b in e.backends.values() for r in b.waiting)
        return n

    @property
    def steps(self) -> int:
        e = self._engines.get("torch")
        return e.steps if e is not None else 0

    def close(self) -> None:
        for e in list(self._engines.values()):
            e.close()


_engine_lock = threading.Lock()


def get_engine(app_or_settings=None) -> Router:
    """The app's router (created on first use, on app.state.engine), or a new one for a Settings object."""
    state = getattr(app_or_settings, "state", None)
    if state is None:
        return Router(app_or_settings if isinstance(app_or_settings, Settings) else None)
    engine = getattr(state, "engine", None)
    if engine is None:
        with _engine_lock:
            engine = getattr(state, "engine", None)
            if engine is None:
                engine = Router(getattr(state, "settings", None))
                state.engine = engine
    return engine


def unload_models(app, names) -> None:
    """Drop deleted models from the app's engine, if it has one (they stop answering at once)."""
    engine = getattr(app.state, "engine", None)
    if engine is None:
        return
    for name in names:
        try:
            engine.unload(name)
        except Exception:  # the model is deleted either way; a failed unload only costs memory
            log.exception("engine.unload(%s) failed", name)


def with_backend(app, store, org, obj: dict, *, allow_paths: bool = True) -> dict:
    """A /v1/models object plus `backend`: which backend serves it ("llamacpp", "vllm" or "torch"), judged without
    loading or converting anything. OpenAI's fields stay as they are; the SDK keeps extras as model_extra."""
    from tunery.store.models import find_servable_model

    try:
        servable = find_servable_model(store, org, obj["id"], allow_paths=allow_paths)
        obj["backend"] = get_engine(app).backend_for(servable, listing=True)
    except TuneryError:  # listed but not servable here (e.g. a base model whose package is missing)
        obj["backend"] = None
    return obj
