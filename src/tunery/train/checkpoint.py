"""Checkpoint folders: a servable model (PEFT adapter or full weights) + tunery.json + resume state.

trainer_state.pt holds only tensors, numbers and strings, and is loaded with torch.load(weights_only=True),
so a checkpoint never runs code when resumed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.pt"
META_FILE = "tunery.json"
FORMAT_VERSION = 1


def save_model_dir(model, tokenizer, path: Path, meta: dict, state_dict: dict | None = None) -> None:
    """Write the servable model and tunery.json into path (atomically: tmp dir then rename); state_dict: the
    weights to write when the model's own are sharded over ranks (FSDP)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, default=str))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_state(path: Path, *, optimizer, step: int, trained_tokens: int, metrics: dict, history: list,
               optimizer_state: dict | None = None) -> None:
    """The resume state beside a checkpoint's weights; optimizer_state: the optimizer's whole state when it is
    sharded over ranks (FSDP; keyed by parameter name, see optimizer_by_index)."""
    import torch

    state = {
        "optimizer": optimizer_state or optimizer.state_dict(),
        "step": step,
        "trained_tokens": trained_tokens,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Python's random state as JSON text: weights_only loading accepts strings, not arbitrary tuples.
        "py_rng": json.dumps(_py_state()),
        "metrics": json.dumps(metrics),
        "history": json.dumps(history),
    }
    tmp = Path(path) / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, Path(path) / STATE_FILE)


def _py_state():
    v, s, g = random.getstate()
    return [v, list(s), g]


def load_state(path: Path) -> dict:
    import torch

    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    state["metrics"] = json.loads(state["metrics"])
    state["history"] = json.loads(state["history"])
    v, s, g = json.loads(state.pop("py_rng"))
    state["py_rng"] = (v, tuple(s), g)
    return state


def optimizer_by_name(state: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter index (Optimizer.state_dict) keyed by parameter name instead (as
    FSDP's whole state is); names: the trainable parameters' names in the optimizer's order."""
    if not any(isinstance(k, int) for k in state["state"]):
        return state
    return {"state": {names[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def optimizer_by_index(state: dict, names: list[str]) -> dict:
    """The inverse of optimizer_by_name: a state saved by a sharded run, loadable by one process."""
    if not any(isinstance(k, str) for k in state["state"]):
        return state
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["py_rng"])


def read_meta(path: Path) -> dict:
    p = Path(path) / META_FILE
    if not p.exists():
        from tunery.errors import InvalidRequest

        raise InvalidRequest(f"{path} is not a tunery checkpoint (no {META_FILE})", param="resume_from")
    return json.loads(p.read_text())


def prune(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step-N folders; returns the removed paths."""
    dirs = sorted((p for p in Path(checkpoints_dir).glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))
    gone = dirs[:-keep] if keep > 0 else dirs
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


# --- what the worker needs to know about a run's folders --------------------------------------------

RESUME_DIR = "resume"
"""<output_dir>/resume: the state a paused run saved (the trainer writes it, a resumed attempt reads it)."""
CHECKPOINTS_DIR = "checkpoints"
"""<output_dir>/checkpoints/step-N: one servable, resumable folder per epoch end (the newest few are kept)."""
FINAL_DIR = "final"
"""<output_dir>/final: the fine-tuned model of a finished run."""
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: Path | str) -> bool:
    """A LoRA adapter (PEFT's adapter_config.json beside its weights), not a full model's weights."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def is_model_dir(path: Path | str | None) -> bool:
    """A folder tunery's trainer wrote (a checkpoint, a final model, a resume state): it has tunery.json."""
    return path is not None and (Path(path) / META_FILE).is_file()


def meta_step(path: Path | str) -> int | None:
    """The optimizer step a checkpoint or resume folder was saved at (None when unreadable)."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    step = meta.get("step")
    return int(step) if isinstance(step, (int, float)) else None


def is_resume_dir(path: Path | str) -> bool:
    return Path(path).name == RESUME_DIR


def resume_point(output_dir: Path | str, checkpoints=()) -> tuple[Path | None, int]:
    """Where an earlier attempt left off: (folder, step) of the paused run's resume/ dir or of the newest
    complete checkpoint among `checkpoints` ((path, step) pairs, e.g. the job's checkpoint rows), whichever
    is later; (None, 0) when there is none."""
    best: tuple[Path | None, int] = (None, 0)
    for path, step in checkpoints:
        p = Path(path)
        complete = (p / META_FILE).exists() and (p / STATE_FILE).exists()
        if complete and step > best[1]:
            best = (p, step)
    resume = Path(output_dir) / RESUME_DIR
    if (resume / META_FILE).exists():
        step = meta_step(resume)
        if step is not None and step >= best[1]:
            best = (resume, step)
    return best
