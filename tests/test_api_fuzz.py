"""The API's fuzz suite (issue 11): a cross-organization sweep — every object kind × every verb, org B on
org A's files, jobs, events, checkpoints, models and guards — answering 404 (or a 400 naming the field), with 0
server errors, 0 logged tracebacks and 0 rows or files written or changed. Schemathesis over every
endpoint, with and without keys, is tests/test_api_schema.py; hypothesis on the validator is
tests/test_data_props.py."""

from __future__ import annotations

import logging
import shutil

import httpx
import pytest
from sqlalchemy import func, select

from test_api_support import chat_jsonl
from tunery.store import create_api_key, get_org, register_model
from tunery.store.guards import GuardSpec, record_decision, set_guard
from tunery.store.tables import (
    ApiKey, File, FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, Guard, GuardDecision, Model,
)

pytest_plugins = ["test_api_support"]
JOB = "/v1/fine_tuning/jobs"
TABLES = (File, FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint, Model, ApiKey, Guard, GuardDecision)


def snapshot(srv) -> dict:
    """Every table's row count and content signature, and every file on disk under the home."""
    out = {}
    with srv.store.read() as s:
        for t in TABLES:
            rows = s.execute(select(t)).scalars().all()
            out[t.__tablename__] = sorted(repr(sorted((k, repr(v)) for k, v in vars(r).items()
                                                      if not k.startswith("_"))) for r in rows)
            assert s.execute(select(func.count()).select_from(t)).scalar() == len(rows)
    out["disk"] = sorted(str(p.relative_to(srv.settings.home)) for p in srv.settings.home.rglob("*")
                         if "tunery.db" not in p.name)
    return out


@pytest.fixture
def org_a_objects(make_server, tiny_model_dir):
    srv = make_server()
    _, key_a = create_api_key(srv.store, "alpha")
    _, key_b = create_api_key(srv.store, "beta")
    a = {"authorization": f"Bearer {key_a}"}
    with httpx.Client(base_url=srv.url, timeout=60, headers=a) as http:
        fid = http.post("/v1/files", files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"}
                        ).json()["id"]
        other = http.post("/v1/files", files={"file": ("n.txt", b"notes")}, data={"purpose": "user_data"}).json()["id"]
        r = http.post(JOB, json={"model": "gpt-4o-mini", "training_file": fid, "suffix": "a"})
        assert r.status_code == 200, r.text
        jid = r.json()["id"]
        paused = http.post(JOB, json={"model": "gpt-4o-mini", "training_file": fid}).json()["id"]
        assert http.post(f"{JOB}/{paused}/pause").status_code == 200
    org = get_org(srv.store, "alpha")
    model = "ft:smollm2-135m-instruct:alpha:a:Alpha001"
    final = srv.settings.jobs_dir / jid / "final"
    shutil.copytree(tiny_model_dir, final)
    with srv.store.session() as s:
        s.add(FineTuningJobCheckpoint(id="ftckpt-alpha1", job_id=jid, created_at=5, step_number=2,
                                      fine_tuned_model_checkpoint=model + ":ckpt-step-2", metrics={},
                                      path=str(final)))
    register_model(srv.store, org, model_id=model, base_model="smollm2-135m-instruct", job_id=jid, path=final)
    # Guards: one on org A's fine-tune, one on a base name every organization can use (org B must not see it).
    for guarded in (model, "gpt-4o-mini"):
        set_guard(srv.store, org, guarded, GuardSpec(classifier=model))
        record_decision(srv.store, org, guarded, stage="question", score=0.1, allowed=False, text="off topic")
    with srv.store.read() as s:
        event = s.execute(select(FineTuningJobEvent.id).where(FineTuningJobEvent.job_id == jid)).scalars().first()
    return srv, key_b, {"file": fid, "other_file": other, "job": jid, "paused_job": paused, "model": model,
                        "checkpoint": model + ":ckpt-step-2", "event": event, "model_dir": str(final)}


def test_org_b_cannot_see_or_touch_anything_of_org_a(org_a_objects, caplog):
    srv, key_b, ids = org_a_objects
    before = snapshot(srv)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    calls = []
    for fid in (ids["file"], ids["other_file"]):
        calls += [("GET", f"/v1/files/{fid}", None), ("DELETE", f"/v1/files/{fid}", None),
                  ("GET", f"/v1/files/{fid}/content", None), ("GET", f"/v1/files?after={fid}", None)]
    for jid in (ids["job"], ids["paused_job"]):
        calls += [("GET", f"{JOB}/{jid}", None), ("POST", f"{JOB}/{jid}/cancel", None),
                  ("POST", f"{JOB}/{jid}/pause", None), ("POST", f"{JOB}/{jid}/resume", None),
                  ("GET", f"{JOB}/{jid}/events", None), ("GET", f"{JOB}/{jid}/checkpoints", None),
                  ("GET", f"{JOB}?after={jid}", None)]
    calls += [("GET", f"{JOB}/{ids['job']}/events?after={ids['event']}", None),
              ("GET", f"{JOB}/{ids['job']}/checkpoints?after=ftckpt-alpha1", None)]
    for name in (ids["model"], ids["checkpoint"], ids["model_dir"]):
        calls += [("GET", f"/v1/models/{name}", None), ("DELETE", f"/v1/models/{name}", None),
                  ("POST", "/v1/chat/completions", {"model": name, **chat}),
                  ("POST", "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 1})]
    guards = "/v1/tunery/guards"
    for name in (ids["model"], "gpt-4o-mini"):  # org A's guards, by the model they guard
        calls += [("GET", f"{guards}/{name}", None), ("DELETE", f"{guards}/{name}", None)]
    # Setting a guard on org A's model, or with org A's model (by name or by path) as the classifier.
    for model, classifier in ((ids["model"], "gpt-4o-mini"), (ids["checkpoint"], "gpt-4o-mini"),
                              (ids["model_dir"], "gpt-4o-mini"), ("gpt-4o-mini", ids["model"]),
                              ("gpt-4o-mini", ids["checkpoint"]), ("gpt-4o-mini", ids["model_dir"])):
        calls.append(("POST", f"{guards}/{model}", {"classifier": classifier}))
    # Creating a job from org A's file, or from its fine-tune (by name or by path): refused, nothing made.
    for field, value in (("training_file", ids["file"]), ("validation_file", ids["file"]),
                         ("model", ids["model"]), ("model", ids["model_dir"])):
        body = {"model": "gpt-4o-mini", "training_file": ids["file"], field: value}
        calls.append(("POST", JOB, body))
    statuses = []
    with httpx.Client(base_url=srv.url, timeout=60, headers={"authorization": f"Bearer {key_b}"}) as http:
        for method, url, body in calls:
            r = http.request(method, url, json=body)
            statuses.append((method, url, r.status_code))
            assert r.status_code in (400, 404), (method, url, r.status_code, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"] == "invalid_request_error", (method, url, err)
            assert ids["model_dir"] not in err["message"] or ids["model_dir"] in url + str(body), err
        # Lists of org B hold nothing of org A's.
        listed = " ".join(http.get(u).text for u in ("/v1/files", JOB, "/v1/models", "/v1/tunery/guards"))
        assert http.get("/v1/tunery/guards").json()["data"] == []
        for key in ("file", "other_file", "job", "paused_job", "model", "checkpoint"):
            assert ids[key] not in listed, key
    assert all(s < 500 for *_, s in statuses)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert snapshot(srv) == before  # no row or file written, changed or removed
