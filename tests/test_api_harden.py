"""Issue 11 regressions over real HTTP (httpx and the official openai SDK): auth that cannot lapse, model
names that cannot reach other organizations' files or probe the filesystem, bad model directories,
validator errors per line, and request checks that match OpenAI's."""

from __future__ import annotations

import io
import json
import os
import shutil

import httpx
import openai
import pytest

from test_api_support import chat_jsonl
from tunery.store import create_api_key, register_model, revoke_api_key
from tunery.store.tables import FineTuningJobCheckpoint

pytest_plugins = ["test_api_support"]
JOB = "/v1/fine_tuning/jobs"


def missing_body(name: str) -> dict:
    """The one 404 body of an unknown or forbidden model name: it echoes the name as given."""
    return {"error": {"message": f"The model '{name}' does not exist or you do not have access to it.",
                      "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


def upload(http, data: bytes, key: str | None = None, name: str = "t.jsonl") -> dict:
    r = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"},
                  headers={"authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


# --- auth ---------------------------------------------------------------------------------------

def test_revoking_the_last_key_of_an_exposed_server_closes_it(make_server):
    srv = make_server(app_kw={"exposed": True})
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        for path in ("/v1/models", "/v1/files", JOB):  # no key has ever existed
            r = http.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "no_api_keys", r.text
            assert "tunery keys create" in r.json()["error"]["message"]
        row, key = create_api_key(srv.store, "acme")
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200
        assert http.get("/v1/models").status_code == 401
        revoke_api_key(srv.store, row.id)  # while the server runs
        for headers in ({}, bearer(key), bearer("sk-anything")):
            for method, path in (("GET", "/v1/models"), ("GET", "/v1/files"), ("POST", JOB),
                                 ("POST", "/v1/chat/completions"), ("GET", "/v1/models/gpt-4o-mini")):
                r = http.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
        _, key2 = create_api_key(srv.store, "acme")
        assert http.get("/v1/files", headers=bearer(key2)).status_code == 200


def test_a_loopback_server_without_keys_serves_the_personal_org(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/files").status_code == 200


# --- model names --------------------------------------------------------------------------------

@pytest.fixture
def two_orgs(make_server, tiny_model_dir, tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    shutil.copytree(tiny_model_dir, allowed / "tiny")
    srv = make_server(model_dirs=(allowed.resolve(),))
    _, key_a = create_api_key(srv.store, "alpha")
    _, key_b = create_api_key(srv.store, "beta")
    # Org A's fine-tune, where the worker puts one: under TUNERY_HOME/jobs.
    final = srv.settings.jobs_dir / "ftjob-alpha0001" / "final"
    shutil.copytree(tiny_model_dir, final)
    from tunery.store import get_org

    register_model(srv.store, get_org(srv.store, "alpha"), model_id="ft:tiny:alpha::Aaaa1111",
                   base_model=str(tiny_model_dir), job_id=None, path=final)
    return srv, key_a, key_b, final, allowed / "tiny"


def test_with_keys_a_path_is_never_a_model_and_every_refusal_looks_the_same(two_orgs, tiny_model_dir, tmp_path):
    srv, key_a, key_b, final, allowed_tiny = two_orgs
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "secret_weights.bin").write_bytes(b"x")
    escape = allowed_tiny.parent / "escape"  # a symlink inside the allowed root to org A's fine-tune
    escape.symlink_to(final, target_is_directory=True)
    names = [str(final), str(final.parent), "/etc", "/root", "/proc/self", "/", str(pickles), "/no/such/dir",
             str(escape), str(srv.settings.home), "./" + str(allowed_tiny), "~/" + str(allowed_tiny),
             str(tiny_model_dir), str(allowed_tiny) + "/../../" + final.relative_to("/").as_posix(),
             "someorg/some-model", "no-such-model"]
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for key in (key_a, key_b):
            for name in names:
                if ".." not in name and not name.startswith("./"):  # httpx folds dot segments in URLs; a
                    # chat request's body keeps them
                    r = http.get(f"/v1/models/{name}", headers=bearer(key))
                    assert r.status_code == 404 and r.json() == missing_body(name), (name, r.text)
                r = http.post("/v1/chat/completions", headers=bearer(key),
                              json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 404 and r.json() == missing_body(name), (name, r.text)
        fid = upload(http, chat_jsonl(), key_b)["id"]
        bodies = set()
        for name in names:
            r = http.post(JOB, headers=bearer(key_b), json={"model": name, "training_file": fid})
            assert r.status_code == 400 and r.json()["error"]["param"] == "model", (name, r.text)
            rest = r.json()["error"]["message"].replace(name[:200], "NAME", 1)  # what is said beyond the name
            bodies.add(rest)
            assert "secret_weights" not in rest and str(os.getpid()) not in rest and "/" not in rest.replace(
                "GET /v1/models", ""), rest
        assert len(bodies) == 1, bodies  # nothing tells an existing directory from a missing one
        # Org A reaches its own fine-tune by name, and the configured model directory resolves for all.
        assert http.get("/v1/models/ft:tiny:alpha::Aaaa1111", headers=bearer(key_a)).status_code == 200
        assert http.get("/v1/models/ft:tiny:alpha::Aaaa1111", headers=bearer(key_b)).status_code == 404
        r = http.get(f"/v1/models/{allowed_tiny}", headers=bearer(key_b))
        assert r.status_code == 200 and r.json()["id"] == str(allowed_tiny)
        r = http.post(JOB, headers=bearer(key_b), json={"model": str(allowed_tiny), "training_file": fid})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == str(allowed_tiny)
        assert http.get("/v1/models/gpt-4o-mini", headers=bearer(key_b)).status_code == 200
        assert http.get("/v1/models/smollm2-135m-instruct", headers=bearer(key_b)).status_code == 200
        # An alias the operator set resolves for everyone, whatever directory it points at (its target is
        # trusted, the caller only names the alias).
        from tunery.models import set_alias

        set_alias("house-model", str(tiny_model_dir), srv.settings)
        r = http.get("/v1/models/house-model", headers=bearer(key_b))
        assert r.status_code == 200 and r.json()["id"] == "house-model", r.text
        r = http.post(JOB, headers=bearer(key_b), json={"model": "house-model", "training_file": fid})
        assert r.status_code == 200 and r.json()["model"] == "house-model", r.text


def test_a_bad_model_directory_is_a_400_naming_model_at_job_creation_and_first_use(client, server, tmp_path,
                                                                                  tiny_model_dir):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    (junk / "model.safetensors").write_bytes(b"\x00" * 64)
    wrong = tmp_path / "wrong"  # valid files whose tensors do not fit the config: fails inside transformers
    shutil.copytree(tiny_model_dir, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    f = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=str(junk), training_file=f.id)
    assert e.value.body["param"] == "model" and e.value.body["code"] == "invalid_model"
    assert client.fine_tuning.jobs.list().data == []  # nothing inserted
    for d in (junk, wrong):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=str(d), messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2)
        assert e.value.body["param"] == "model", e.value.body
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=str(d), prompt="hi", max_tokens=2)
        assert e.value.body["param"] == "model", e.value.body
    # As a guard's classifier, the junk directory is a 400 naming classifier (the field that is wrong).
    r = httpx.post(f"{server.url}/v1/tunery/guards/gpt-4o-mini", json={"classifier": str(junk)}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "classifier", r.text
    r = httpx.post(f"{server.url}/v1/tunery/guards/{junk}", json={"classifier": "gpt-4o-mini"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


# --- files and jobs -----------------------------------------------------------------------------

def test_uploads_with_bad_roles_and_surrogates_get_per_line_errors(client):
    good = chat_jsonl(12).decode().splitlines()
    for bad_line, kind in (('{"messages": [{"role": ["user"], "content": "x"}, {"role": "assistant", "content": "y"}]}',
                            "role"),
                           ('{"messages": [{"role": {"a": 1}, "content": "x"}, {"role": "assistant", "content": "y"}]}',
                            "role"),
                           ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}',
                            "surrogate")):
        data = ("\n".join(good[:5] + [bad_line] + good[5:]) + "\n").encode()
        f = client.files.create(file=("bad.jsonl", io.BytesIO(data)), purpose="fine-tune")
        assert f.status == "error", (bad_line, f.status_details)
        assert "line 6" in f.status_details and kind in f.status_details, f.status_details
        assert "TypeError" not in f.status_details and "Error:" not in f.status_details


def test_a_small_validation_file_is_accepted_and_a_small_training_file_is_not(client):
    train = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(24, "t"))), purpose="fine-tune")
    valid = client.files.create(file=("v.jsonl", io.BytesIO(chat_jsonl(6, "v"))), purpose="fine-tune")
    assert valid.status == "processed"
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id, validation_file=valid.id)
    assert job.status == "queued"
    warns = [e.message for e in client.fine_tuning.jobs.list_events(job.id) if e.level == "warn"]
    assert any("6 example" in w for w in warns), warns
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=valid.id)
    assert e.value.body["param"] == "training_file" and "at least 10" in e.value.body["message"]


