"""tunery.data: formats, read_examples, the validator (every kind, with its line), throughput."""

from __future__ import annotations

import json

import pytest

from tunery.data import (
    KINDS, ValidationReport, measured_throughput, read_examples, record_throughput, validate_file,
)
from tunery.data.estimate import BUILTIN_THROUGHPUT, billed_tokens


def chat(i: int, system: bool = True) -> dict:
    msgs = [{"role": "system", "content": "You answer briefly."}] if system else []
    return {"messages": msgs + [{"role": "user", "content": f"What is {i} + {i}?"},
                                {"role": "assistant", "content": f"{2 * i}."}]}


def write(tmp_path, lines, name="train.jsonl") -> str:
    p = tmp_path / name
    with open(p, "wb") as f:
        for line in lines:
            if isinstance(line, bytes):
                f.write(line + b"\n")
            elif isinstance(line, str):
                f.write(line.encode() + b"\n")
            else:
                f.write(json.dumps(line).encode() + b"\n")
    return str(p)


def with_bad(tmp_path, bad, n_good=12, at=5):
    """A file of n_good valid examples with `bad` inserted as line `at` (1-based)."""
    lines = [chat(i) for i in range(n_good)]
    lines.insert(at - 1, bad)
    return write(tmp_path, lines)


def only(report: ValidationReport, kind: str, file: str = "training"):
    p = report.problems.get((kind, file))
    assert p is not None, f"{kind} not reported; got {sorted(report.kinds())}: {report.summary()}"
    return p


BAD_LINES = [
    ("not_utf8", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'),
    ("invalid_json", '{"messages": [}'),
    ("not_an_object", "[1, 2, 3]"),
    ("missing_messages", {"text": "hello"}),
    ("missing_messages", {"messages": []}),
    ("invalid_message", {"messages": ["hello", {"role": "assistant", "content": "x"}]}),
    ("unknown_key", {"messages": [{"role": "user", "content": "q", "foo": 1},
                                  {"role": "assistant", "content": "a"}]}),
    ("unknown_key", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                     "extra": True}),
    ("unknown_role", {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ("unknown_role", {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}),
    ("missing_content", {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}),
    ("missing_content", {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}),
    ("no_assistant_message", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}),
    ("bad_weight", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                                    "weight": 2}]}),
    ("bad_weight", {"messages": [{"role": "user", "content": "q", "weight": 1},
                                 {"role": "assistant", "content": "a"}]}),
    ("bad_weight", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                                    "weight": True}]}),
    ("invalid_tool_calls", {"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": None, "tool_calls": "nope"}]}),
    ("mixed_formats", {"prompt": "p", "completion": "c"}),
]


@pytest.mark.parametrize("kind,bad", BAD_LINES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_LINES)])
def test_each_line_error_kind_names_its_line(tmp_path, kind, bad):
    r = validate_file(with_bad(tmp_path, bad, at=5))
    p = only(r, kind)
    assert p.lines == [5] and p.count == 1 and p.severity == "error"
    assert not r.ok and r.n_examples == 12
    assert "line 5" in r.summary() and KINDS[kind].hint in r.summary()


def test_every_problem_is_reported_at_once_grouped_by_kind(tmp_path):
    lines = [chat(i) for i in range(20)]
    for at in (3, 8, 11):
        lines[at - 1] = {"messages": [{"role": "user", "content": f"only a question {at}"}]}
    lines[14] = "{oops"
    r = validate_file(write(tmp_path, lines))
    nam = only(r, "no_assistant_message")
    assert nam.lines == [3, 8, 11] and nam.count == 3
    assert only(r, "invalid_json").lines == [15]
    assert r.n_examples == 16
    s = r.summary()
    assert "lines 3, 8, 11: no assistant message" in s and "line 15: line is not valid JSON" in s


def test_lines_listed_per_kind_are_capped_but_counted(tmp_path):
    lines = [chat(i) for i in range(12)] + ["not json"] * 9
    r = validate_file(write(tmp_path, lines))
    p = only(r, "invalid_json")
    assert p.count == 9 and p.lines == [13, 14, 15, 16, 17]
    assert "and 4 more" in r.summary()


def test_file_level_errors(tmp_path):
    r = validate_file(write(tmp_path, []))
    assert only(r, "empty_file").severity == "error" and not r.ok
    r = validate_file(write(tmp_path, ["", "   "], "blank.jsonl"))
    assert "empty_file" in r.kinds()
    r = validate_file(write(tmp_path, [chat(i) for i in range(9)], "nine.jsonl"))
    assert only(r, "too_few_examples").count == 1 and not r.ok and r.n_examples == 9
    r = validate_file(write(tmp_path, [chat(i) for i in range(10)], "ten.jsonl"))
    assert r.ok and "few_examples" in r.kinds()  # a warning only


