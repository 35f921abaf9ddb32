"""Export a trained model dir (final/ or checkpoints/step-N) for use outside tunery as a Hugging Face
directory (GGUF for llama.cpp and Ollama: inference/convert.py's export_gguf)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunery.errors import InvalidRequest
from tunery.train.checkpoint import META_FILE, STATE_FILE, is_adapter_dir


def export_model(src: Path | str, out: Path | str, *, merge: bool = True) -> Path:
    """Write a standalone Hugging Face model directory (merge=True: LoRA merged into the base weights)
    or a clean copy of the adapter/weights without resume state (merge=False)."""
    src, out = Path(src), Path(out)
    meta_path = src / META_FILE
    if not meta_path.exists():
        raise InvalidRequest(f"{src} is not a tunery model directory (no {META_FILE}); pass a run's final/ "
                             "or checkpoints/step-N folder", param="dir")
    meta = json.loads(meta_path.read_text())
    if out.exists() and any(out.iterdir()):
        raise InvalidRequest(f"{out} already exists and is not empty", param="output")
    is_adapter = is_adapter_dir(src)
    if not merge or not is_adapter:
        shutil.copytree(src, out, ignore=shutil.ignore_patterns(STATE_FILE, "*.tmp"), dirs_exist_ok=True)
        return out
    import torch
    from peft import PeftModel

    from tunery.models import load_model

    base, tok = load_model(meta["base_model"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(src)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps({**meta, "method": "full", "merged_from": str(src.resolve()),
                                             "merged_method": meta.get("method")}, indent=2, default=str))
    return out
