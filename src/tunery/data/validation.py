"""The validator: one streaming pass over a JSONL file that reports every problem at once, grouped by
kind, with the first line numbers of each and how to fix it."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Callable

from tunery.data.formats import KINDS, Example, Format, check_object
from tunery.data.reading import iter_lines, parse_line

MIN_EXAMPLES = 10
FEW_EXAMPLES = 50
MAX_LINES_PER_KIND = 5
TOKEN_BATCH = 2048
LONG_FRACTION = 0.5
"""Examples over this fraction of the context get a long_example warning."""


@dataclass
class Problem:
    """Every occurrence of one kind of problem in one file."""

    kind: str
    file: str = "training"
    count: int = 0
    lines: list[int] = field(default_factory=list)
    """The first few line numbers (0 for problems of the whole file)."""
    details: list[str] = field(default_factory=list)
    _last: int = field(default=-1, repr=False)

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    @property
    def title(self) -> str:
        return KINDS[self.kind].title

    @property
    def hint(self) -> str:
        return KINDS[self.kind].hint

    def add(self, line: int, detail: str = "") -> None:
        if line and self._last == line:  # one line counts once per kind
            return
        self._last = line
        self.count += 1
        if len(self.lines) < MAX_LINES_PER_KIND:
            self.lines.append(line)
            self.details.append(detail)

    def where(self) -> str:
        """'line 7', 'lines 7, 12 and 30 more', or 'the file'."""
        prefix = "validation file " if self.file == "validation" else ""
        if not self.lines or self.lines == [0]:
            return f"{prefix}whole file" if prefix else "the file"
        shown = ", ".join(str(n) for n in self.lines)
        more = self.count - len(self.lines)
        word = "line" if self.count == 1 else "lines"
        return f"{prefix}{word} {shown}" + (f" and {more} more" if more > 0 else "")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "file": self.file, "count": self.count,
                "lines": list(self.lines), "details": list(self.details), "message": self.title,
                "hint": self.hint}

    def describe(self) -> str:
        first = next((d for d in self.details if d), "")
        return f"{self.where()}: {self.title}" + (f" ({first})" if first else "") + f" — {self.hint}"


@dataclass
class ValidationReport:
    """Everything the validator found. Keys of to_dict() are stable: the API stores and returns them."""

    path: str
    format: Format | None = None
    n_lines: int = 0
    n_examples: int = 0
    """Valid training examples (the ones a trainer would use)."""
    model: str | None = None
    context_length: int | None = None
    problems: dict[tuple[str, str], Problem] = field(default_factory=dict)
    token_stats: dict | None = None
    validation_path: str | None = None
    n_validation_examples: int | None = None

    def add(self, kind: str, line: int, detail: str = "", file: str = "training") -> None:
        p = self.problems.get((kind, file))
        if p is None:
            p = self.problems[(kind, file)] = Problem(kind, file)
        p.add(line, detail)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems.values() if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems.values() if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems.values()}

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "path": self.path,
            "format": self.format,
            "n_lines": self.n_lines,
            "n_examples": self.n_examples,
            "validation_path": self.validation_path,
            "n_validation_examples": self.n_validation_examples,
            "model": self.model,
            "context_length": self.context_length,
            "n_errors": sum(p.count for p in self.errors),
            "n_warnings": sum(p.count for p in self.warnings),
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
            "token_stats": self.token_stats,
            "summary": self.summary(),
        }

    def summary(self, max_kinds: int = 6) -> str:
        """One paragraph naming the first problems with their line numbers and fixes."""
        name = Path(self.path).name
        what = f"{self.n_examples} valid {self.format or 'unknown-format'} example" + (
            "" if self.n_examples == 1 else "s")
        if self.ok:
            text = f"{name}: OK, {what}."
        else:
            n = sum(p.count for p in self.errors)
            parts = [p.describe() for p in self.errors[:max_kinds]]
            rest = len(self.errors) - max_kinds
            text = (f"{name}: {n} problem{'s' if n != 1 else ''} to fix ({what}). " + "; ".join(parts)
                    + (f"; and {rest} more kinds of problem." if rest > 0 else "."))
        if self.warnings:
            ws = [f"{p.where()}: {p.title}" for p in self.warnings[:4]]
            text += " Warnings: " + "; ".join(ws) + "."
        return text

    def __str__(self) -> str:
        return self.summary()


def _example_key(ex: Example) -> int:
    """A hash of the example's content: equal for exact duplicates, whatever the JSON spacing."""
    def msgs_key(msgs):
        return tuple((m.get("role"), m.get("content"), m.get("weight", 1), m.get("name"),
                      repr(m["tool_calls"]) if "tool_calls" in m else None) for m in msgs)
    if ex.kind == "chat":
        return hash(("c", msgs_key(ex.messages), repr(ex.tools) if ex.tools else None))
    if ex.kind == "completion":
        return hash(("p", ex.prompt, ex.completion))
    return hash(("d", msgs_key(ex.messages), msgs_key(ex.preferred), msgs_key(ex.non_preferred)))