def test_duplicates_and_train_valid_overlap(tmp_path):
    lines = [chat(i) for i in range(12)]
    lines.insert(7, dict(chat(2)))  # line 8 repeats line 3 (with different JSON spacing below)
    path = write(tmp_path, lines)
    r = validate_file(path)
    d = only(r, "duplicate")
    assert d.lines == [8] and d.details == ["same as line 3"]
    assert r.n_examples == 12
    valid = write(tmp_path, ['{"messages":' + json.dumps(chat(5)["messages"], indent=None, separators=(",", ":")) + "}",
                             chat(100), chat(4)], "valid.jsonl")
    r = validate_file(write(tmp_path, [chat(i) for i in range(12)], "t2.jsonl"), validation_path=valid)
    o = only(r, "train_valid_overlap", "validation")
    assert o.lines == [1, 3] and o.details == ["same as training line 6", "same as training line 5"]
    assert r.n_validation_examples == 3 and not r.ok
    assert "validation file lines 1, 3" in r.summary()


def test_warnings_do_not_fail(tmp_path):
    lines = [chat(i, system=(i % 2 == 0)) for i in range(60)]
    r = validate_file(write(tmp_path, lines))
    assert r.ok and not r.errors
    w = only(r, "no_system_message")
    assert w.severity == "warning" and w.lines[:3] == [2, 4, 6] and w.count == 30


def test_weight_zero_and_tool_calls_are_valid(tmp_path):
    ex = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "draft", "weight": 0},
        {"role": "assistant", "content": "It is sunny.", "weight": 1}]}
    lines = [chat(i) for i in range(11)] + [ex]
    r = validate_file(write(tmp_path, lines))
    assert r.ok, r.summary()
    ex2 = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    r = validate_file(write(tmp_path, lines + [ex2], "w0.jsonl"))
    assert r.ok and only(r, "no_trained_tokens").lines == [13]


