"""The API through the official openai SDK over real HTTP: files, jobs, events, checkpoints, models,
organizations and keys, errors mapped to the SDK's exception classes, and concurrency."""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from test_api_support import chat_jsonl, preference_jsonl
from tunery.store import create_api_key, find_servable_model, register_model
from tunery.store.tables import FineTuningJobCheckpoint

pytest_plugins = ["test_api_support"]  # the server, store and PostgreSQL fixtures


def upload(c, data: bytes = None, name: str = "train.jsonl", purpose: str = "fine-tune"):
    return c.files.create(file=(name, io.BytesIO(chat_jsonl() if data is None else data)), purpose=purpose)


def test_file_upload_list_content_delete(client, server):
    f = upload(client, name="../../../etc/passwd")
    assert f.object == "file" and f.status == "processed" and f.status_details is None
    assert f.filename == "passwd" and f.id.startswith("file-") and f.bytes == len(chat_jsonl())
    blob = server.settings.files_dir / f.id
    assert blob.read_bytes() == chat_jsonl()  # stored under its id, never under the user's name
    assert not (server.settings.home.parent / "etc").exists()
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert client.files.content(f.id).content == chat_jsonl()
    assert client.files.wait_for_processing(f.id, poll_interval=0.01).status == "processed"
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id and not blob.exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_bad_training_file_reports_problems(client):
    f = upload(client, b'{"messages": [{"role": "user", "content": "hi"}]}\n[1, 2]\n', name="bad.jsonl")
    assert f.status == "error"
    assert "bad.jsonl" in f.status_details and "line" in f.status_details
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.body["param"] == "training_file" and "failed validation" in e.value.body["message"]


def test_file_pagination_across_pages_and_order(client):
    ids = [upload(client, b"x", name=f"{i}.txt", purpose="user_data").id for i in range(7)]
    upload(client)  # a fine-tune file, filtered out below
    first = client.files.list(purpose="user_data", limit=3)
    assert len(first.data) == 3 and first.has_more
    assert [f.id for f in client.files.list(purpose="user_data", limit=3)] == ids[::-1]  # auto-pagination
    assert [f.id for f in client.files.list(purpose="user_data", limit=2, order="asc")] == ids
    assert len(client.files.list().data) == 8


def test_upload_size_limit_leaves_nothing(make_server):
    srv = make_server(max_upload_bytes=1000)
    c = srv.client()
    with pytest.raises(openai.APIStatusError) as e:
        upload(c, b"y" * 5000, purpose="user_data")
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    assert c.files.list().data == []
    assert [p.name for p in srv.settings.files_dir.iterdir()] == []
    assert upload(c, b"y" * 900, purpose="user_data").bytes == 900


def test_interrupted_upload_leaves_no_row_and_no_file(server):
    c = server.client()
    host, port = server.url.removeprefix("http://").split(":")
    body_head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
                 b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n" + b"z" * 20000)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
                  b"Content-Length: 1000000\r\n\r\n" + body_head)
        time.sleep(0.2)
    deadline = time.time() + 5
    while time.time() < deadline and list(server.settings.files_dir.iterdir()):
        time.sleep(0.05)
    assert list(server.settings.files_dir.iterdir()) == []
    assert c.files.list().data == []


def test_job_create_and_lifecycle(client):
    f = upload(client)
    v = upload(client, chat_jsonl(10, "v"), name="valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=f.id, validation_file=v.id, suffix="my-bot_1.0",
        hyperparameters={"n_epochs": 2}, metadata={"team": "ml"})
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.model == "gpt-4o-mini"
    assert job.id.startswith("ftjob-") and isinstance(job.seed, int) and job.result_files == []
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == 2
    assert job.user_provided_suffix == "my-bot_1.0" and job.metadata == {"team": "ml"} and job.validation_file == v.id
    assert job.organization_id.startswith("org-")
    assert client.fine_tuning.jobs.retrieve(job.id).model_dump() == job.model_dump()
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert [e.message for e in events][::-1][:2] == [f"Created fine-tuning job: {job.id}",
                                                    f"Validating training file: {f.id} and validation file: {v.id}"]
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    with pytest.raises(openai.BadRequestError, match="already finished"):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)
    seeded = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, seed=42,
                                            method={"type": "supervised", "supervised": {"hyperparameters": {
                                                "learning_rate_multiplier": 0.5, "batch_size": 4}}})
    assert seeded.seed == 42 and seeded.hyperparameters.learning_rate_multiplier == 0.5
    assert seeded.hyperparameters.batch_size == 4