class _Pass:
    """One streaming pass over one file, feeding a report."""

    def __init__(self, report: ValidationReport, file: str, counter, seen: dict[int, int] | None,
                 train_keys: dict[int, int] | None, on_batch: Callable | None,
                 progress: Callable | None = None):
        self.report, self.file, self.counter = report, file, counter
        self.seen: dict[int, int] = seen if seen is not None else {}
        self.train_keys = train_keys
        self.on_batch = on_batch
        self.progress = (lambda done: progress(file, done)) if progress else None
        self.pending: list[Example] = []
        self.lengths = array("l")
        self.lines = array("l")
        self.format: Format | None = None
        self.n_examples = 0
        self.n_lines = 0

    def run(self, path) -> None:
        rep, file = self.report, self.file
        expected: Format | None = None
        for n, raw in iter_lines(path, self.progress):
            self.n_lines += 1
            obj, problem = parse_line(raw)
            if problem is not None:
                rep.add(problem[0], n, problem[1], file)
                continue
            res = check_object(obj, n, expected)
            for kind, detail in res.problems:
                rep.add(kind, n, detail, file)
            ex = res.example
            if ex is None:
                continue
            expected = expected or res.format
            key = _example_key(ex)
            first = self.seen.get(key)
            if first is not None:
                rep.add("duplicate", n, f"same as line {first}", file)
                continue
            self.seen[key] = n
            if self.train_keys is not None:
                t = self.train_keys.get(key)
                if t is not None:
                    rep.add("train_valid_overlap", n, f"same as training line {t}", file)
            self.n_examples += 1
            if self.counter is not None or self.on_batch is not None:
                self.pending.append(ex)
                if len(self.pending) >= TOKEN_BATCH:
                    self.flush()
        self.flush()
        self.format = expected

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        counts = None
        if self.counter is not None:
            rep, ctx = self.report, self.report.context_length
            counts = self.counter.count_examples(batch)
            long_at = int(ctx * LONG_FRACTION) if ctx else None
            for ex, c in zip(batch, counts):
                if isinstance(c, str):
                    rep.add("template_error", ex.line, c[:120], self.file)
                    continue
                self.lengths.append(c)
                self.lines.append(ex.line)
                if ctx and c > ctx:
                    rep.add("over_context", ex.line, f"{c} tokens > {ctx}", self.file)
                elif long_at and c > long_at:
                    rep.add("long_example", ex.line, f"{c} tokens", self.file)
        if self.on_batch is not None:
            self.on_batch(self.file, batch, counts)


def _length_stats(lengths: array) -> dict | None:
    if not len(lengths):
        return None
    s = sorted(lengths)
    n = len(s)
    return {"n": n, "min": s[0], "mean": round(sum(s) / n, 1), "median": s[n // 2],
            "p95": s[min(n - 1, math.ceil(0.95 * n) - 1)], "max": s[-1], "total": sum(s)}


def _check_uneven(p: _Pass, report: ValidationReport, stats: dict | None) -> None:
    if not stats or stats["n"] < MIN_EXAMPLES:
        return
    limit = max(8 * stats["median"], 256)
    if stats["max"] > limit:
        for line, n in zip(p.lines, p.lengths):
            if n > limit:
                report.add("uneven_lengths", line, f"{n} tokens vs median {stats['median']}", p.file)


def validate_file(path: str | PathLike, *, model: str | None = None,
                  validation_path: str | PathLike | None = None,
                  _on_batch: Callable | None = None, progress: Callable | None = None,
                  settings=None) -> ValidationReport:
    """Validate a training file (and optionally its validation file) in one streaming pass each.

    With `model`, examples are tokenized with that model's own tokenizer and checked against its
    context. Never raises for bad data: every problem is in the report. Raises ModelNotFound /
    ModelUnavailable for a model that cannot be loaded. `progress(file, bytes_read)` is called now and
    then, file being "training" or "validation". `settings`: where models are (default: the environment's).
    """
    report = ValidationReport(path=str(path), model=model)
    counter = None
    if model is not None:
        from tunery.data.tokens import get_counter
        from tunery.models import context_length

        counter = get_counter(model, settings)
        report.context_length = context_length(model, settings)
    train = _Pass(report, "training", counter, None, None, _on_batch, progress)
    train.run(path)
    report.format, report.n_lines, report.n_examples = train.format, train.n_lines, train.n_examples
    if train.n_lines == 0:
        report.add("empty_file", 0, "no non-blank lines")
    elif train.n_examples < MIN_EXAMPLES:
        report.add("too_few_examples", 0, f"{train.n_examples} valid")
    elif train.n_examples < FEW_EXAMPLES:
        report.add("few_examples", 0, f"{train.n_examples} examples")
    if counter is not None and report.format == "chat" and not counter.has_chat_template:
        report.add("no_chat_template", 0, f"model {model}")
    stats = _length_stats(train.lengths) if counter is not None else None
    _check_uneven(train, report, stats)
    if stats:
        report.token_stats = {"tokens": stats}
    if validation_path is not None:
        report.validation_path = str(validation_path)
        valid = _Pass(report, "validation", counter, {}, train.seen, _on_batch, progress)
        valid.run(validation_path)
        report.n_validation_examples = valid.n_examples
        if valid.n_lines == 0:
            report.add("empty_file", 0, "no non-blank lines", "validation")
        if valid.format and report.format and valid.format != report.format:
            report.add("mixed_formats", 0, f"{valid.format} validation file for {report.format} training",
                       "validation")
        if counter is not None and report.token_stats is not None:
            report.token_stats["validation_tokens"] = _length_stats(valid.lengths)
    return report