def test_completion_and_preference_formats(tmp_path):
    comp = [{"prompt": f"Q{i} ->", "completion": f" A{i}"} for i in range(12)]
    comp.insert(2, {"prompt": "x"})
    r = validate_file(write(tmp_path, comp, "comp.jsonl"))
    assert r.format == "completion" and only(r, "missing_prompt_completion").lines == [3]
    assert [e.prompt for e in read_examples(tmp_path / "comp.jsonl")][:3] == ["Q0 ->", "Q1 ->", "Q2 ->"]

    def pref(i):
        return {"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
                "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]}
    prefs = [pref(i) for i in range(12)]
    prefs.insert(4, {"input": {"messages": [{"role": "user", "content": "q"}]},
                     "preferred_output": [{"role": "user", "content": "a"}],
                     "non_preferred_output": [{"role": "assistant", "content": "b"}]})
    prefs.insert(6, {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": []})
    r = validate_file(write(tmp_path, prefs, "pref.jsonl"))
    assert r.format == "preference"
    assert only(r, "no_assistant_message").lines == [5]
    assert only(r, "invalid_preference").lines == [7]
    exs = list(read_examples(tmp_path / "pref.jsonl"))
    assert len(exs) == 12 and exs[0].kind == "preference" and exs[0].preferred[0]["content"] == "good 0"


def test_read_examples_streams_valid_examples_with_line_numbers(tmp_path):
    path = with_bad(tmp_path, "garbage", at=3)
    exs = list(read_examples(path))
    assert len(exs) == 12 and exs[2].line == 4 and exs[0].kind == "chat"
    assert exs[0].messages[1]["content"] == "What is 0 + 0?"
    assert exs[0].to_json() == chat(0)


def test_report_is_json_able_with_stable_keys(tmp_path):
    r = validate_file(with_bad(tmp_path, "nope", at=2))
    d = json.loads(json.dumps(r.to_dict()))
    assert {"ok", "path", "format", "n_examples", "errors", "warnings", "summary", "n_errors",
            "token_stats"} <= d.keys()
    e = d["errors"][0]
    assert e == {"kind": "invalid_json", "severity": "error", "file": "training", "count": 1, "lines": [2],
                 "details": [e["details"][0]], "message": KINDS["invalid_json"].title,
                 "hint": KINDS["invalid_json"].hint}


def test_ok_summary(tmp_path):
    r = validate_file(write(tmp_path, [chat(i) for i in range(60)]))
    assert r.ok and r.summary() == "train.jsonl: OK, 60 valid chat examples."


# --- with the model's tokenizer --------------------------------------------------------------------

def test_over_context_counted_with_the_models_tokenizer(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = {"messages": [{"role": "user", "content": "word " * 1100}, {"role": "assistant", "content": "ok"}]}
    r = validate_file(with_bad(tmp_path, long, at=7), model=str(tiny_model_dir))
    assert r.context_length == 1024
    p = only(r, "over_context")
    n = len(tok.apply_chat_template(long["messages"], tokenize=True, return_dict=False))
    assert p.lines == [7] and p.details == [f"{n} tokens > 1024"]
    assert p.severity == "warning" and r.ok  # truncated by the trainer, as OpenAI does
    assert r.token_stats["tokens"]["max"] == n
    first = len(tok.apply_chat_template(chat(0)["messages"], tokenize=True, return_dict=False))
    assert r.token_stats["tokens"]["min"] <= first


def test_token_counts_are_exact(tiny_model_dir):
    """The fast counter (skeleton rendering + cached pieces) equals the real template + tokenizer."""
    import random

    from transformers import AutoTokenizer

    from tunery.data.formats import Example
    from tunery.data.tokens import TokenCounter

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    counter = TokenCounter(tok, "tiny")
    rnd = random.Random(0)
    alphabet = "ab cd\n\n  \té漢字<|im_end|>'s 12 ,.!<|im_start|>"
    exs = []
    for i in range(120):
        msgs = [{"role": "system", "content": "Be brief."}] if rnd.random() < 0.5 else []
        for _ in range(rnd.randint(1, 2)):
            for role in ("user", "assistant"):
                msgs.append({"role": role, "content": "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))})
        exs.append(Example(i, "chat", messages=msgs))
    got = counter.count_examples(exs)
    want = [len(tok.apply_chat_template(e.messages, tokenize=True, return_dict=False)) for e in exs]
    assert got == want
    assert counter._split is not None  # the fast path was actually used


def test_template_error_and_no_template(tmp_path, tiny_model_dir):
    lines = [chat(i) for i in range(12)]
    r = validate_file(write(tmp_path, lines), model=str(tiny_model_dir))
    assert r.ok, r.summary()


# --- throughput ------------------------------------------------------------------------------------

def test_billed_tokens():
    assert billed_tokens([10, 5000, 20], 1024, 3) == (10 + 1024 + 20) * 3


def test_throughput_record_and_fallback(tunery_home):
    tps, source = measured_throughput("gpt-4o-mini", "lora")  # an alias of the bundled model
    assert tps == BUILTIN_THROUGHPUT[("smollm2-135m-instruct", "lora")][0] and "built-in" in source
    record_throughput("smollm2-135m-instruct", "lora", 100.0)
    record_throughput("gpt-4o-mini", "lora", 300.0)
    record_throughput("smollm2-135m-instruct", "lora", 200.0)
    tps, source = measured_throughput("smollm2-135m-instruct", "lora")
    assert tps == 200.0 and "measured" in source and "3" in source
    assert (tunery_home / "throughput.json").exists()
    assert measured_throughput("smollm2-135m-instruct", "full")[1].startswith("built-in")
    tps, source = measured_throughput("/nowhere/model", "lora")
    assert "never measured" in source and tps > 0


def test_json_array_and_trailing_commas_get_a_pointed_hint(tmp_path):
    body = ",\n".join(json.dumps(chat(i)) for i in range(12))
    p = tmp_path / "array.jsonl"
    p.write_text("[\n" + body + "\n]\n")
    r = validate_file(p)
    bad = only(r, "invalid_json")
    assert bad.count == 13 and bad.lines[:3] == [1, 2, 3]
    assert "one JSON array" in bad.details[0] and "not separated by commas" in bad.details[1]


def test_detect_format(tmp_path):
    from tunery.data import detect_format

    assert detect_format(write(tmp_path, ["junk", chat(1)], "a.jsonl")) == "chat"
    assert detect_format(write(tmp_path, [{"prompt": "p", "completion": "c"}], "b.jsonl")) == "completion"
    assert detect_format(write(tmp_path, [{"input": {"messages": []}, "preferred_output": []}], "c.jsonl")) \
        == "preference"
    assert detect_format(write(tmp_path, ["[1]", {"x": 1}], "d.jsonl")) is None
