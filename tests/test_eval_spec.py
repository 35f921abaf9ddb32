"""Spec loading: JSONL and YAML cases, every problem reported with its line number."""

from __future__ import annotations

import json

import pytest

from tunery.eval.spec import SpecError, load_spec


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_jsonl_forms(tmp_path):
    lines = [
        {"id": "q1", "question": "Capital of France?", "expected": "Paris", "kind": "verbatim"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello!"}], "key_facts": ["hello"]},
        {"question": "Weather on Mars?", "kind": "off_topic", "should_decline": True},
        {"question": "Height?", "key_facts": [["330 m", "330 metres"], 1889], "system": "Tour guide."},
    ]
    p = write(tmp_path, "s.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    c = load_spec(p)
    assert [x.id for x in c] == ["q1", "case-2", "case-3", "case-4"]
    assert c[0].kind == "verbatim" and c[0].messages == [{"role": "user", "content": "Capital of France?"}]
    # A training-format line: the final assistant turn becomes the expected answer, not part of the prompt.
    assert c[1].expected == "Hello!" and [m["role"] for m in c[1].messages] == ["system", "user"]
    assert c[1].kind == "variation" and c[1].question == "Hi?"
    assert c[2].kind == "off-topic" and c[2].should_decline and c[2].expected is None
    assert c[3].key_facts == [["330 m", "330 metres"], ["1889"]]
    assert c[3].messages[0] == {"role": "system", "content": "Tour guide."}
    assert [x.line for x in c] == [1, 2, 3, 4]


def test_jsonl_reports_every_problem_with_line_numbers(tmp_path):
    text = "\n".join([
        json.dumps({"question": "ok", "expected": "fine"}),                 # 1 ok
        '{"question": "broken", ',                                         # 2 bad JSON
        json.dumps({"question": "no reference"}),                          # 3 needs expected/key_facts
        "",                                                                 # 4 blank
        json.dumps({"question": "x", "expected": "y", "kind": "verbatimm"}),  # 5 bad kind
        json.dumps({"questoin": "typo", "expected": "y"}),                 # 6 unknown field + no question
        json.dumps({"id": "case-1", "question": "dup", "expected": "y"}),  # 7 duplicate id
        json.dumps({"messages": [{"role": "assistant", "content": "only me"}]}),  # 8 no user message
    ])
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "bad.jsonl", text))
    lines = sorted({ln for ln, _ in err.value.problems})
    assert lines == [2, 3, 5, 6, 7, 8]
    msg = err.value.message
    assert "line 2: invalid JSON" in msg and "line 5: kind must be one of" in msg
    assert "'questoin'" in msg and "duplicate id 'case-1' (first on line 1)" in msg
    assert err.value.param == "spec"


def test_yaml_list_and_mapping_with_defaults(tmp_path):
    p = write(tmp_path, "s.yaml", """
defaults:
  kind: variation
  system: You are a tour guide.
cases:
  - id: height
    question: How tall is the Eiffel Tower?
    key_facts: ["330"]
  - question: Who designed it?
    expected: Gustave Eiffel's company.
    kind: verbatim
""")
    c = load_spec(p)
    assert [x.kind for x in c] == ["variation", "verbatim"]
    assert all(x.messages[0]["content"] == "You are a tour guide." for x in c)
    assert [x.line for x in c] == [6, 9]  # the text starts with a blank line
    p2 = write(tmp_path, "l.yml", "- question: a?\n  expected: b\n- question: c?\n  kind: off-topic\n")
    assert [x.kind for x in load_spec(p2)] == ["variation", "off-topic"]


def test_yaml_errors_carry_line_numbers(tmp_path):
    p = write(tmp_path, "bad.yaml", "- question: fine\n  expected: ok\n- question: 42\n  expected: x\n"
                                    "- expected: no question\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert sorted(ln for ln, _ in err.value.problems) == [3, 5]
    p = write(tmp_path, "syntax.yaml", "- question: a\n  expected: [unclosed\n- x\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert "invalid YAML" in err.value.message and err.value.problems[0][0] is not None


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match="no cases"):
        load_spec(write(tmp_path, "e.jsonl", "\n# just a comment\n"))
    with pytest.raises(Exception, match="not found"):
        load_spec(tmp_path / "nope.jsonl")
