"""Jobs read through a real tunery server with the openai SDK: curves from metrics events, hyperparameters,
dataset stats, cases built from the job's files, and the `tunery compare` / `tunery eval` commands.

The jobs are created through the API and then run by this test acting as the worker, with the same store
queue functions the worker uses (claim, metrics events, checkpoints, finish) — no training needed."""

from __future__ import annotations

import io
import json

import pytest

from test_api_support import make_server  # noqa: F401  (fixture)
from test_eval_support import endpoint  # noqa: F401  (fixture)
from tunery.eval.jobs import _curves_from_csv, cases_from_job, fetch_job, parse_examples


def facts_jsonl(items: list[tuple[str, str]]) -> bytes:
    return "".join(json.dumps({"messages": [
        {"role": "system", "content": "You are the Chiang Mai guide."},
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n" for q, a in items).encode()


TRAIN = [(f"What is fact number {i}?", f"Fact {i} is that Doi Suthep was built in {1380 + i}.") for i in range(12)]
VALID = [(f"Tell me fact {i}.", f"Doi Suthep dates from {1380 + i}.") for i in range(10)]


def run_as_worker(srv, job_id: str, *, steps: int, loss0: float, tokens: int, model_dir) -> dict:
    """Claim the queued job and report training the way the worker does; returns the metrics written."""
    from tunery.store import queue

    store = srv.store
    owner = queue.new_owner_id()
    claimed = queue.claim_next(store, owner, 60)
    assert claimed is not None and claimed.id == job_id
    queue.append_event_if_held(store, job_id, owner, "Fine-tuning job started", level="info")
    written = []
    for step in range(1, steps + 1):
        data = {"step": step, "total_steps": steps, "train_loss": loss0 / step,
                "train_mean_token_accuracy": 0.5 + step / (4 * steps)}
        if step % 2 == 0:
            data.update(valid_loss=loss0 / step + 0.1, valid_mean_token_accuracy=0.4 + step / (4 * steps))
        queue.append_event_if_held(store, job_id, owner, f"Step {step}/{steps}", type="metrics", data=data, level="info")
        written.append(data)
    ft = f"ft:smollm2-135m-instruct:personal:{claimed.suffix}:{job_id[-8:]}"
    queue.add_checkpoint(store, job_id, owner, step=steps // 2, model_name=f"{ft}:ckpt-step-{steps // 2}",
                         metrics=written[steps // 2 - 1], path=str(model_dir))
    queue.add_checkpoint(store, job_id, owner, step=steps, model_name=f"{ft}:ckpt-step-{steps}",
                         metrics=written[-1], path=str(model_dir))
    assert queue.finish_succeeded(store, claimed, owner, fine_tuned_model=ft, model_path=str(model_dir),
                                  trained_tokens=tokens, resolved_hyperparameters=None,
                                  result_csv_text=queue.result_csv(written))
    return {"ft": ft, "metrics": written}


@pytest.fixture
def jobs(make_server, tiny_model_dir):
    """Two succeeded jobs on the same files; their "fine-tuned" models are the tiny random model (a full
    model directory), so chat completions can serve them."""
    srv = make_server()
    client = srv.client()
    train = client.files.create(file=("train.jsonl", io.BytesIO(facts_jsonl(TRAIN))), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", io.BytesIO(facts_jsonl(VALID))), purpose="fine-tune")
    out = {}
    for suffix, epochs, loss0 in (("lr-a", 2, 3.0), ("lr-b", 3, 2.0)):
        job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=train.id,
                                             validation_file=valid.id, suffix=suffix,
                                             hyperparameters={"n_epochs": epochs})
        out[suffix] = {"id": job.id, **run_as_worker(srv, job.id, steps=6, loss0=loss0, tokens=1000 * epochs,
                                                       model_dir=tiny_model_dir)}
    return srv, client, out


def test_fetch_job_reads_curves_hyperparameters_and_data(jobs):
    srv, client, made = jobs
    info, texts = fetch_job(client, made["lr-a"]["id"])
    assert info.status == "succeeded" and info.fine_tuned_model == made["lr-a"]["ft"]
    assert info.hyperparameters["n_epochs"] == 2 and info.trained_tokens == 2000
    assert info.curves["train_loss"] == [[s, 3.0 / s] for s in range(1, 7)]
    assert info.curves["valid_loss"] == [[s, pytest.approx(3.0 / s + 0.1)] for s in (2, 4, 6)]
    assert [p[0] for p in info.curves["valid_mean_token_accuracy"]] == [2, 4, 6]
    assert info.total_steps == 6 and info.training_seconds is not None and info.training_seconds >= 0
    assert sorted(c["step"] for c in info.checkpoints) == [3, 6]
    assert {c["model"] for c in info.checkpoints} == {f"{info.fine_tuned_model}:ckpt-step-{n}" for n in (3, 6)}
    assert info.dataset["training"]["examples"] == 12 and info.dataset["validation"]["examples"] == 10
    assert info.dataset["training"]["mean_turns"] == 3.0
    assert texts["training"].encode() == facts_jsonl(TRAIN)


def test_result_csv_gives_the_same_curves():
    from tunery.store.queue import result_csv

    metrics = [{"step": 1, "train_loss": 2.0, "train_mean_token_accuracy": 0.5},
               {"step": 2, "train_loss": 1.0, "train_mean_token_accuracy": 0.6, "valid_loss": 1.5,
                "valid_mean_token_accuracy": 0.55}]
    curves = _curves_from_csv(result_csv(metrics))
    assert curves["train_loss"] == [[1, 2.0], [2, 1.0]] and curves["valid_loss"] == [[2, 1.5]]
    assert curves["train_mean_token_accuracy"] == [[1, 0.5], [2, 0.6]]
    assert curves["valid_mean_token_accuracy"] == [[2, 0.55]]


def test_cases_from_job_files(jobs):
    srv, client, made = jobs
    info, texts = fetch_job(client, made["lr-a"]["id"])
    cases = cases_from_job(info, texts, limit=5, seed=1)
    kinds = [c.kind for c in cases]
    assert kinds.count("verbatim") == 5 and kinds.count("variation") == 5 and kinds.count("off-topic") == 4
    v = next(c for c in cases if c.kind == "verbatim")
    n = int(v.id.split("-L")[1]) - 1  # ids name the training file's line
    assert v.messages == [{"role": "system", "content": "You are the Chiang Mai guide."},
                          {"role": "user", "content": TRAIN[n][0]}]
    assert v.expected == TRAIN[n][1] and [str(1380 + n)] in v.key_facts and ["Doi Suthep"] in v.key_facts
    # The same seed gives the same sample.
    assert [c.id for c in cases_from_job(info, texts, limit=5, seed=1)] == [c.id for c in cases]


def test_parse_examples_formats():
    text = "\n".join([
        json.dumps({"prompt": "2+2=", "completion": " 4"}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "c"},
                                 {"role": "assistant", "content": "ignored", "weight": 0}]}),
        json.dumps({"input": {"messages": [{"role": "user", "content": "hi"}]},
                    "preferred_output": [{"role": "assistant", "content": "hello"}],
                    "non_preferred_output": [{"role": "assistant", "content": "go away"}]}),
        "not json", json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
    ])
    ex = parse_examples(text)
    assert [(e.line, e.expected) for e in ex] == [(1, "4"), (2, "b"), (3, "hello")]
    assert ex[1].messages == [{"role": "user", "content": "a"}]


def test_compare_command_training_side(jobs, tmp_path, capsys):
    from tunery.cli import main

    srv, client, made = jobs
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as done:
        main(["compare", made["lr-a"]["id"], made["lr-b"]["id"], "--no-eval", "--base-url", srv.base_url,
              "--out", str(out)])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert [j["id"] for j in report["jobs"]] == [made["lr-a"]["id"], made["lr-b"]["id"]]
    assert [j["trained_tokens"] for j in report["jobs"]] == [2000, 3000]
    page = (out / "report.html").read_text()
    assert page.count('<path d="M') == 8  # 2 jobs × (train, valid) × (loss, accuracy), overlaid
    assert "lr-a train" in page and "lr-b valid" in page and "<script" not in page
    printed = capsys.readouterr().out
    assert "Fine-tuning jobs" in printed and "trained tokens" in printed


def test_compare_command_with_evaluation(jobs, tmp_path):
    from tunery.cli import main

    srv, client, made = jobs
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as done:
        main(["compare", made["lr-a"]["id"], made["lr-b"]["id"], "--no-base", "--base-url", srv.base_url,
              "--limit", "2", "--max-tokens", "4", "--no-semantic", "--no-off-topic", "--out", str(out)])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == [made["lr-a"]["ft"], made["lr-b"]["ft"]]
    # Both jobs trained on the same files: their cases are merged, not repeated.
    assert sorted(c["kind"] for c in report["cases"]) == ["variation", "variation", "verbatim", "verbatim"]
    assert len(report["results"]) == 8 and all(r["error"] is None for r in report["results"])
    assert all(1 <= r["metrics"]["completion_tokens"] <= 4 for r in report["results"])
    page = (out / "report.html").read_text()
    assert page.count('<path d="M') == 8 and made["lr-b"]["ft"] in page and "Answers side by side" in page


def test_compare_unknown_job_is_one_line(jobs, capsys):
    from tunery.cli import main

    srv, _, _ = jobs
    with pytest.raises(SystemExit) as done:
        main(["compare", "ftjob-doesnotexist", "--no-eval", "--base-url", srv.base_url])
    assert done.value.code == 1
    assert "ftjob-doesnotexist not found" in capsys.readouterr().err


def test_eval_command_end_to_end(endpoint, tmp_path, capsys):
    from tunery.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("- id: cap\n  question: Capital of France?\n  expected: Paris\n  key_facts: [Paris]\n"
                    "- question: Tell me a joke\n  kind: off-topic\n  should_decline: true\n")
    endpoint.script.answers = {"a": {"Capital of France?": "Paris", "Tell me a joke": "Knock knock."}, "b": {}}
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as done:
        main(["eval", str(spec), "-m", "a", "-m", "b", "--base-url", endpoint.base_url, "--api-key", "k",
              "--out", str(out), "--no-semantic"])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["a"]["variation"]["exact_match"] == 1.0
    assert report["summary"]["b"]["variation"]["key_fact_recall"] == 0.0
    assert report["summary"]["a"]["off-topic"]["answered_when_should_decline"] == 1.0
    assert report["embedding_model"] is None
    assert (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "2 cases × 2 models" in printed and "report:" in printed


def test_eval_command_errors_are_one_line(endpoint, tmp_path, capsys):
    from tunery.cli import main
    from test_api_support import free_port

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n{oops\n')
    with pytest.raises(SystemExit) as done:
        main(["eval", str(bad), "-m", "a", "--base-url", endpoint.base_url])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "line 1:" in err and "line 2: invalid JSON" in err
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "x", "expected": "y"}\n')
    with pytest.raises(SystemExit) as done:
        main(["eval", str(good), "-m", "a", "--base-url", f"http://127.0.0.1:{free_port()}/v1"])
    assert done.value.code == 1 and "is `tunery serve` running?" in capsys.readouterr().err


def test_models_of_jobs_with_and_without_checkpoints(jobs):
    from tunery.eval.cli import _job_models

    srv, client, made = jobs
    infos = [fetch_job(client, made[k]["id"], with_files=False)[0] for k in ("lr-a", "lr-b")]
    a, b = made["lr-a"]["ft"], made["lr-b"]["ft"]
    assert _job_models(infos, include_base=True)[0] == ["smollm2-135m-instruct", a, b]
    assert _job_models(infos, include_base=False)[0] == [a, b]
    models, labels = _job_models(infos, include_base=True, checkpoints=True)
    # Step 6 is the final model itself, so only the mid-training checkpoint is added.
    assert models == ["smollm2-135m-instruct", f"{a}:ckpt-step-3", a, f"{b}:ckpt-step-3", b]
    assert labels[f"{a}:ckpt-step-3"] == f"{made['lr-a']['id']} step 3"


def test_eval_from_job_defaults_to_base_and_fine_tuned(jobs, tmp_path):
    from tunery.cli import main

    srv, client, made = jobs
    spec = tmp_path / "extra.jsonl"
    spec.write_text(json.dumps({"id": "mine", "question": "Who built Doi Suthep?", "key_facts": ["Kuena"]}) + "\n")
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as done:
        main(["eval", str(spec), "--from-job", made["lr-a"]["id"], "--base-url", srv.base_url, "--limit", "1",
              "--max-tokens", "3", "--no-semantic", "--out", str(out)])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    # Without --model: the job's base model and its fine-tuned model, in that order.
    assert report["models"] == ["smollm2-135m-instruct", made["lr-a"]["ft"]]
    assert report["model_labels"]["smollm2-135m-instruct"] == "smollm2-135m-instruct (base)"
    # The spec's case plus 1 verbatim, 1 variation and the 4 built-in off-topic questions.
    kinds = [c["kind"] for c in report["cases"]]
    assert report["cases"][0]["id"] == "mine" and kinds.count("off-topic") == 4 and len(kinds) == 7
    assert all(r["error"] is None for r in report["results"]) and len(report["results"]) == 14
    assert report["jobs"][0]["id"] == made["lr-a"]["id"] and report["jobs"][0]["suffix"] == "lr-a"
