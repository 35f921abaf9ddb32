"""Bad input never causes a 500: malformed JSON, wrong types, huge fields, unknown ids and
path-traversal names on every endpoint all answer 4xx with an OpenAI error body."""

from __future__ import annotations

import json

import httpx
import pytest

from test_api_support import chat_jsonl

JOB = "/v1/fine_tuning/jobs"

pytest_plugins = ["test_api_support"]  # the server, store and PostgreSQL fixtures


def assert_client_error(r: httpx.Response) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err
    return err


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def training_file(http) -> str:
    r = http.post("/v1/files", files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


BAD_JSON_BODIES = [b"{", b"", b"null", b"[]", b'"text"', b"123", b"{\"model\": }", b"\xff\xfe\x00",
                   b"[" * 100000 + b"]" * 100000, b'{"model": "gpt-4o-mini", "training_file": NaN}']


@pytest.mark.parametrize("body", BAD_JSON_BODIES, ids=range(len(BAD_JSON_BODIES)))
def test_malformed_json_bodies(http, body):
    assert_client_error(http.post(JOB, content=body, headers={"content-type": "application/json"}))


def test_wrong_types_and_huge_fields(http, training_file):
    base = {"model": "gpt-4o-mini", "training_file": training_file}
    cases = [
        {"model": 1}, {"model": None}, {"model": ["a"]}, {"model": ""}, {"model": "x" * 5000},
        {"model": "/" + "a/" * 3000}, {"model": "a\x00b"}, {"model": "../../../../etc"},
        {"training_file": 5}, {"training_file": None}, {"training_file": "../../etc/passwd"},
        {"training_file": "x" * 100000}, {"validation_file": {"a": 1}}, {"validation_file": "file-nope"},
        {"suffix": 7}, {"suffix": "s" * 100000}, {"suffix": "../../x"},
        {"seed": "seven"}, {"seed": 1e300}, {"seed": 2**80}, {"seed": True}, {"seed": 1.5},
        {"hyperparameters": "fast"}, {"hyperparameters": []}, {"hyperparameters": {"n_epochs": [1]}},
        {"hyperparameters": {"n_epochs": True}}, {"hyperparameters": {"n_epochs": 2.5}},
        {"hyperparameters": {"n_epochs": 1e308}}, {"hyperparameters": {"learning_rate_multiplier": "auto-ish"}},
        {"hyperparameters": {"batch_size": None, "what": 1}},
        {"method": "dpo"}, {"method": {}}, {"method": {"type": "magic"}}, {"method": {"type": "supervised",
                                                                                       "dpo": {}}},
        {"method": {"type": "supervised", "supervised": "x"}},
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}},
        {"metadata": []}, {"metadata": {"a": 1}}, {"metadata": {"k" * 100: "v"}}, {"metadata": "x"},
        {"integrations": "wandb"}, {"integrations": [{"type": "slack"}]}, {"integrations": [{"type": "wandb"}]},
        {"unknown_field": 1},
    ]
    for case in cases:
        err = assert_client_error(http.post(JOB, json={**base, **case}))
        assert err["param"], (case, err)
    assert_client_error(http.post(JOB, json={"training_file": training_file}))
    assert_client_error(http.post(JOB, json={"model": "gpt-4o-mini"}))
    assert_client_error(http.post(JOB, content=json.dumps(base), headers={"content-type": "text/plain"}))
    huge = json.dumps({**base, "metadata": {"k": "v" * 5_000_000}})
    assert_client_error(http.post(JOB, content=huge, headers={"content-type": "application/json"}))


UNKNOWN_IDS = ["ftjob-nope", "file-nope", "..", "..%2F..%2Fetc%2Fpasswd", "%00", "x" * 300, "%E2%80%AE",
               "ft:a:b:c:d", "a%20b"]


