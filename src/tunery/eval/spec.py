"""Evaluation cases: what to ask, what a good answer contains, and what kind of question it is.

A spec is a JSONL file (one case per line) or a YAML file (a list of cases, or a mapping with a
`cases:` list). Every problem in the file is reported at once, each with its line number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tunery.errors import InvalidRequest

KINDS = ("verbatim", "variation", "off-topic")
_KIND_ALIASES = {"off_topic": "off-topic", "offtopic": "off-topic", "off topic": "off-topic",
                 "training": "verbatim", "paraphrase": "variation"}
_FIELDS = {"id", "messages", "question", "system", "expected", "answer", "key_facts", "kind",
           "should_decline", "max_tokens"}
_ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclass
class Case:
    """One question put to every model."""

    id: str
    messages: list[dict]
    """The prompt sent to chat completions (ends with a user message)."""
    kind: str = "variation"
    """verbatim (a training question as is), variation (rephrased / held out) or off-topic."""
    expected: str | None = None
    """The reference answer; enables exact match, token F1, chrF and semantic similarity."""
    key_facts: list[list[str]] = field(default_factory=list)
    """Facts a good answer must state; each fact is a list of accepted spellings."""
    should_decline: bool = False
    """The model should refuse / say it does not know rather than answer."""
    max_tokens: int | None = None
    line: int | None = None
    source: str | None = None

    @property
    def question(self) -> str:
        """The last user message: what a person reading the report wants to see."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _text(m.get("content"))
        return ""

    def to_dict(self) -> dict:
        return asdict(self)


class SpecError(InvalidRequest):
    """A spec file with problems; .problems lists (line, message) for every one of them."""

    def __init__(self, path: str, problems: list[tuple[int | None, str]]):
        self.problems = problems
        shown = "; ".join(f"line {ln}: {msg}" if ln else msg for ln, msg in problems[:8])
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}: {shown}{more}", param="spec",
                         code="invalid_eval_spec")


