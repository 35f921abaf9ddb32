"""Training-data formats (chat, legacy prompt/completion, DPO preference pairs) and the per-line checks.

`check_object(obj)` turns one decoded JSON line into an `Example` plus the problems found on it. It is
the single place that knows what a valid line looks like; the validator, `read_examples` and the
converters all go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["chat", "completion", "preference"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call",
                          "refusal"})
TOP_KEYS: dict[str, frozenset] = {
    "chat": frozenset({"messages", "tools", "functions", "parallel_tool_calls"}),
    "completion": frozenset({"prompt", "completion"}),
    "preference": frozenset({"input", "preferred_output", "non_preferred_output"}),
}
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
MAX_DEPTH = 64
"""Deeper values are refused: no real example nests this far, and later steps (hashing, repr, the
tokenizer's template) recurse over them."""


@dataclass(frozen=True)
class Kind:
    """One kind of problem: its stable code, severity, a short title and how to fix it."""

    code: str
    severity: Literal["error", "warning"]
    title: str
    hint: str


_KINDS = [
    Kind("not_utf8", "error", "line is not valid UTF-8",
         "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"),
    Kind("invalid_json", "error", "line is not valid JSON",
         "each line must be one complete JSON object; check quotes, escapes and stray commas"),
    Kind("invalid_unicode", "error", "text with an unpaired surrogate (not valid Unicode)",
         "a \\ud800-\\udfff escape must come in a high+low pair; fix the program that wrote the file"),
    Kind("too_deep", "error", "JSON nested too deeply",
         f"examples are at most {MAX_DEPTH} levels deep; flatten the nested value"),
    Kind("not_an_object", "error", "line is not a JSON object",
         'wrap each example in an object such as {"messages": [...]}'),
    Kind("missing_messages", "error", "no messages list",
         'add "messages": a non-empty list of {"role", "content"} objects'),
    Kind("invalid_message", "error", "a message is not an object",
         'each entry of "messages" must be an object like {"role": "user", "content": "..."}'),
    Kind("unknown_key", "error", "unknown key",
         "remove or rename the key; messages accept role, content, name, weight, tool_calls, tool_call_id"),
    Kind("unknown_role", "error", "missing or unknown role",
         'set "role" to one of system, user, assistant, tool'),
    Kind("missing_content", "error", "missing or non-string content",
         'give every message a string "content" (assistant messages with tool_calls may use null)'),
    Kind("no_assistant_message", "error", "no assistant message",
         "add the assistant reply the model should learn (at least one assistant message with weight 1)"),
    Kind("bad_weight", "error", "bad weight",
         '"weight" must be 0 or 1 and only on assistant messages'),
    Kind("invalid_tool_calls", "error", "malformed tool_calls",
         'tool_calls must be a list of {"id", "type": "function", "function": {"name", "arguments"}}'),
    Kind("missing_prompt_completion", "error", "missing or non-string prompt/completion",
         'legacy examples need string "prompt" and "completion" fields'),
    Kind("invalid_preference", "error", "malformed preference pair",
         'use {"input": {"messages": [...]}, "preferred_output": [{assistant}], '
         '"non_preferred_output": [{assistant}]}'),
    Kind("mixed_formats", "error", "format differs from the rest of the file",
         "keep one format per file: all chat, all prompt/completion, or all preference pairs"),
    Kind("empty_file", "error", "file has no examples", "the file is empty; add at least 10 examples"),
    Kind("too_few_examples", "error", "fewer than 10 examples",
         "fine-tuning needs at least 10 examples (50-100 good ones usually help)"),
    # A warning, as at OpenAI: the trainer truncates such examples (and says so in the job's events).
    Kind("over_context", "warning", "example longer than the model's context (it will be truncated)",
         "shorten or split the example, or pick a model with a longer context"),
    Kind("template_error", "error", "the model's chat template rejects the messages",
         "fix the message order the template expects (e.g. alternating user/assistant)"),
    Kind("no_chat_template", "error", "the model has no chat template",
         "use prompt/completion data with this model, or choose an instruction-tuned model"),
    Kind("duplicate", "error", "exact duplicate of an earlier example",
         "remove the repeated example; duplicates overweight it and leak into validation"),
    Kind("train_valid_overlap", "error", "example also in the training file",
         "remove shared examples from one file (`tunery data split` makes disjoint files)"),
    Kind("no_system_message", "warning", "no system message",
         "fine if intended; add the system prompt you will use at inference time"),
    Kind("no_user_message", "warning", "no user message",
         "most examples should contain the user turn the assistant answers"),
    Kind("few_examples", "warning", "few examples",
         "50-100 well-crafted examples usually beat 10-20; add more if results are weak"),
    Kind("long_example", "warning", "long example",
         "long examples slow training and may be truncated by a smaller max_length"),
    Kind("uneven_lengths", "warning", "very uneven example lengths",
         "a few very long examples dominate batches; consider splitting or trimming them"),
    Kind("no_trained_tokens", "warning", "every assistant message has weight 0",
         "nothing in this example is learned; set weight 1 on at least one assistant message"),
]
KINDS: dict[str, Kind] = {k.code: k for k in _KINDS}


@dataclass
class Example:
    """One valid training example. `messages` for chat; prompt/completion for legacy; preferred and
    non_preferred (one assistant message each) plus `messages` (the input) for preference pairs."""

    line: int
    kind: Format
    messages: list[dict] | None = None
    prompt: str | None = None
    completion: str | None = None
    preferred: list[dict] | None = None
    non_preferred: list[dict] | None = None
    tools: list | None = None

    def to_json(self) -> dict:
        """The example as a JSON object in its own format (what one line of the file holds)."""
        if self.kind == "chat":
            out: dict[str, Any] = {"messages": self.messages}
            if self.tools:
                out["tools"] = self.tools
            return out
        if self.kind == "completion":
            return {"prompt": self.prompt, "completion": self.completion}
        inp: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            inp["tools"] = self.tools
        return {"input": inp, "preferred_output": self.preferred, "non_preferred_output": self.non_preferred}


@dataclass
class LineResult:
    """What one line yielded: the example (None if invalid), its format, problems and flags."""

    example: Example | None
    format: Format | None
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(kind code, detail) pairs; details are short and name the offending value/position."""


def detect_object_format(obj: dict) -> Format | None:
    """Which format a decoded line is in, from its keys (None if none fits)."""
    if "messages" in obj:
        return "chat"
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return "preference"
    if "prompt" in obj or "completion" in obj:
        return "completion"
    return None


def _check_messages(msgs: Any, problems: list, where: str = "") -> bool:
    """Check a messages list, appending problems; True when it is usable."""
    if not isinstance(msgs, list) or not msgs:
        problems.append(("missing_messages", f"{where}messages is {_describe(msgs)}"))
        return False
    ok = True
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(("invalid_message", f"{where}messages[{i}] is {_describe(m)}"))
            ok = False
            continue
        extra = m.keys() - MESSAGE_KEYS
        if extra:
            problems.append(("unknown_key", f"{where}messages[{i}] has {', '.join(sorted(map(str, extra)))}"))
            ok = False
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object role is unhashable
            problems.append(("unknown_role", f"{where}messages[{i}] role {_describe(role)}"))
            ok = False
        content = m.get("content")
        if not isinstance(content, str):
            may_be_null = role == "assistant" and content is None and (
                m.get("tool_calls") or m.get("function_call"))
            if not may_be_null:
                problems.append(("missing_content", f"{where}messages[{i}] content is {_describe(content)}"))
                ok = False
        if "weight" in m:
            w = m["weight"]
            if role != "assistant" or type(w) not in (int, float) or w not in (0, 1):
                problems.append(("bad_weight", f"{where}messages[{i}] weight {_describe(w)} on {role}"))
                ok = False
        if "tool_calls" in m and m["tool_calls"] is not None and not _valid_tool_calls(m["tool_calls"]):
            problems.append(("invalid_tool_calls", f"{where}messages[{i}]"))
            ok = False
        if "name" in m and not isinstance(m["name"], str):
            problems.append(("missing_content", f"{where}messages[{i}] name is {_describe(m['name'])}"))
            ok = False
    return ok


def _valid_tool_calls(calls: Any) -> bool:
    if not isinstance(calls, list):
        return False
    for c in calls:
        if not isinstance(c, dict):
            return False
        fn = c.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or \
                not isinstance(fn.get("arguments", ""), (str, dict)):
            return False
    return True


def _describe(v: Any) -> str:
    if v is None:
        return "missing/null"
    if isinstance(v, str):
        return repr(v[:40])
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "an empty list" if not v else "a list"
    return "an object" if isinstance(v, dict) else type(v).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def _path(node) -> str:
    parts = []
    while node is not None:
        node, key = node
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".")


def _scan(obj: Any) -> tuple[str, str] | None:
    """The first structural problem of a decoded value (too deep, unpaired surrogate), iteratively so
    no depth can overflow the stack. json.loads accepts lone surrogate escapes like "\\ud800"; they
    cannot be encoded as UTF-8, so printing, tokenizing or storing them would fail later. Paths are
    (parent, key) links, rendered only for the message."""
    stack: list = [(obj, 1, None)]
    while stack:
        v, depth, node = stack.pop()
        if depth > MAX_DEPTH:
            return "too_deep", f"more than {MAX_DEPTH} levels at {_path(node)[:80]}"
        if isinstance(v, str):
            if not v.isascii() and _SURROGATE.search(v):
                return "invalid_unicode", f"in {_path(node)[:80] or 'a string'}"
        elif isinstance(v, dict):
            for k, x in v.items():
                if not k.isascii() and _SURROGATE.search(k):
                    return "invalid_unicode", f"in a key of {_path(node)[:80] or 'the line'}"
                stack.append((x, depth + 1, (node, k)))
        elif isinstance(v, list):
            stack.extend((x, depth + 1, (node, i)) for i, x in enumerate(v))
    return None


def check_object(obj: Any, line: int, expected: Format | None = None) -> LineResult:
    """Check one decoded JSON value; `expected` is the file's format (from its first valid line)."""
    if not isinstance(obj, dict):
        return LineResult(None, None, [("not_an_object", f"got {_describe(obj)}")])
    bad = _scan(obj)
    if bad is not None:
        return LineResult(None, detect_object_format(obj), [(bad[0], bad[1][:120])])
    fmt = detect_object_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(map(str, obj)))[:80] or "none"
        return LineResult(None, None, [("missing_messages", f"keys: {keys}")])
    problems: list[tuple[str, str]] = []
    if expected is not None and fmt != expected:
        problems.append(("mixed_formats", f"{fmt} line in a {expected} file"))
    extra = obj.keys() - TOP_KEYS[fmt]
    if extra:
        problems.append(("unknown_key", f"top-level {', '.join(sorted(map(str, extra)))[:80]}"))
    ex: Example | None = None
    if fmt == "chat":
        msgs = obj["messages"]
        if _check_messages(msgs, problems):
            has_asst = trained = has_sys = has_user = False
            for m in msgs:
                role = m["role"]
                if role == "assistant":
                    has_asst = True
                    if m.get("weight", 1):
                        trained = True
                elif role == "user":
                    has_user = True
                elif role == "system" or role == "developer":
                    has_sys = True
            if not has_sys:
                problems.append(("no_system_message", ""))
            if not has_user:
                problems.append(("no_user_message", ""))
            if not has_asst:
                problems.append(("no_assistant_message", f"roles: {', '.join(m['role'] for m in msgs)}"))
            elif not trained:
                problems.append(("no_trained_tokens", ""))
            tools = obj.get("tools")
            ex = Example(line, "chat", messages=msgs, tools=tools if isinstance(tools, list) else None)
    elif fmt == "completion":
        p, c = obj.get("prompt"), obj.get("completion")
        if not isinstance(p, str) or not isinstance(c, str):
            bad = "prompt" if not isinstance(p, str) else "completion"
            problems.append(("missing_prompt_completion", f"{bad} is {_describe(obj.get(bad))}"))
        else:
            ex = Example(line, "completion", prompt=p, completion=c)
    else:
        inp = obj.get("input")
        pref, npref = obj.get("preferred_output"), obj.get("non_preferred_output")
        ok = True
        if not isinstance(inp, dict):
            problems.append(("invalid_preference", f"input is {_describe(inp)}"))
            ok = False
        else:
            extra = inp.keys() - INPUT_KEYS
            if extra:
                problems.append(("unknown_key", f"input has {', '.join(sorted(map(str, extra)))[:80]}"))
            ok = _check_messages(inp.get("messages"), problems, "input.") and not extra
        for name, out in (("preferred_output", pref), ("non_preferred_output", npref)):
            if not isinstance(out, list) or len(out) != 1:
                problems.append(("invalid_preference", f"{name} must be a list of one assistant message, "
                                                       f"got {_describe(out)}"))
                ok = False
            elif not _check_messages(out, problems, f"{name}."):
                ok = False
            elif out[0].get("role") != "assistant":
                problems.append(("no_assistant_message", f"{name}[0] role {_describe(out[0].get('role'))}"))
                ok = False
        if ok and not problems:
            tools = inp.get("tools")
            ex = Example(line, "preference", messages=inp["messages"], preferred=pref, non_preferred=npref,
                         tools=tools if isinstance(tools, list) else None)
    if any(KINDS[k].severity == "error" for k, _ in problems):
        ex = None
    return LineResult(ex, fmt, problems)
