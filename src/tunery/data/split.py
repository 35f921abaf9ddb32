"""Deterministic train/validation split with no example on both sides (two streaming passes)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from tunery.data.formats import check_object
from tunery.data.reading import iter_lines, parse_line
from tunery.data.validation import _example_key
from tunery.errors import InvalidRequest


@dataclass
class SplitResult:
    train_path: Path
    valid_path: Path
    n_train: int
    n_valid: int
    n_duplicates: int
    """Exact duplicates dropped (each example is written once, so none can straddle the split)."""
    n_invalid: int
    """Lines skipped because they are not valid examples (run `tunery data validate` to see why)."""


def _unique_valid(path):
    """(line bytes) of each valid, first-seen example, in file order; plus counts of what was skipped."""
    seen: set[int] = set()
    expected = None
    stats = {"dup": 0, "invalid": 0}

    def gen():
        nonlocal expected
        for n, raw in iter_lines(path):
            obj, problem = parse_line(raw)
            if problem is not None:
                stats["invalid"] += 1
                continue
            res = check_object(obj, n, expected)
            if res.example is None:
                stats["invalid"] += 1
                continue
            expected = expected or res.format
            key = _example_key(res.example)
            if key in seen:
                stats["dup"] += 1
                continue
            seen.add(key)
            yield raw
    return gen(), stats


def split_file(path: str | PathLike, valid_fraction: float = 0.1, seed: int = 0,
               out_dir: str | PathLike | None = None) -> SplitResult:
    """Write <stem>_train.jsonl and <stem>_valid.jsonl; the same input and seed give the same files."""
    if not 0 < valid_fraction < 1:
        raise InvalidRequest("valid_fraction must be between 0 and 1 (exclusive)", param="valid_fraction")
    src = Path(path)
    out = Path(out_dir) if out_dir else src.parent
    out.mkdir(parents=True, exist_ok=True)
    train_path, valid_path = out / f"{src.stem}_train.jsonl", out / f"{src.stem}_valid.jsonl"
    if src.resolve() in (train_path.resolve(), valid_path.resolve()):
        raise InvalidRequest("the output files would overwrite the input; pass another --out-dir")
    examples, _ = _unique_valid(src)
    n = sum(1 for _ in examples)
    if n < 2:
        raise InvalidRequest(f"{src.name} has {n} valid example(s); a split needs at least 2", param="file")
    k = min(n - 1, max(1, round(n * valid_fraction)))
    chosen = set(random.Random(seed).sample(range(n), k))
    examples, stats = _unique_valid(src)
    n_train = n_valid = 0
    with open(train_path, "wb") as ft, open(valid_path, "wb") as fv:
        for i, raw in enumerate(examples):
            if i in chosen:
                fv.write(raw + b"\n")
                n_valid += 1
            else:
                ft.write(raw + b"\n")
                n_train += 1
    return SplitResult(train_path, valid_path, n_train, n_valid, stats["dup"], stats["invalid"])
