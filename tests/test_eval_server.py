"""`tunery eval` against a real tunery server (chat completions on the tiny random model): the real wire
path end to end — usage, latency, max_tokens honoured, every answer scored."""

from __future__ import annotations

import json

import pytest

from test_api_support import make_server  # noqa: F401  (fixture)


def test_eval_against_a_real_tunery_server(make_server, tiny_model_dir, tmp_path, capsys):
    from tunery.cli import main

    srv = make_server()
    model = str(tiny_model_dir)
    spec = tmp_path / "spec.jsonl"
    spec.write_text("\n".join(json.dumps(c) for c in [
        {"id": "a", "question": "What is the capital of France?", "expected": "Paris", "key_facts": ["Paris"],
         "kind": "verbatim"},
        {"id": "b", "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a color."},
                                 {"role": "assistant", "content": "Blue."}]},
        {"id": "c", "question": "Write a poem.", "kind": "off-topic", "should_decline": True},
    ]) + "\n")
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as done:
        main(["eval", str(spec), "-m", model, "--base-url", srv.base_url, "--max-tokens", "8",
              "--no-semantic", "--out", str(out)])
    assert done.value.code == 0, capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    assert [r["case_id"] for r in results] == ["a", "b", "c"] and all(r["error"] is None for r in results)
    for r in results:
        m = r["metrics"]
        assert 1 <= m["completion_tokens"] <= 8 and m["prompt_tokens"] > 5 and m["latency_s"] > 0
        assert r["finish_reason"] in ("stop", "length")
    # The random model cannot know Paris; the scores exist and are in range.
    assert report["summary"][model]["verbatim"]["key_fact_recall"] in (0.0, 1.0)
    assert 0.0 <= report["summary"][model]["variation"]["chrf"] <= 1.0
    assert report["summary"][model]["all"]["tokens_total"] == sum(
        r["metrics"]["prompt_tokens"] + r["metrics"]["completion_tokens"] for r in results)
