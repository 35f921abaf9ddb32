"""Streaming line reader: a JSONL file is read one line at a time, never whole into memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from os import PathLike
from typing import Any

from tunery.data.formats import Example, Format, check_object, detect_object_format

_MISSING = object()


def iter_lines(path: str | PathLike, progress=None) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped bytes) for every non-blank line; progress(bytes read) now and then."""
    done = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if progress is not None:
                done += len(raw)
                if not n % 4096:
                    progress(done)
            raw = raw.strip()
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark from Windows editors
                raw = raw[3:].strip()
            if raw:
                yield n, raw


def parse_line(raw: bytes) -> tuple[Any, tuple[str, str] | None]:
    """Decode one line: (value, None) or (_MISSING, (kind, detail))."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _MISSING, ("not_utf8", f"byte {exc.start}: {raw[exc.start:exc.start + 4]!r}")
    try:
        return json.loads(text), None
    except RecursionError:
        return _MISSING, ("invalid_json", "nested too deeply")
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        detail = f"{msg} at column {col}" if col else msg
        if text in ("[", "]") or text.startswith("[{"):
            detail += "; the file looks like one JSON array, but JSONL needs one object per line"
        elif text.endswith(",") and text.startswith("{"):
            detail += "; JSONL lines are not separated by commas"
        return _MISSING, ("invalid_json", detail)


def read_examples(path: str | PathLike, format: Format | None = None) -> Iterator[Example]:
    """The valid examples of a JSONL file, streamed; invalid lines (see validate_file) are skipped.

    The file's format is that of its first valid line unless `format` is given; lines in another
    format are skipped too.
    """
    expected = format
    for n, raw in iter_lines(path):
        obj, problem = parse_line(raw)
        if problem is not None:
            continue
        res = check_object(obj, n, expected)
        if res.example is not None:
            expected = expected or res.format
            yield res.example


def detect_format(path: str | PathLike, max_lines: int = 1000) -> Format | None:
    """The format of a JSONL file: that of its first line that decodes to a recognisable object."""
    for i, (_, raw) in enumerate(iter_lines(path)):
        if i >= max_lines:
            break
        obj, problem = parse_line(raw)
        if problem is None and isinstance(obj, dict):
            fmt = detect_object_format(obj)
            if fmt is not None:
                return fmt
    return None
