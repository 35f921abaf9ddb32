"""Property tests: no input — random bytes or random JSON, non-string roles, unpaired surrogates, deep
nesting — crashes the validator, read_examples or `tunery data validate`. Inputs hypothesis once found
are pinned as @example so they run every time, whatever the random draw."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunery.data import read_examples, validate_file

KEYS = ["messages", "role", "content", "weight", "name", "tool_calls", "prompt", "completion", "input",
        "preferred_output", "non_preferred_output", "function", "arguments", "x"]
ROLES = ["system", "user", "assistant", "tool", "human", ""]

# Lone surrogates: json.dumps writes them as "\\ud800" escapes, which json.loads accepts.
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.sampled_from(ROLES) \
    | st.text(max_size=12) | surrogates
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner,
                                                               max_size=5),
    max_leaves=25,
)
# Objects shaped almost like real examples reach the deep checks far more often than free JSON does.

def _nest(value, depth: int):
    for i in range(depth):
        value = [value] if i % 2 else {"x": value}
    return value


deep = st.builds(_nest, json_values, st.integers(30, 400))
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES) | scalars | json_values},
                                optional={"content": scalars | deep, "weight": scalars | json_values, "name": scalars,
                                          "tool_calls": json_values, "x": scalars})
near_examples = (
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | json_values})
    | st.fixed_dictionaries({"prompt": scalars, "completion": scalars})
    | st.fixed_dictionaries({"input": st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}) | json_values,
                             "preferred_output": st.lists(message, max_size=2) | json_values,
                             "non_preferred_output": st.lists(message, max_size=2) | json_values})
)


def _check(path: Path, n_lines: int, model=None) -> None:
    report = validate_file(path, model=model)
    d = json.loads(json.dumps(report.to_dict()))
    assert isinstance(d["summary"], str) and d["ok"] == (not d["errors"])
    for p in report.problems.values():
        assert p.count >= len(p.lines) and all(0 <= n <= n_lines for n in p.lines)
    assert report.n_examples <= len(list(read_examples(path)))


def _write(lines: list[bytes]) -> Path:
    f = tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False)
    with f:
        f.write(b"\n".join(lines))
    return Path(f.name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=60), max_size=12))
def test_random_bytes_never_crash(lines):
    path = _write(lines)
    try:
        _check(path, b"\n".join(lines).count(b"\n") + 1)
    finally:
        path.unlink()


def _chat(role, content="hi"):
    return {"messages": [{"role": role, "content": content}, {"role": "assistant", "content": "ok"}]}


# Found by hypothesis (issue 11): unhashable roles raised TypeError; lone surrogates crashed the CLI.
FOUND = [
    [_chat(["user"])], [_chat({"a": 1})], [_chat("user", "\ud800")], [_chat("user", "a\udfffb")],
    [{"messages": [{"role": "user", "content": "x", "\ud800": 1}]}], [_chat("user", _nest("x", 300))],
    [{"input": {"messages": [{"role": [], "content": "x"}]}, "preferred_output": [{"role": {}, "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}],
    [_chat("user", "x") | {"tools": _nest([], 500)}],
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values | near_examples | deep, max_size=14))
@example(FOUND[0]).via("discovered failure")
@example(FOUND[1]).via("discovered failure")
@example(FOUND[2]).via("discovered failure")
@example(FOUND[3]).via("discovered failure")
@example(FOUND[4]).via("discovered failure")
@example(FOUND[5]).via("discovered failure")
@example(FOUND[6]).via("discovered failure")
@example(FOUND[7]).via("discovered failure")
def test_random_json_never_crashes(values):
    path = _write([json.dumps(v).encode() for v in values])
    try:
        _check(path, len(values))
    finally:
        path.unlink()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(near_examples, min_size=1, max_size=12))
def test_random_examples_with_a_tokenizer_never_crash(tiny_model_dir, values):
    path = _write([json.dumps(v).encode() for v in values])
    try:
        _check(path, len(values), model=str(tiny_model_dir))
    finally:
        path.unlink()


def test_found_inputs_are_per_line_errors():
    """Each pinned input is reported as an error on its own line, with the kind that names it."""
    expect = ["unknown_role", "unknown_role", "invalid_unicode", "invalid_unicode", "invalid_unicode",
              "too_deep", "unknown_role", "too_deep"]
    for values, kind in zip(FOUND, expect):
        path = _write([json.dumps(v).encode() for v in values])
        try:
            report = validate_file(path)
        finally:
            path.unlink()
        assert not report.ok and kind in report.kinds() and 1 in report.problems[(kind, "training")].lines, \
            (values, report.summary())


_runner = CliRunner()


@settings(max_examples=25, deadline=None)
@given(st.lists(json_values | near_examples | deep, min_size=1, max_size=6))
@example(FOUND[0]).via("discovered failure")
@example(FOUND[2]).via("discovered failure")
@example(FOUND[5]).via("discovered failure")
def test_cli_validate_never_prints_a_traceback(values):
    from tunery.cli import app

    path = _write([json.dumps(v).encode() for v in values])
    try:
        for args in (["data", "validate", str(path), "--no-tokens"],
                     ["data", "validate", str(path), "--no-tokens", "--json"]):
            r = _runner.invoke(app, args)
            assert r.exit_code in (0, 1) and isinstance(r.exception, (SystemExit, type(None))), r.output
            assert "Traceback" not in r.output
    finally:
        path.unlink()
