"""Token statistics, the planned run (epochs, rewrites, replay), trained tokens and a training-time estimate
for one file."""

from __future__ import annotations

import math
from array import array
from typing import Protocol
from os import PathLike

from tunery.data.estimate import billed_tokens, measured_throughput
from tunery.data.validation import validate_file

HIST_BINS = 10


class Planner(Protocol):
    """What the trainer would do with the file (tunery.train.plan.RunPlanner), fed example by example.
    The command hands it in: train/ reads data/, so data/ does not import train/."""

    n_epochs: int | None

    def add(self, example, tokens: int, assistant_tokens: int) -> None: ...

    def result(self) -> dict: ...


def describe(values) -> dict | None:
    """min/mean/p95/max (and median, total) of a sequence of numbers."""
    if not len(values):
        return None
    s = sorted(values)
    n = len(s)
    return {"min": s[0], "mean": round(sum(s) / n, 1), "median": s[n // 2],
            "p95": s[min(n - 1, math.ceil(0.95 * n) - 1)], "max": s[-1], "total": sum(s)}


def histogram(values, bins: int = HIST_BINS) -> dict:
    """Equal-width bins over [min, max]: {"edges": [bins+1 numbers], "counts": [bins numbers]}."""
    if not len(values):
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // width)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return {"edges": [lo + i * width for i in range(len(counts) + 1)], "counts": counts}


def file_stats(path: str | PathLike, model: str, *, planner: Planner, method: str = "lora",
               progress=None) -> dict:
    """Everything `tunery data stats` shows, as a JSON-able dict (one streaming pass)."""
    from tunery.data.tokens import get_counter

    counter = get_counter(model)
    tokens, asst, n_msgs = array("l"), array("l"), array("l")

    def on_batch(file, batch, counts):
        if file != "training" or counts is None:
            return
        a_counts = counter.count_assistant(batch)
        for ex, c, a in zip(batch, counts, a_counts):
            if isinstance(c, str):
                continue
            tokens.append(c)
            asst.append(a)
            planner.add(ex, c, a)
            n_msgs.append(len(ex.messages) + (1 if ex.kind == "preference" else 0) if ex.messages else 2)

    report = validate_file(path, model=model, _on_batch=on_batch, progress=progress)
    ctx = report.context_length
    n = report.n_examples
    plan = planner.result()
    trained = plan["trained_tokens"]
    tps, source = measured_throughput(model, method)
    try:
        from tunery.models import resolve

        base = resolve(model).spec.name
    except Exception:  # the counter loaded it, so this only fails for exotic names; show the name as given
        base = model
    return {
        "path": str(path),
        "format": report.format,
        "model": model,
        "base_model": base,
        "context_length": ctx,
        "n_examples": n,
        "messages_per_example": describe(n_msgs),
        "tokens_per_example": describe(tokens),
        "assistant_tokens_per_example": describe(asst),
        "histogram": histogram(tokens),
        "n_over_context": sum(1 for t in tokens if ctx and t > ctx),
        "n_epochs": plan["n_epochs"],
        "n_epochs_source": "given" if planner.n_epochs else "auto",
        "batch_size": plan["batch_size"],
        "augment": plan["augment"],
        "replay": plan["replay"],
        "examples_per_epoch": plan["examples_per_epoch"],
        "early_stop": plan["early_stop"],
        "file_tokens": billed_tokens(tokens, ctx, 1),
        "trained_tokens_per_epoch": plan["trained_tokens_per_epoch"],
        "trained_tokens": trained,
        "method": method,
        "tokens_per_second": round(tps, 1),
        "throughput_source": source,
        "estimated_seconds": round(trained / tps, 1) if tps else None,
        "validation": {"ok": report.ok, "n_errors": sum(p.count for p in report.errors),
                       "summary": report.summary()},
    }