@pytest.mark.parametrize("suffix", ["ab\n", "ab\r\n", "\nab", "a b"])
def test_suffix_with_a_newline_is_refused(client, suffix):
    f = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, suffix=suffix)
    assert e.value.body["param"] == "suffix"


def test_deleting_ones_own_checkpoint_is_400_not_deletable(server, client, tmp_path):
    f = client.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id, suffix="bot")
    name = "ft:smollm2-135m-instruct:personal:bot:Ck1"
    with server.store.session() as s:
        s.add(FineTuningJobCheckpoint(id="ftckpt-c1", job_id=job.id, created_at=5, step_number=2,
                                      fine_tuned_model_checkpoint=name + ":ckpt-step-2", metrics={},
                                      path=str(tmp_path)))
    register_model(server.store, job.organization_id, model_id=name, base_model="smollm2-135m-instruct",
                   job_id=job.id, path=tmp_path)
    with pytest.raises(openai.BadRequestError) as e:
        client.models.delete(name + ":ckpt-step-2")
    assert e.value.status_code == 400 and e.value.body["code"] == "model_not_deletable"
    assert client.models.retrieve(name + ":ckpt-step-2").id == name + ":ckpt-step-2"  # still there
    with pytest.raises(openai.NotFoundError):
        client.models.delete(name + ":ckpt-step-9")  # not one of ours: 404 as before


