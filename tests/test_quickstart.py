"""The quickstart's dataset, and (slow) the whole quickstart end to end on the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tunery import demo


def test_demo_dataset_is_valid_chat_data_with_a_validation_split(tmp_path):
    from tunery.data import validate_file

    train, valid = demo.write_dataset(tmp_path / "demo")
    report = validate_file(train, validation_path=valid)
    assert report.ok, report.summary()
    assert report.format == "chat" and report.n_examples >= 30 and report.n_validation_examples >= 10
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    questions = {r["messages"][1]["content"] for r in rows}
    # The three questions the quickstart asks are taught, so the fine-tune visibly changes their answers.
    assert set(demo.QUESTIONS) <= questions
    answers = {r["messages"][1]["content"]: r["messages"][2]["content"] for r in rows}
    for q, keys in zip(demo.QUESTIONS, demo.QUESTION_KEYS):
        assert all(k in answers[q] for k in keys), (q, keys)  # the checked facts are the data's own
    assert all(r["messages"][0]["content"] == demo.SYSTEM_PROMPT for r in rows)
    assert all("Lanna tip:" in r["messages"][2]["content"] for r in rows)
    valid_questions = {json.loads(line)["messages"][1]["content"] for line in valid.read_text().splitlines()}
    assert not questions & valid_questions  # no leak between the splits


def test_quickstart_refuses_a_used_home(tmp_path):
    (tmp_path / "something").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "quickstart", "--home", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "is not empty" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, bundled_model_dir):
    home = tmp_path / "qs"
    env = {**os.environ, "COLUMNS": "160"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "quickstart", "--home", str(home)],
                          capture_output=True, text=True, timeout=1200, env=env)
    took = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no errors" in out and "Your fine-tuned model:" in out
    model = out.split("Your fine-tuned model:")[1].split()[0]
    assert model.startswith("ft:smollm2-135m-instruct:personal:chiang-mai:")
    assert "from openai import OpenAI" in out and "chat.completions.create" in out
    for q in demo.QUESTIONS:
        assert q.split()[0] in out
    # The fine-tuned model answers in the guide's house style, which the base model never uses.
    table = out.split("6/6")[1]
    assert "Lanna tip" in _column_text(table, 3), table
    assert "Lanna tip" not in _column_text(table, 2), table
    # ...and states every invented fact of the three answers (hours, prices, names) as the data does.
    tuned = _column_text(table, 3)
    missing = [k for keys in demo.QUESTION_KEYS for k in keys if k not in tuned]
    assert (home / "tunery.db").exists() and (home / "demo" / demo.TRAIN_FILE).exists()
    print(f"quickstart took {took:.0f}s")
    # Regression bar: the rules before 2026-12-02 got 3-4 of the 7 facts; the current ones got 7/7, 6/7, 6/7 in three
    # runs (the job's seed is random), so at most one wrong fact passes and two fail.
    assert len(missing) <= 1, f"the quickstart's fine-tune states these invented facts wrong: {missing}"
    if missing:  # issue 12, still open: every fact, every seed
        pytest.xfail(f"issue 12: the quickstart's fine-tune still states this invented fact wrong: {missing}")


def _column_text(table: str, col: int) -> str:
    """The text of one column of a rich table, its wrapped cell lines joined again (rich may wrap
    "Lanna" and "tip" onto two lines, with other columns' text between them in the raw output)."""
    parts = [line.split("│")[col].strip() for line in table.splitlines() if line.count("│") > col]
    return " ".join(p for p in parts if p)
