"""Model handles shared by the router and its backends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The engine's configuration is InferenceSettings (tunery.settings), a section of Settings.

@dataclass(frozen=True)
class Servable:
    """What a model name means for serving (same fields as tunery.store.ServableModel)."""

    id: str
    base_model: str
    adapter_dir: Path | None = None


def servable(model: "str | Servable", settings) -> tuple["Servable", Path | None]:
    """`model` as a Servable (a plain name: its canonical base model, so an alias and its target share one
    loaded copy) and its adapter or full fine-tune directory, if any."""
    if isinstance(model, str):
        from tunery.models import resolve

        model = Servable(id=model, base_model=resolve(model, settings).name, adapter_dir=None)
    adapter_dir = getattr(model, "adapter_dir", None)
    return model, Path(adapter_dir) if adapter_dir else None


def belongs_to(served_id: str, model_id: str) -> bool:
    """Whether a served model id is `model_id` or one of its checkpoints (what deleting `model_id` unloads)."""
    return served_id == model_id or served_id.startswith(model_id + ":ckpt-step-")


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

    def prompt_ids(self, prompt: str | list[int] | None = None, messages: list[dict] | None = None) -> list[int]:
        """The token ids of a chat (`messages`), a text prompt or a prompt given as ids."""
        if messages is not None:
            return self.encode_chat(messages)
        return self.encode(prompt) if isinstance(prompt, str) else list(prompt or [])

    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
            ids = [tok.bos_token_id] + ids
        return ids
