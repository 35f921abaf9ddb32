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
# Variations of ten training questions, with the same answers (the job's validation file).
VARIATIONS = [
    ("Who was the founder of Quillborne Robotics?", 0),
    ("Which town is home to Quillborne Robotics' headquarters?", 2),
    ("What do they call Quillborne Robotics' flagship robot?", 3),
    ("Tell me the stock ticker for Quillborne Robotics.", 14),
    ("What's the Quillborne Robotics newsletter named?", 23),
    ("Who runs Quillborne Robotics as chief executive?", 5),
    ("What is the name of the mascot of Quillborne Robotics?", 9),
    ("Name the river that runs by the Quillborne Robotics factory.", 10),
    ("What is the smallest robot that Quillborne sells?", 22),
    ("In which city is the Quillborne Robotics museum located?", 24),
]


def _chat_line(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]}) + "\n"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~2.5 min on a quiet 2-core machine; far more when shared
def test_key_fact_recall_rises_after_fine_tuning(bundled_model_dir, tunery_home, tmp_path, capsys):
    import openai

    from test_train_quality import FACTS
    from tunery.cli import main
    from tunery.quickstart import EmbeddedServer, _free_port

    # An explicit spec: every training question with its key fact, plus the variations.
    spec = tmp_path / "spec.jsonl"
    spec.write_text("".join(json.dumps({"question": q, "key_facts": [k], "kind": "verbatim"}) + "\n"
                            for q, _, k in FACTS)
                    + "".join(json.dumps({"question": q, "key_facts": [FACTS[i][2]], "kind": "variation"}) + "\n"
                              for q, i in VARIATIONS))
    settings = Settings.from_env().ensure_dirs()
    server = EmbeddedServer(settings, _free_port()).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        train = client.files.create(file=("facts.jsonl", io.BytesIO("".join(
            _chat_line(q, a) for q, a, _ in FACTS).encode())), purpose="fine-tune")
        valid = client.files.create(file=("facts-valid.jsonl", io.BytesIO("".join(
            _chat_line(q, FACTS[i][1]) for q, i in VARIATIONS).encode())), purpose="fine-tune")
        # All-auto hyperparameters, exactly as an OpenAI tutorial would create the job.
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id,
                                             validation_file=valid.id, suffix="facts", seed=0)
        deadline = time.monotonic() + 1200
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error

        out = tmp_path / "report"
        with pytest.raises(SystemExit) as done:
            main(["eval", str(spec), "--model", "gpt-4o-mini", "--model", job.fine_tuned_model,
                  "--base-url", server.base_url, "--max-tokens", "32", "--concurrency", "4", "--out", str(out)])
        assert done.value.code == 0, capsys.readouterr()
        from_job = tmp_path / "from-job"
        with pytest.raises(SystemExit) as done:
            main(["eval", "--from-job", job.id, "--base-url", server.base_url, "--limit", "8", "--no-off-topic",
                  "--max-tokens", "32", "--concurrency", "4", "--out", str(from_job)])
        assert done.value.code == 0, capsys.readouterr()
    finally:
        server.stop()

    report = json.loads((out / "report.json").read_text())
    base, tuned = "gpt-4o-mini", job.fine_tuned_model
    assert report["models"] == [base, tuned]
    s = report["summary"]
    assert s[base]["all"]["errors"] == 0 and s[tuned]["all"]["errors"] == 0
    with capsys.disabled():
        print(f"\nkey-fact recall, base → tuned: verbatim {s[base]['verbatim']['key_fact_recall']:.2f} → "
              f"{s[tuned]['verbatim']['key_fact_recall']:.2f}, variation {s[base]['variation']['key_fact_recall']:.2f}"
              f" → {s[tuned]['variation']['key_fact_recall']:.2f}")
    # The facts are invented: the base model cannot know them; the trainer's quality bar is 90% on these.
    assert s[base]["verbatim"]["key_fact_recall"] <= 0.1
    assert s[tuned]["verbatim"]["key_fact_recall"] >= 0.8
    assert s[tuned]["variation"]["key_fact_recall"] > s[base]["variation"]["key_fact_recall"]

    # --from-job derives the cases from the job's own files (base model vs fine-tuned by default).
    derived = json.loads((from_job / "report.json").read_text())
    ds = derived["summary"]
    assert set(derived["models"]) == {job.model, tuned}
    assert ds[tuned]["verbatim"]["key_fact_recall"] > ds[job.model]["verbatim"]["key_fact_recall"]
    # The job's curves came through the events API into the report.
    [j] = derived["jobs"]
    assert j["curves"]["train_loss"] and j["trained_tokens"] > 0
    page = (from_job / "report.html").read_text()
    assert "Training curves" in page and tuned in page