def test_dpo_job(client):
    pref = upload(client, preference_jsonl(), name="pref.jsonl")
    assert pref.status == "processed", pref.status_details
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=pref.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1}}})
    assert job.status == "queued" and job.method.type == "dpo"
    hp = job.method.dpo.hyperparameters
    assert (hp.beta, hp.n_epochs, hp.batch_size) == (0.1, 1, "auto")
    assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]
    chat = upload(client)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=chat.id, method={"type": "dpo"})
    assert e.value.body["param"] == "training_file" and "preference" in e.value.body["message"]


@pytest.mark.parametrize("kwargs,param", [
    ({"model": "no-such-model"}, "model"),
    ({"model": "ft:smollm2-135m-instruct:personal::abc"}, "model"),
    ({"training_file": "file-doesnotexist"}, "training_file"),
    ({"validation_file": "file-doesnotexist"}, "validation_file"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"suffix": "bad suffix!"}, "suffix"),
    ({"suffix": "a:b"}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 1000}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"learning_rate_multiplier": -2.0}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3}}}}, "hyperparameters"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
     "method.supervised.hyperparameters.beta"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}}, "method.dpo.hyperparameters.beta"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"extra_body": {"hyperparamters": {"n_epochs": 2}}}, "hyperparamters"),
])
def test_job_create_rejects_bad_fields_with_param(client, kwargs, param):
    f = upload(client)
    args = {"model": "gpt-4o-mini", "training_file": f.id, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(**args)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"] and e.value.body["code"]


def test_job_create_rejects_wrong_purpose_and_unprocessed_file(client, server):
    other = upload(client, b"x", purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=other.id)
    f = upload(client)
    with server.store.session() as s:
        from sqlalchemy import update

        from tunery.store.tables import File
        s.execute(update(File).where(File.id == f.id).values(status="uploaded"))
    with pytest.raises(openai.BadRequestError, match="still being processed") as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.body["param"] == "training_file"


def test_job_list_pagination_and_metadata(client):
    f = upload(client)
    ids = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id,
                                          metadata={"parity": str(i % 2)}).id for i in range(5)]
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"parity": "0"})] == [ids[4], ids[2], ids[0]]


def test_events_and_checkpoints_pages(client, server):
    f = upload(client)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, suffix="ck")
    store = server.store
    from tunery.store import add_event
    for step in range(1, 8):
        add_event(store, job.id, f"Step {step}/7: training loss=0.5", type="metrics",
                  data={"step": step, "total_steps": 7, "train_loss": 0.5 if step > 1 else float("nan"),
                        "train_mean_token_accuracy": 0.7})
    with store.session() as s:
        for i, step in enumerate((3, 6)):
            s.add(FineTuningJobCheckpoint(
                id=f"ftckpt-{i}", job_id=job.id, created_at=100 + i, step_number=step,
                fine_tuned_model_checkpoint=f"ft:smollm2-135m-instruct:personal:ck:Abc{i}:ckpt-step-{step}",
                metrics={"step": step, "train_loss": 0.4}, path="/nowhere"))
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert [e.data["step"] for e in page.data] == [7, 6, 5] and page.has_more
    assert page.data[0].type == "metrics" and page.data[0].message.startswith("Step 7/7")
    everything = list(client.fine_tuning.jobs.list_events(job.id, limit=3))
    assert len(everything) == 7 + 3 and len({e.id for e in everything}) == 10
    assert everything[-4].data["step"] == 1 and everything[-4].data["train_loss"] is None  # NaN → null
    assert everything[-1].message == f"Created fine-tuning job: {job.id}"
    cps = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert [c.step_number for c in cps] == [6, 3]
    assert cps[0].object == "fine_tuning.job.checkpoint" and cps[0].fine_tuning_job_id == job.id
    assert cps[0].metrics.train_loss == 0.4 and cps[0].metrics.step == 6


