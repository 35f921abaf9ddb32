"""Property tests: no input — random bytes or random JSON — crashes the validator or read_examples."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.data import read_examples, validate_file

KEYS = ["messages", "role", "content", "weight", "name", "tool_calls", "prompt", "completion", "input",
        "preferred_output", "non_preferred_output", "function", "arguments", "x"]
ROLES = ["system", "user", "assistant", "tool", "human", ""]

scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.sampled_from(ROLES) \
    | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner,
                                                               max_size=5),
    max_leaves=25,
)
# Objects shaped almost like real examples reach the deep checks far more often than free JSON does.
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES) | scalars},
                                optional={"content": scalars, "weight": scalars, "name": scalars,
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values | near_examples, max_size=14))
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
