"""Configuration and model handles shared by the router and its backends."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