def test_models_list_retrieve_delete(make_server, tmp_path):
    srv = make_server()
    c = srv.client()
    unloaded: list[str] = []

    from tunery.inference.router import get_engine

    real = get_engine(srv.app)

    class Engine:  # records the unload hook's calls; listings still ask the real router for the backend
        def unload(self, model_id):
            unloaded.append(model_id)

        def backend_for(self, servable, **kw):
            return real.backend_for(servable, **kw)

    srv.app.state.engine = Engine()
    ids = {m.id for m in c.models.list()}
    assert {"smollm2-135m-instruct", "gpt-4o-mini", "gpt-3.5-turbo", "babbage-002"} <= ids
    f = upload(c)
    job = c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, suffix="bot")
    org = c.fine_tuning.jobs.retrieve(job.id).organization_id
    name = "ft:smollm2-135m-instruct:personal:bot:Zz9"
    ckpt = name + ":ckpt-step-2"
    with srv.store.session() as s:
        s.add(FineTuningJobCheckpoint(id="ftckpt-z", job_id=job.id, created_at=5, step_number=2,
                                      fine_tuned_model_checkpoint=ckpt, metrics={}, path=str(tmp_path)))
    register_model(srv.store, org, model_id=name, base_model="smollm2-135m-instruct", job_id=job.id, path=tmp_path)
    listed = {m.id: m for m in c.models.list()}
    assert name in listed and ckpt not in listed  # checkpoints are not listed, as on OpenAI
    assert listed[name].owned_by == "personal" and listed[name].object == "model"
    assert c.models.retrieve(name).id == name
    assert c.models.retrieve(ckpt).id == ckpt
    assert c.models.retrieve("gpt-4o-mini").owned_by == "tunery"
    with pytest.raises(openai.PermissionDeniedError):
        c.models.delete("gpt-4o-mini")
    with pytest.raises(openai.NotFoundError):
        c.models.delete("ft:smollm2-135m-instruct:personal:bot:Nope")
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")
    d = c.models.delete(name)
    assert d.deleted and d.id == name
    assert set(unloaded) == {name, ckpt}
    assert name not in {m.id for m in c.models.list()}
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve(name)
    from tunery.errors import ModelNotFound
    with pytest.raises(ModelNotFound):
        find_servable_model(srv.store, org, ckpt)


def test_local_directory_model_names_work_in_paths(client, tiny_model_dir, tmp_path):
    assert client.models.retrieve(str(tiny_model_dir)).id == str(tiny_model_dir)  # no keys, loopback
    d = tmp_path / "my-model"  # not a model directory: the same 404 as an unknown name
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(str(d))


def test_keys_auth_and_org_isolation(server):
    store = server.store
    anon = server.client()
    f_personal = upload(anon, b"x", purpose="user_data")
    _, key_a = create_api_key(store, "alpha")
    _, key_b = create_api_key(store, "beta")
    with pytest.raises(openai.AuthenticationError):
        anon.files.list()
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="sk-tunery-wrong").models.list()
    a, b = server.client(api_key=key_a), server.client(api_key=key_b)
    fa = upload(a)
    ja = a.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=fa.id, suffix="x")
    assert [f.id for f in a.files.list()] == [fa.id]
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    for call in (lambda: b.files.retrieve(fa.id), lambda: b.files.content(fa.id), lambda: b.files.delete(fa.id),
                 lambda: b.fine_tuning.jobs.retrieve(ja.id), lambda: b.fine_tuning.jobs.cancel(ja.id),
                 lambda: b.fine_tuning.jobs.list_events(ja.id), lambda: a.files.retrieve(f_personal.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError):  # another org's file cannot be trained on either
        b.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=fa.id)
    jb = b.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(b).id)
    assert ja.organization_id != jb.organization_id
    assert [j.id for j in a.fine_tuning.jobs.list()] == [ja.id]


