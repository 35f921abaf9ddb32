"""Base-model registry: aliases, the bundled model, local directories, Hugging Face ids."""

from tunery.models.registry import (
    BUILTIN,
    DEFAULT_MODEL,
    BaseModelSpec,
    ResolvedModel,
    context_length,
    is_available,
    list_models,
    load_model,
    load_tokenizer,
    materialize,
    pull,
    require_chat_template,
    resolve,
    set_alias,
)
from tunery.models.runtime import pick_device, setup_threads

__all__ = [
    "BUILTIN", "DEFAULT_MODEL", "BaseModelSpec", "ResolvedModel", "context_length", "is_available",
    "list_models", "load_model", "load_tokenizer", "materialize", "pull", "require_chat_template",
    "resolve", "set_alias", "pick_device", "setup_threads",
]