@pytest.mark.parametrize("ident", UNKNOWN_IDS)
def test_unknown_and_traversal_ids_on_every_endpoint(http, ident):
    calls = [
        ("GET", f"/v1/files/{ident}"), ("DELETE", f"/v1/files/{ident}"), ("GET", f"/v1/files/{ident}/content"),
        ("GET", f"{JOB}/{ident}"), ("POST", f"{JOB}/{ident}/cancel"), ("POST", f"{JOB}/{ident}/pause"),
        ("POST", f"{JOB}/{ident}/resume"), ("GET", f"{JOB}/{ident}/events"), ("GET", f"{JOB}/{ident}/checkpoints"),
        ("GET", f"/v1/models/{ident}"), ("DELETE", f"/v1/models/{ident}"),
        ("GET", f"/v1/files?after={ident}"), ("GET", f"{JOB}?after={ident}"),
    ]
    for method, url in calls:
        r = http.request(method, url)
        if method == "GET" and url.startswith("/v1/models/") and r.status_code == 200:
            continue  # a name that happens to resolve (e.g. a directory) is a fine answer
        assert_client_error(r)


def test_bad_query_parameters(http, training_file):
    job = http.post(JOB, json={"model": "gpt-4o-mini", "training_file": training_file}).json()["id"]
    for url in ["/v1/files?limit=0", "/v1/files?limit=-5", "/v1/files?limit=abc", "/v1/files?limit=" + "9" * 40,
                "/v1/files?order=sideways", "/v1/files?purpose=" + "p" * 1000, f"{JOB}?limit=0",
                f"{JOB}?limit=1e9", f"{JOB}?metadata=yes", f"{JOB}?metadata[]=x", f"{JOB}/{job}/events?limit=-1",
                f"{JOB}/{job}/events?after=ftevent-nope", f"{JOB}/{job}/checkpoints?limit=x",
                f"{JOB}/{job}/checkpoints?after=nope"]:
        assert_client_error(http.get(url))


def test_bad_uploads(http, server):
    f = {"file": ("a.jsonl", chat_jsonl())}
    cases = [
        dict(files=f),  # no purpose
        dict(data={"purpose": "fine-tune"}),  # no file
        dict(files=f, data={"purpose": "fine-tune-results"}),
        dict(files=f, data={"purpose": "x" * 100000}),
        dict(files=[("file", ("a", b"1")), ("file", ("b", b"2"))], data={"purpose": "user_data"}),
        dict(content=b"not multipart", headers={"content-type": "multipart/form-data"}),
        dict(content=b"--zz\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=zz"}),
        dict(content=b"", headers={"content-type": "multipart/form-data; boundary=zz"}),
        dict(json={"file": "abc", "purpose": "fine-tune"}),
        dict(content=b"x" * 100, headers={"content-type": "application/octet-stream"}),
    ]
    for kw in cases:
        assert_client_error(http.post("/v1/files", **kw))
    assert http.get("/v1/files").json()["data"] == []
    assert [p.name for p in server.settings.files_dir.iterdir()] == []
    for name in ["../../../etc/passwd", "..\\..\\win.ini", "/abs/path.jsonl", "a\x00b.jsonl", "..", "",
                 "\u202egnp.exe", "n" * 1000]:
        r = http.post("/v1/files", files={"file": (name, b"z")}, data={"purpose": "user_data"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert "/" not in body["filename"] and "\\" not in body["filename"] and "\x00" not in body["filename"]
        assert (server.settings.files_dir / body["id"]).read_bytes() == b"z"
    assert_client_error(http.post("/v1/files", files={"file": ("n" * 5000, b"z")}, data={"purpose": "user_data"}))
    assert sorted(p.name for p in server.settings.files_dir.iterdir()) == sorted(
        f["id"] for f in http.get("/v1/files").json()["data"])


def test_bad_auth_headers_when_keys_exist(http, server):
    from tunery.store import create_api_key

    create_api_key(server.store, "acme")
    for headers in [{}, {"authorization": "Bearer"}, {"authorization": "Basic abc"},
                    {"authorization": "Bearer " + "k" * 10000}, {"authorization": "Bearer \u00e9t\u00e9".encode()}]:
        for url in ["/v1/files", "/v1/models", JOB]:
            r = http.get(url, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert_client_error(r)


def test_unknown_routes_and_methods(http):
    assert_client_error(http.get("/v1/nothing"))
    assert_client_error(http.put("/v1/files"))
    assert_client_error(http.patch(JOB))