def test_concurrent_uploads_and_listings_lose_nothing(client):
    n = 24

    def up(i):
        return upload(client, chat_jsonl(12, f"c{i}"), name=f"{i}.jsonl").id

    def ls(_):
        return len(client.files.list(limit=5).data)

    with ThreadPoolExecutor(12) as pool:
        ups = [pool.submit(up, i) for i in range(n)]
        lss = [pool.submit(ls, i) for i in range(n)]
        ids = [u.result() for u in ups]
        [x.result() for x in lss]
    assert len(set(ids)) == n
    listed = [f.id for f in client.files.list(limit=7)]
    assert sorted(listed) == sorted(ids)
    assert all(client.files.retrieve(i).status == "processed" for i in ids[:3])


def test_openapi_docs_served(server):
    import httpx

    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/files", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
            "/v1/models"} <= set(paths)


def test_api_on_postgresql(make_server, pg_url):
    """The same server on PostgreSQL: files, jobs, events and concurrent uploads."""
    srv = make_server(database_url=pg_url)
    c = srv.client()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: upload(c, chat_jsonl(12, f"pg{i}"), name=f"{i}.jsonl").id, range(12)))
    assert sorted(f.id for f in c.files.list(limit=5)) == sorted(ids)
    job = c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=ids[0], metadata={"db": "pg"})
    assert job.status == "queued"
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"db": "pg"})] == [job.id]
    assert len(list(c.fine_tuning.jobs.list_events(job.id, limit=1))) == 3
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_validation_file_must_not_overlap_training(client):
    train = upload(client, chat_jsonl(12, "t"))
    same = upload(client, chat_jsonl(12, "t"), name="valid.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id, validation_file=same.id)
    assert e.value.body["param"] == "validation_file" and "training file" in e.value.body["message"]


def test_worker_transitions_are_visible_through_the_sdk(client, server, tmp_path):
    """The worker's own queue functions (store/queue.py) move a job; the SDK sees every step, and the
    API's pause/cancel win over a worker that still thinks it holds the job."""
    from tunery.store import queue

    f = upload(client)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, suffix="e2e",
                                         hyperparameters={"n_epochs": 2})
    claimed = queue.claim_next(server.store, "w1", 60)
    assert claimed.id == job.id and client.fine_tuning.jobs.retrieve(job.id).status == "running"
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert not queue.update_running(server.store, job.id, "w1", trained_tokens=5)  # the pause wins
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    queue.release_stopped(server.store, job.id, "w1")
    claimed = queue.claim_next(server.store, "w2", 60)
    assert claimed is not None and claimed.id == job.id
    name = f"ft:smollm2-135m-instruct:{claimed.org_name}:e2e:{job.id[-8:]}"
    assert queue.add_checkpoint(server.store, job.id, "w2", step=3, model_name=name + ":ckpt-step-3",
                                metrics={"step": 3, "train_loss": 0.7}, path=str(tmp_path / "ck3"))
    assert queue.finish_succeeded(
        server.store, claimed, "w2", fine_tuned_model=name, model_path=str(tmp_path / "final"), trained_tokens=321,
        resolved_hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0},
        result_csv_text="step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n3,0.7,0.5,,\n")
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == name and done.trained_tokens == 321
    assert done.hyperparameters.batch_size == 4 and done.hyperparameters.learning_rate_multiplier == 2.0
    assert done.finished_at and len(done.result_files) == 1
    results = client.files.retrieve(done.result_files[0])
    assert results.purpose == "fine-tune-results"
    assert client.files.content(results.id).text.startswith("step,train_loss,train_accuracy,valid_loss")
    assert [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [
        name + ":ckpt-step-3"]
    assert name in {m.id for m in client.models.list()}
    org = done.organization_id
    assert find_servable_model(server.store, org, name).adapter_dir == tmp_path / "final"
    assert find_servable_model(server.store, org, name + ":ckpt-step-3").adapter_dir == tmp_path / "ck3"
    with pytest.raises(openai.BadRequestError, match="already finished"):
        client.fine_tuning.jobs.cancel(job.id)