def _text(content: Any) -> str:
    """Message content as plain text (content may be a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _norm_kind(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    k = raw.strip().lower()
    k = _KIND_ALIASES.get(k, k)
    return k if k in KINDS else None


def parse_case(obj: Any, *, index: int, line: int | None, source: str | None = None) -> tuple[Case | None, list[str]]:
    """Build a Case from one parsed object; returns (case or None, problems)."""
    if not isinstance(obj, dict):
        return None, [f"a case must be an object, got {type(obj).__name__}"]
    problems: list[str] = []
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(sorted(_FIELDS))})")

    kind = "variation"
    if "kind" in obj:
        kind = _norm_kind(obj["kind"]) or ""
        if not kind:
            problems.append(f"kind must be one of {', '.join(KINDS)}, got {obj['kind']!r}")

    expected = obj.get("expected", obj.get("answer"))
    if "expected" in obj and "answer" in obj:
        problems.append("give 'expected' or 'answer', not both")
    if expected is not None and not isinstance(expected, str):
        problems.append("expected must be a string")
        expected = None

    messages: list[dict] = []
    if "messages" in obj and "question" in obj:
        problems.append("give 'messages' or 'question', not both")
    elif "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            problems.append("messages must be a non-empty list")
        else:
            for i, m in enumerate(raw):
                if not isinstance(m, dict) or "role" not in m:
                    problems.append(f"messages[{i}] must be an object with role and content")
                elif m["role"] not in _ROLES:
                    problems.append(f"messages[{i}].role {m['role']!r} is not one of {', '.join(sorted(_ROLES))}")
                elif not isinstance(m.get("content"), (str, list)) and m["role"] != "assistant":
                    problems.append(f"messages[{i}].content must be a string")
                else:
                    messages.append({"role": m["role"], "content": m.get("content")})
            # A training-format line works as a case: its last assistant turn is the expected answer.
            if messages and messages[-1]["role"] == "assistant":
                last = messages.pop()
                if expected is None:
                    expected = _text(last["content"])
    elif "question" in obj:
        if not isinstance(obj["question"], str) or not obj["question"].strip():
            problems.append("question must be a non-empty string")
        else:
            messages = [{"role": "user", "content": obj["question"]}]
    else:
        problems.append("a case needs 'messages' or 'question'")
    if "system" in obj:
        if not isinstance(obj["system"], str):
            problems.append("system must be a string")
        elif messages:
            messages.insert(0, {"role": "system", "content": obj["system"]})
    if "messages" in obj and isinstance(obj["messages"], list) and obj["messages"] \
            and not any(m["role"] == "user" for m in messages):
        problems.append("messages need at least one user message")

    facts: list[list[str]] = []
    raw_facts = obj.get("key_facts", [])
    if isinstance(raw_facts, str):
        raw_facts = [raw_facts]
    if not isinstance(raw_facts, list):
        problems.append("key_facts must be a list of strings (or of lists of accepted spellings)")
    else:
        for i, f in enumerate(raw_facts):
            alts = [f] if isinstance(f, (str, int, float)) and not isinstance(f, bool) else f
            if not isinstance(alts, list) or not alts or not all(
                    isinstance(a, (str, int, float)) and not isinstance(a, bool) and str(a).strip() for a in alts):
                problems.append(f"key_facts[{i}] must be a non-empty string or a list of them")
            else:
                facts.append([str(a) for a in alts])

    should_decline = obj.get("should_decline", False)
    if not isinstance(should_decline, bool):
        problems.append("should_decline must be true or false")
        should_decline = False
    if kind and kind != "off-topic" and expected is None and not facts and not should_decline:
        problems.append(f"a {kind} case needs 'expected' (or a final assistant message) or 'key_facts'")

    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        problems.append("max_tokens must be a positive integer")

    case_id = obj.get("id", f"case-{index + 1}")
    if not isinstance(case_id, (str, int)) or isinstance(case_id, bool):
        problems.append("id must be a string")
    if problems:
        return None, problems
    return Case(id=str(case_id), messages=messages, kind=kind, expected=expected, key_facts=facts,
                should_decline=should_decline, max_tokens=max_tokens, line=line, source=source), []


def _check_ids(cases: list[Case], problems: list[tuple[int | None, str]]) -> None:
    seen: dict[str, int | None] = {}
    for c in cases:
        if c.id in seen:
            problems.append((c.line, f"duplicate id {c.id!r} (first on line {seen[c.id]})"))
        else:
            seen[c.id] = c.line


def _load_jsonl(text: str, source: str) -> tuple[list[Case], list[tuple[int | None, str]]]:
    cases: list[Case] = []
    problems: list[tuple[int | None, str]] = []
    index = 0
    for ln, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append((ln, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            index += 1
            continue
        case, errs = parse_case(obj, index=index, line=ln, source=source)
        index += 1
        problems.extend((ln, e) for e in errs)
        if case:
            cases.append(case)
    return cases, problems


def _load_yaml(text: str, source: str) -> tuple[list[Case], list[tuple[int | None, str]]]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [(mark.line + 1 if mark else None, f"invalid YAML: {getattr(exc, 'problem', None) or exc}")]
    if root is None:
        return [], []
    items_node = root
    defaults: dict = {}
    if isinstance(data, dict):
        if "cases" not in data:
            return [], [(1, "a YAML spec is a list of cases or a mapping with a 'cases' list")]
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            return [], [(1, "defaults must be a mapping")]
        extra = sorted(set(data) - {"cases", "defaults"})
        if extra:
            return [], [(1, f"unknown top-level key(s) {', '.join(map(repr, extra))} (known: cases, defaults)")]
        items_node = next(v for k, v in root.value if k.value == "cases")
        data = data["cases"]
    if not isinstance(data, list):
        return [], [(items_node.start_mark.line + 1, "cases must be a list")]
    cases, problems = [], []
    for i, (obj, node) in enumerate(zip(data, items_node.value)):
        ln = node.start_mark.line + 1
        if isinstance(obj, dict):
            obj = {**defaults, **obj}
        case, errs = parse_case(obj, index=i, line=ln, source=source)
        problems.extend((ln, e) for e in errs)
        if case:
            cases.append(case)
    return cases, problems


def load_spec(path: str | Path) -> list[Case]:
    """Read a JSONL or YAML spec; raises SpecError listing every problem with its line number."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"spec file not found: {p}", param="spec", code="invalid_eval_spec")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        cases, problems = _load_yaml(text, str(p))
    else:
        cases, problems = _load_jsonl(text, str(p))
    _check_ids(cases, problems)
    if not problems and not cases:
        problems.append((None, "no cases in the file"))
    if problems:
        raise SpecError(str(p), problems)
    return cases


def merge_cases(*groups: Iterable[Case]) -> list[Case]:
    """Concatenate case lists, renaming ids that collide (a spec plus cases built from a job)."""
    out: list[Case] = []
    seen: set[str] = set()
    for group in groups:
        for c in group:
            cid, n = c.id, 2
            while cid in seen:
                cid, n = f"{c.id}-{n}", n + 1
            seen.add(cid)
            c.id = cid
            out.append(c)
    return out
