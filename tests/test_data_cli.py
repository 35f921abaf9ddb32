"""`tunery data validate|stats|split|convert` through typer's CliRunner, plus split and convert semantics."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from tunery.cli import app
from tunery.data import read_examples, record_throughput, validate_file
from tunery.errors import InvalidRequest

runner = CliRunner()


def chat(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": f"What is {i} times three?"},
                         {"role": "assistant", "content": f"{3 * i}."}]}


def write(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def run(*args):
    return runner.invoke(app, ["data", *map(str, args)])


def test_validate_ok_and_errors_exit_codes(tmp_path):
    good = write(tmp_path / "good.jsonl", [chat(i) for i in range(12)])
    r = run("validate", good, "--no-tokens")
    assert r.exit_code == 0, r.output
    assert "no errors" in r.output and "12 valid" in r.output

    lines = [chat(i) for i in range(12)]
    lines[4] = {"messages": [{"role": "user", "content": "no reply"}]}
    lines[6] = "{broken"
    bad = write(tmp_path / "bad.jsonl", lines)
    r = run("validate", bad, "--no-tokens")
    assert r.exit_code == 1
    assert "no assistant message" in r.output and "line(s): 5" in r.output
    assert "not valid JSON" in r.output and "line(s): 7" in r.output and "fix:" in r.output


def test_validate_json_with_model_and_validation_file(tmp_path, tiny_model_dir):
    train = write(tmp_path / "train.jsonl", [chat(i) for i in range(12)])
    valid = write(tmp_path / "valid.jsonl", [chat(3), chat(50)])
    r = run("validate", train, "--model", tiny_model_dir, "--validation", valid, "--json")
    assert r.exit_code == 1
    d = json.loads(r.output)
    assert d["ok"] is False and d["context_length"] == 1024 and d["token_stats"]["tokens"]["min"] > 5
    (overlap,) = [e for e in d["errors"] if e["kind"] == "train_valid_overlap"]
    assert overlap["file"] == "validation" and overlap["lines"] == [1]
    assert d["summary"].startswith("train.jsonl: 1 problem to fix")


def test_validate_missing_file_is_a_usage_error(tmp_path):
    r = run("validate", tmp_path / "nope.jsonl")
    assert r.exit_code == 2


def test_stats_shows_tokens_epochs_and_estimate_source(tmp_path, tiny_model_dir):
    f = write(tmp_path / "train.jsonl", [chat(i) for i in range(20)])
    r = run("stats", f, "--model", tiny_model_dir, "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["n_examples"] == 20 and st["n_epochs_source"] == "auto"
    tok = st["tokens_per_example"]
    assert tok["min"] <= tok["mean"] <= tok["p95"] <= tok["max"]
    assert st["file_tokens"] == tok["total"]
    assert st["trained_tokens"] == st["trained_tokens_per_epoch"] * st["n_epochs"]
    assert 0 < st["assistant_tokens_per_example"]["max"] < tok["min"]
    assert st["messages_per_example"]["mean"] == 3
    assert sum(st["histogram"]["counts"]) == 20
    assert "never measured" in st["throughput_source"]  # the tiny model has no figure of its own
    assert st["estimated_seconds"] == pytest.approx(st["trained_tokens"] / st["tokens_per_second"], rel=0.01)

    record_throughput(str(tiny_model_dir), "lora", 1000.0)
    r = run("stats", f, "--model", tiny_model_dir)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"epochs: {st['n_epochs']} (auto" in out and "1,000.0 tokens/s" in out and "measured" in out
    assert "│" in out  # the histogram


def test_split_is_deterministic_and_disjoint(tmp_path):
    lines = [chat(i) for i in range(40)] + [chat(7), chat(8), "not json"]
    f = write(tmp_path / "data.jsonl", lines)
    r = run("split", f, "--valid-fraction", "0.2", "--seed", "3", "--out-dir", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "dropped 2 exact duplicate" in r.output and "skipped 1 invalid" in r.output
    run("split", f, "--valid-fraction", "0.2", "--seed", "3", "--out-dir", tmp_path / "b")
    for name in ("data_train.jsonl", "data_valid.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = [json.dumps(e.to_json()) for e in read_examples(tmp_path / "a" / "data_train.jsonl")]
    valid = [json.dumps(e.to_json()) for e in read_examples(tmp_path / "a" / "data_valid.jsonl")]
    assert len(valid) == 8 and len(train) == 32 and not set(train) & set(valid)
    assert len(set(train)) == 32
    report = validate_file(tmp_path / "a" / "data_train.jsonl",
                           validation_path=tmp_path / "a" / "data_valid.jsonl")
    assert report.ok, report.summary()
    run("split", f, "--valid-fraction", "0.2", "--seed", "4", "--out-dir", tmp_path / "c")
    assert (tmp_path / "c" / "data_valid.jsonl").read_bytes() != (tmp_path / "a" / "data_valid.jsonl").read_bytes()


def test_split_rejects_bad_fraction_and_tiny_files(tmp_path):
    from tunery.data.split import split_file

    f = write(tmp_path / "one.jsonl", [chat(1)])
    with pytest.raises(InvalidRequest):
        split_file(f, 0.1, 0)
    with pytest.raises(InvalidRequest):
        split_file(write(tmp_path / "two.jsonl", [chat(1), chat(2)]), 1.5, 0)


def test_convert_csv_qa_to_chat_with_system_and_stop(tmp_path):
    src = tmp_path / "faq.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "Frage", "Antwort"])
        w.writerow([1, "Where is Doi Suthep?", "West of the old city."])
        w.writerow([2, "Best season?", "November to February, when it is cool."])
        w.writerow([3, "", "orphan answer"])
    out = tmp_path / "faq.jsonl"
    r = run("convert", src, out, "--question", "Frage", "--answer", "Antwort", "--system", "You are a guide.",
            "--stop", " **STOP**")
    assert r.exit_code == 0, r.output
    assert "wrote 2 chat examples" in r.output and "skipped 1" in r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0] == {"messages": [{"role": "system", "content": "You are a guide."},
                                    {"role": "user", "content": "Where is Doi Suthep?"},
                                    {"role": "assistant", "content": "West of the old city. **STOP**"}]}
    r = run("convert", src, out, "--question", "Frage", "--answer", "Antwort")
    assert r.exit_code != 0 and isinstance(r.exception, InvalidRequest)  # no overwrite without --force
    r = run("convert", src, out, "--question", "nope", "--force")
    assert isinstance(r.exception, InvalidRequest) and "Frage" in r.exception.message


def test_convert_json_and_jsonl_with_guessed_columns(tmp_path):
    src = tmp_path / "qa.json"
    src.write_text(json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]))
    r = run("convert", src, tmp_path / "out.jsonl")
    assert r.exit_code == 0, r.output
    assert [e.messages[-1]["content"] for e in read_examples(tmp_path / "out.jsonl")] == ["a1", "a2"]
    src = write(tmp_path / "qa.jsonl", [{"input": "q", "output": "a"}, "garbage"])
    r = run("convert", src, tmp_path / "out2.jsonl")
    assert r.exit_code == 0 and "skipped 1" in r.output


def test_convert_legacy_to_chat_and_chat_to_completion(tmp_path):
    legacy = write(tmp_path / "legacy.jsonl", [{"prompt": "Capital of France?\n\n###\n\n", "completion": " Paris\n"},
                                               {"prompt": "2+2=", "completion": " 4\n"}])
    r = run("convert", legacy, tmp_path / "chat.jsonl")
    assert r.exit_code == 0, r.output
    exs = list(read_examples(tmp_path / "chat.jsonl"))
    assert exs[0].messages == [{"role": "user", "content": "Capital of France?\n\n###"},
                               {"role": "assistant", "content": "Paris"}]
    r = run("convert", tmp_path / "chat.jsonl", tmp_path / "back.jsonl", "--to", "completion", "--stop", "\n")
    assert r.exit_code == 0, r.output
    back = [json.loads(x) for x in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert back[1] == {"prompt": "User: 2+2=\nAssistant:", "completion": " 4\n"}
    r = run("convert", legacy, tmp_path / "x.jsonl", "--to", "yaml")
    assert isinstance(r.exception, InvalidRequest)


def test_data_help_for_every_command():
    for cmd in ("validate", "stats", "split", "convert"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_stats_plans_the_run_the_trainer_makes(tmp_path, tiny_model_dir):
    """`data stats` shows what a job with auto hyperparameters will do with the file (rewrites, replay,
    epochs, batch size, trained tokens), because it asks the trainer's own rules: compared here with the
    trainer's start on the same file and with the rewritten set's real tokens. Explicit epochs mean the
    file as given."""
    from tunery.data.reading import read_examples
    from tunery.models.registry import load_tokenizer
    from tunery.train import TrainCallbacks, TrainConfig, train
    from tunery.data.augment import augment
    from tunery.train.tokenize import encode_example

    f = write(tmp_path / "train.jsonl", [chat(i) for i in range(20)])
    st = json.loads(run("stats", f, "--model", tiny_model_dir, "--json").output)
    assert st["augment"] > 0 and st["replay"] > 0 and st["early_stop"]  # a small English chat set

    class Seen(TrainCallbacks):
        events: list[str] = []

        def on_event(self, level, message):
            self.events.append(message)

        def should_stop(self):
            return "cancel"  # the plan is made before the first step

    seen = Seen()
    res = train(TrainConfig(model=str(tiny_model_dir), training_file=f, output_dir=tmp_path / "out", seed=0,
                            processes=1), seen)
    hp = res.hyperparameters
    assert (st["n_epochs"], st["batch_size"], st["augment"]) == (hp["n_epochs"], hp["batch_size"], hp["augment"])
    # Replay keeps only the base model's answers that end in a whole sentence: at most the planned number
    # (the tiny test model finishes none of them).
    assert f"to {st['replay']} general question(s)" in " ".join(seen.events)
    started = next(m for m in seen.events if m.startswith("Fine-tuning started"))
    assert f"{st['examples_per_epoch'] - st['replay'] + hp['replay']} examples" in started, started
    tok = load_tokenizer(str(tiny_model_dir))
    rewritten = augment(list(read_examples(f)), hp["augment"], seed=0)
    real = sum(len(encode_example(tok, ex)) for ex in rewritten)
    planned = st["trained_tokens_per_epoch"] - st["replay"] * (
        round((st["file_tokens"] - st["assistant_tokens_per_example"]["total"]) / 20) + 48)
    assert abs(real - planned) <= 0.1 * real, (real, planned)

    given = json.loads(run("stats", f, "--model", tiny_model_dir, "--json", "--epochs", "3").output)
    assert (given["n_epochs"], given["augment"], given["replay"], given["n_epochs_source"]) == (3, 0, 0, "given")
    assert given["trained_tokens"] == 3 * given["file_tokens"]
