"""Converters to and from chat JSONL: Q&A tables (CSV/TSV/JSON/JSONL), legacy prompt/completion, and
chat back to prompt/completion. Rows are streamed (except a JSON array file, which is one value)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from tunery.data.reading import iter_lines, parse_line
from tunery.errors import InvalidRequest

QUESTION_COLUMNS = ("question", "prompt", "input", "query", "instruction", "q")
ANSWER_COLUMNS = ("answer", "completion", "output", "response", "reply", "a")


@dataclass
class ConvertResult:
    out_path: Path
    n_written: int
    n_skipped: int
    skipped_lines: list[int]
    """The first few skipped rows/lines (1-based; a CSV header is line 1)."""
    question_column: str | None = None
    answer_column: str | None = None


def iter_rows(path: str | PathLike) -> Iterator[tuple[int, object]]:
    """(line or row number, row) from a .csv/.tsv (dicts), a .json array, or JSONL (any value)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                yield reader.line_num, row
        return
    if suffix == ".json":
        with open(p, encoding="utf-8-sig") as f:
            try:
                data = json.load(f)
            except ValueError as exc:
                raise InvalidRequest(f"{p.name} is not valid JSON: {exc}", param="file") from exc
        if isinstance(data, dict):  # {"data": [...]} and similar wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise InvalidRequest(f"{p.name} must hold a JSON array of objects", param="file")
        for i, row in enumerate(data, 1):
            yield i, row
        return
    for n, raw in iter_lines(p):
        obj, problem = parse_line(raw)
        yield n, (None if problem else obj)


def _pick(columns, wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    cols = [c for c in columns if isinstance(c, str)]
    if wanted:
        if wanted not in cols:
            raise InvalidRequest(f"no {what} column {wanted!r}; columns are: {', '.join(cols)}", param=what)
        return wanted
    lower = {c.lower().strip(): c for c in cols}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise InvalidRequest(f"cannot tell which column is the {what}; pass --{what} "
                         f"(columns: {', '.join(cols)})",
                         param=what)


def _with_stop(text: str, stop: str | None) -> str:
    return text + stop if stop and not text.endswith(stop) else text


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        self.n = 0
        self.skipped: list[int] = []
        self.n_skipped = 0

    def __enter__(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.out, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.n += 1

    def skip(self, line: int) -> None:
        self.n_skipped += 1
        if len(self.skipped) < 5:
            self.skipped.append(line)

    def result(self, **kw) -> ConvertResult:
        return ConvertResult(self.out, self.n, self.n_skipped, self.skipped, **kw)


def _chat(system: str | None, question: str, answer: str) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": question},
                                {"role": "assistant", "content": answer}]}


def qa_to_chat(src: str | PathLike, out: str | PathLike, *, question: str | None = None,
               answer: str | None = None, system: str | None = None,
               stop: str | None = None) -> ConvertResult:
    """Q&A rows → chat JSONL (user = question, assistant = answer [+ stop]); prompt/completion rows too."""
    rows = iter_rows(src)
    qcol = acol = None
    with _Writer(Path(out)) as w:
        for n, row in rows:
            if not isinstance(row, dict):
                w.skip(n)
                continue
            if qcol is None:
                qcol = _pick(row.keys(), question, QUESTION_COLUMNS, "question")
                acol = _pick(row.keys(), answer, ANSWER_COLUMNS, "answer")
            q, a = row.get(qcol), row.get(acol)
            if isinstance(q, (int, float)) and not isinstance(q, bool):
                q = str(q)
            if isinstance(a, (int, float)) and not isinstance(a, bool):
                a = str(a)
            if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
                w.skip(n)
                continue
            w.write(_chat(system, q.strip(), _with_stop(a.strip(), stop)))
        if qcol is None:
            raise InvalidRequest(f"{Path(src).name} has no rows to convert", param="file")
        return w.result(question_column=qcol, answer_column=acol)


def completion_to_chat(src: str | PathLike, out: str | PathLike, *, system: str | None = None,
                       stop: str | None = None) -> ConvertResult:
    """Legacy {"prompt", "completion"} JSONL → chat JSONL (the completion's leading space is dropped)."""
    return qa_to_chat(src, out, question="prompt", answer="completion", system=system, stop=stop)


def chat_to_completion(src: str | PathLike, out: str | PathLike, *, stop: str | None = None) -> ConvertResult:
    """Chat JSONL → legacy prompt/completion: the conversation up to the last assistant message becomes
    the prompt ("System: …\\nUser: …\\nAssistant:"), that message the completion (" " + text [+ stop])."""
    from tunery.data.formats import check_object

    names = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant",
             "tool": "Tool", "function": "Function"}
    with _Writer(Path(out)) as w:
        for n, obj in iter_rows(src):
            res = check_object(obj, n) if obj is not None else None
            ex = res.example if res is not None else None
            if ex is None or ex.kind != "chat":
                w.skip(n)
                continue
            msgs = ex.messages
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            if not isinstance(msgs[last].get("content"), str):
                w.skip(n)
                continue
            turns = "".join(f"{names[m['role']]}: {m.get('content') or ''}\n" for m in msgs[:last])
            prompt = turns + "Assistant:"
            w.write({"prompt": prompt, "completion": " " + _with_stop(msgs[last]["content"], stop)})
        return w.result()
