"""DPO through the real server, worker and official SDK on the tiny model: SFT first, then DPO on top of the
ft: model (the path OpenAI's guide recommends), with events, metrics, checkpoints, result file, a servable
model; pause/resume and cancel of a DPO job."""

from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest
from test_dpo import pref_rows
from test_worker import create_job, embedded, messages, metrics_steps, upload, wait_for  # noqa: F401

from test_api_support import make_server  # noqa: F401  (fixture)
from tunery.store import queue


def upload_pref(client, tmp_path: Path, rows: list[dict], name: str) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def finished(client, job_id: str, timeout: float = 240):
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in
                    ("succeeded", "failed", "cancelled") and j, timeout, "the job to finish")


def test_sft_then_dpo_on_the_fine_tuned_model(embedded, tiny_model_dir, tmp_path):
    from tunery.store import find_servable_model, get_org

    srv, client = embedded
    sft = finished(client, create_job(client, tiny_model_dir, upload(client, tmp_path), suffix="sft").id)
    assert sft.status == "succeeded", sft.error

    train_id = upload_pref(client, tmp_path, pref_rows(12), "pref.jsonl")
    valid_id = upload_pref(client, tmp_path, pref_rows(10, start=100), "pref-valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=train_id, validation_file=valid_id, suffix="pref",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                           "learning_rate_multiplier": 5}}})
    assert job.model == sft.fine_tuned_model and job.method.dpo.hyperparameters.beta == "auto"
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    # Named after the base model, like any fine-tuned model; beta "auto" resolved to the documented 0.1.
    assert job.fine_tuned_model == f"ft:{tiny_model_dir.name}:personal:pref:{job.id[-8:]}"
    hp = job.method.dpo.hyperparameters
    assert (hp.beta, hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (0.1, 2, 4, 5.0)

    events = [e for e in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000)))
              if e.type == "metrics"]
    assert [e.data["step"] for e in events] == list(range(1, 7))
    # The reference is the SFT model, which DPO starts from: the first loss is log 2 exactly.
    assert events[0].data["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    last = events[-1].data
    assert last["train_loss"] < math.log(2) and last["train_reward_accuracy"] == 1.0
    assert {"train_reward_margin", "train_chosen_logps", "train_rejected_logps", "full_valid_loss",
            "full_valid_reward_accuracy"} <= set(last)
    assert messages(client, job.id)[-1] == "The job has successfully completed"

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [3, 6]
    # Each checkpoint object carries OpenAI's seven metric names, all filled (checkpoints fall on epoch ends,
    # where a validation batch and the whole validation file are scored), equal to that step's metrics
    # event: the DPO loss as train_loss/valid_loss/full_valid_loss, the chosen outputs' token accuracy.
    by_step = {e.data["step"]: e.data for e in events}
    for c in ckpts:
        got = c.metrics.model_dump()
        assert set(got) == {"step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                            "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"}
        assert got["step"] == c.step_number
        for k in set(got) - {"step"}:
            assert got[k] == pytest.approx(by_step[c.step_number][k], rel=1e-6), k
        assert 0 <= got["full_valid_mean_token_accuracy"] <= 1 and got["full_valid_loss"] > 0
    (rid,) = job.result_files
    rows = client.files.content(rid).text.splitlines()
    assert rows[0].startswith("step,train_loss") and len(rows) == 7

    org = get_org(srv.store, "personal")
    served = find_servable_model(srv.store, org, job.fine_tuned_model)
    meta = json.loads((served.adapter_dir / "tunery.json").read_text())
    assert meta["hyperparameters"]["objective"] == "dpo"
    assert meta["hyperparameters"]["init_from"] == str(find_servable_model(srv.store, org,
                                                                            sft.fine_tuned_model).adapter_dir)
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "How much is item 3?"}])
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.content is not None


def test_dpo_job_pause_resume_and_cancel(embedded, tiny_model_dir, tmp_path):
    srv, client = embedded
    train_id = upload_pref(client, tmp_path, pref_rows(48), "pref.jsonl")
    job = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 2, "beta": 0.3}}})  # 48 steps
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 5, 120, "some DPO steps")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_for(lambda: queue.job_state(srv.store, job.id) == ("paused", None), 30, "the pause to be saved")
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = finished(client, job.id, 300)
    assert done.status == "succeeded", done.error
    assert metrics_steps(client, job.id) == list(range(1, 49))  # every step exactly once across the pause
    assert done.method.dpo.hyperparameters.beta == 0.3

    other = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train_id,
                                           method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3}}})
    wait_for(lambda: metrics_steps(client, other.id), 120, "training to start")
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"
    wait_for(lambda: queue.job_state(srv.store, other.id) == ("cancelled", None), 15, "the trainer to stop")
    assert client.fine_tuning.jobs.retrieve(other.id).fine_tuned_model is None


def test_an_unknown_fine_tuned_model_is_a_400_naming_model(embedded, tmp_path):
    _srv, client = embedded
    train_id = upload_pref(client, tmp_path, pref_rows(12), "pref.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="ft:smollm2-135m-instruct:personal::nope1234", training_file=train_id,
                                       method={"type": "dpo"})
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_available"
    assert client.fine_tuning.jobs.list().data == []
