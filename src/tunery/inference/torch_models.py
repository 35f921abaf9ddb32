"""The torch engine's loaded weights (a base model or a full fine-tune) with their adapters, and its
per-request and per-sequence state."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from tunery.inference.generation import Generation, SamplingParams, TokenLogprob
from tunery.inference.config import ModelHandle

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
        self.cache_kwarg = _cache_kwarg(model)
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


def _cache_kwarg(model) -> str:
    """The name the model's forward takes its KV cache by: `cache` (transformers >= 5.2x), else the older
    `past_key_values` (deprecated there, warned about on every call)."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


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
