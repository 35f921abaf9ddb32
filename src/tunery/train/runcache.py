"""Small JSON results a run makes with its base model before training (replay pairs, paraphrases), kept under
the model cache so that the next run with the same model and inputs reads them back instead of decoding
again: the usual experiment repeats a file with other hyperparameters."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def path_for(kind: str, model_name: str, key: list) -> Path:
    """Where the result for these inputs lives: `kind/` under the model cache, named by a hash of the
    model's weight files (path, name, size, mtime) and `key` (everything else the result depends on)."""
    from tunery.models.registry import materialize
    from tunery.settings import get_settings

    model_dir = Path(materialize(model_name))
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.glob("*.safetensors"))
    blob = json.dumps([str(model_dir.resolve()), weights, *key], ensure_ascii=False)
    return Path(get_settings().model_cache) / kind / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"


def read(path: Path, valid) -> object | None:
    """The cached value, or None when there is none or `valid(value)` rejects it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if valid(value) else None


def write(path: Path, value) -> None:
    """Written whole (a temporary file renamed into place); a cache that cannot be written is skipped."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def made_with_model(kind: str, model_name: str, key: list, valid, make):
    """The cached result for these inputs, else `make(model, tokenizer)` with the model loaded for the purpose
    (released after), written to the cache."""
    from tunery.models.registry import load_model

    path = path_for(kind, model_name, key)
    cached = read(path, valid)
    if cached is not None:
        return cached
    model, tokenizer = load_model(model_name)
    try:
        value = make(model, tokenizer)
    finally:
        del model
    write(path, value)
    return value