# --- request checks -----------------------------------------------------------------------------

@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("body", [b'{"model": "gpt-4o-mini", "training_file": }', b"{", b'{"a": 1,}'])
def test_malformed_json_has_no_character_offset_param(http, body):
    for path in (JOB, "/v1/chat/completions", "/v1/completions"):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] is None, r.text
        assert r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("field,value", [("max_tokens", "8"), ("stream", "yes"), ("n", "2"), ("temperature", "0"),
                                         ("seed", "1"), ("logprobs", "true"), ("max_completion_tokens", 8.5)])
def test_wrongly_typed_parameters_are_rejected_not_coerced(http, field, value):
    r = http.post("/v1/chat/completions", json={**CHAT, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_param_is_spelled_with_subscripts_everywhere(http):
    for messages in ([{"role": 5, "content": "x"}], [{"role": "robot", "content": "x"}],
                     [{"role": "user", "content": [{"type": "image_url"}]}]):
        r = http.post("/v1/chat/completions", json={**CHAT, "messages": messages})
        assert r.status_code == 400 and r.json()["error"]["param"] in ("messages[0].role", "messages[0].content"), r.text
    r = http.post(JOB, json={"model": "gpt-4o-mini", "training_file": "file-x", "integrations": [{"type": "slack"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "integrations[0].type", r.text


def test_store_params_use_subscripts_too(server):
    """The store's own checks (reached by callers other than the HTTP routes) spell list items the same way."""
    from tunery.errors import InvalidRequest
    from tunery.store import ensure_org
    from tunery.store.jobs import JobRequest, create_job

    org = ensure_org(server.store, "personal")
    with pytest.raises(InvalidRequest) as e:
        create_job(server.store, org, JobRequest(model="gpt-4o-mini", training_file="file-x",
                                                 integrations=[{"type": "slack"}]))
    assert e.value.param == "integrations[0]"


@pytest.mark.parametrize("n", [65, 100, 128])
def test_n_beyond_the_queue_is_a_400_not_an_endless_429(http, n):
    r = http.post("/v1/chat/completions", json={**CHAT, "n": n, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    r = http.post("/v1/completions", json={"model": "gpt-4o-mini", "prompt": "hi", "n": n, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    r = http.post("/v1/completions", json={"model": "gpt-4o-mini", "prompt": ["a", "b"], "n": 40, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
