"""The bundled SmolLM2-135M-Instruct evaluated before and after a short real fine-tune, all through a real
tunery server (API, worker, trainer, chat completions) and `tunery eval --from-job`."""

from __future__ import annotations

import io
import json
import os
import time

import pytest

from tunery.settings import Settings

# Idle OpenMP threads spin and starve the other processes on a shared CPU (the worker sets this for its
# training children; this process runs the inference engine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 5.0}


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~2.5 min on a quiet 2-core machine; far more when shared
def test_key_fact_recall_rises_after_fine_tuning(bundled_model_dir, tunery_home, tmp_path, capsys):
    import openai

    from tunery import demo
    from tunery.cli import main
    from tunery.quickstart import EmbeddedServer, _free_port

    settings = Settings.from_env().ensure_dirs()
    server = EmbeddedServer(settings, _free_port()).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        # Half of the quickstart's demo set keeps the test short; the hyperparameters are what "auto" gives
        # the whole set (3 epochs, batch 1, 5x learning rate), measured to teach its facts: 48 steps.
        lines = demo.read_text(demo.TRAIN_FILE).splitlines(keepends=True)[:16]
        train = client.files.create(file=("train.jsonl", io.BytesIO("".join(lines).encode())),
                                    purpose="fine-tune")
        valid = client.files.create(file=("valid.jsonl", io.BytesIO(demo.read_text(demo.VALIDATION_FILE).encode())),
                                    purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=train.id, validation_file=valid.id, suffix="eval",
            method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}})
        deadline = time.monotonic() + 1200
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error

        out = tmp_path / "report"
        with pytest.raises(SystemExit) as done:
            main(["eval", "--from-job", job.id, "--base-url", server.base_url, "--limit", "5", "--no-off-topic",
                  "--max-tokens", "64", "--concurrency", "4", "--out", str(out)])
        assert done.value.code == 0, capsys.readouterr()
    finally:
        server.stop()

    report = json.loads((out / "report.json").read_text())
    base, tuned = "smollm2-135m-instruct", job.fine_tuned_model
    assert report["models"] == [base, tuned]
    s = report["summary"]
    assert s[base]["all"]["errors"] == 0 and s[tuned]["all"]["errors"] == 0
    # The demo's hours, prices and names are invented: the base model cannot know them, the tuned one learned them.
    # Variation cases come from the validation file, partly about facts outside this half of the data,
    # so the assertion is on the trained questions and on all cases together.
    for kind in ("verbatim", "all"):
        assert s[tuned][kind]["key_fact_recall"] > s[base][kind]["key_fact_recall"], (kind, s[base][kind],
                                                                                      s[tuned][kind])
    # A 135M model after 48 steps on 16 examples mixes facts up (measured: recall 0 → 0.16 on the trained
    # questions); overlap with the reference rises more clearly (token F1 0.12 → 0.38).
    assert s[tuned]["verbatim"]["key_fact_recall"] >= 0.1
    for kind in ("verbatim", "variation"):
        assert s[tuned][kind]["token_f1"] > s[base][kind]["token_f1"] + 0.1, kind
    # The house style ("Lanna tip: …") of every training answer shows up in the tuned answers only.
    styled = {m: sum("Lanna tip" in (r["text"] or "") for r in report["results"] if r["model"] == m)
              for m in (base, tuned)}
    assert styled[base] == 0 and styled[tuned] >= 5, styled
    # The job's curves came through the events API into the report.
    [j] = report["jobs"]
    assert j["curves"]["train_loss"] and j["trained_tokens"] > 0
    page = (out / "report.html").read_text()
    assert "Training curves" in page and tuned in page
