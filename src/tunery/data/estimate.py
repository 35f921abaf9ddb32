"""Epochs, trained tokens and training-time estimates from measured throughput (never a guess).

The trainer calls `record_throughput` at the end of every run; `measured_throughput` returns the
median of the last recorded runs for that model and method, or else a built-in figure measured on
the development machine with a real LoRA run (see BUILTIN_THROUGHPUT), and says which it used.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from tunery.settings import Settings, get_settings

KEEP_RUNS = 5

# Built-in trained tokens/s, used until the trainer has recorded runs on this machine. Each was measured
# with tunery's own trainer (`tunery.train.train`, batch 8, ~65-token chats, fp32, steady-state steps 2..N)
# on the 2-core development machine. That machine was shared by several busy processes, so the figure is
# trained tokens per CPU-second of a single torch thread, which load does not distort; two idle threads
# train ~1.3x faster (the lead saw ~150 tokens/s), so these estimates err on the long side.
BUILTIN_THROUGHPUT: dict[tuple[str, str], tuple[float, str]] = {
    ("smollm2-135m-instruct", "lora"): (115.0, "LoRA r=16 on one torch thread, measured 2026-11-21"),
    ("smollm2-135m-instruct", "full"): (74.0, "full fine-tune on one torch thread, measured 2026-11-21"),
    ("gemma-3-270m", "lora"): (80.0, "LoRA, measured by the lead, not re-measured here"),
}
BUILTIN_NOTE = "built-in figure for this machine class (2 CPU cores, fp32; tunery's trainer, {what})"


def billed_tokens(lengths, context_length: int | None, epochs: int) -> int:
    """Σ min(context, tokens per example) × epochs: the tokens a job trains on (and OpenAI bills)."""
    if context_length:
        return sum(min(context_length, n) for n in lengths) * epochs
    return sum(lengths) * epochs


def _throughput_file(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).home / "throughput.json"


def _model_key(model: str, settings: Settings | None = None) -> str:
    """The registry name behind an alias (gpt-4o-mini → smollm2-135m-instruct), else the name itself."""
    try:
        from tunery.models import resolve

        return resolve(model, settings).spec.name
    except Exception:  # unknown names still get their own record
        return model


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_throughput(model: str, method: str, tokens_per_second: float,
                      settings: Settings | None = None) -> None:
    """Remember a finished run's trained tokens/s (last few runs kept per model and method)."""
    if not tokens_per_second or tokens_per_second <= 0:
        return
    from filelock import FileLock

    path = _throughput_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = f"{_model_key(model, settings)}|{method}"
    with FileLock(str(path) + ".lock"):
        data = _load(path)
        entry = data.get(key) if isinstance(data.get(key), dict) else {}
        runs = [r for r in entry.get("runs", []) if isinstance(r, dict)][-(KEEP_RUNS - 1):]
        runs.append({"tokens_per_second": float(tokens_per_second), "recorded_at": int(time.time())})
        data[key] = {"model": key.split("|")[0], "method": method, "runs": runs}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)


def measured_throughput(model: str, method: str = "lora",
                        settings: Settings | None = None) -> tuple[float, str]:
    """(trained tokens/s, where the figure comes from) for a model and method on this machine."""
    name = _model_key(model, settings)
    entry = _load(_throughput_file(settings)).get(f"{name}|{method}")
    if isinstance(entry, dict):
        vals = [r.get("tokens_per_second") for r in entry.get("runs", []) if isinstance(r, dict)]
        vals = [float(v) for v in vals if isinstance(v, (int, float)) and v > 0]
        if vals:
            return statistics.median(vals), f"measured: median of the last {len(vals)} tunery run(s) here"
    if (name, method) in BUILTIN_THROUGHPUT:
        tps, what = BUILTIN_THROUGHPUT[(name, method)]
        return tps, BUILTIN_NOTE.format(what=what)
    tps, what = BUILTIN_THROUGHPUT[("smollm2-135m-instruct", method if method == "full" else "lora")]
    return tps, (BUILTIN_NOTE.format(what=what) + f" of smollm2-135m-instruct: {name} was never measured "
                 "here, so expect it to differ")


def estimate_seconds(trained_tokens: int, model: str, method: str = "lora",
                     settings: Settings | None = None) -> tuple[float, float, str]:
    """(seconds, tokens/s, source) to train `trained_tokens` tokens."""
    tps, source = measured_throughput(model, method, settings)
    return trained_tokens / tps, tps, source
