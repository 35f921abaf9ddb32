"""The one error translation at the API edge: field names in `param`, never pydantic internals."""

from typing import Literal, Union

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tunery.api.errors import _loc_to_param, install_error_handlers
from tunery.errors import NotFound


class Hyper(BaseModel):
    n_epochs: Union[Literal["auto"], int] = "auto"


class Body(BaseModel):
    hyperparameters: Hyper = Hyper()
    messages: list[dict[str, str]] = []


def _client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    def x(body: Body) -> dict:
        return {}

    @app.get("/missing")
    def missing() -> dict:
        raise NotFound("No such thing: abc", param="thing_id")

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


def test_union_member_tags_do_not_reach_param():
    res = _client().post("/x", json={"hyperparameters": {"n_epochs": "many"}})
    assert res.status_code == 400
    err = res.json()["error"]
    assert err["param"] == "hyperparameters.n_epochs"
    assert "literal" not in err["message"].split(":")[0]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_value"


def test_list_indices_render_as_subscripts():
    assert _loc_to_param(("body", "messages", 2, "content")) == "messages[2].content"
    res = _client().post("/x", json={"messages": [{"role": "user", "content": 5}]})
    assert res.json()["error"]["param"] == "messages[0].content"


def test_domain_error_and_unknown_route_and_crash_all_have_error_bodies():
    c = _client()
    r = c.get("/missing")
    assert r.status_code == 404 and r.json()["error"]["param"] == "thing_id"
    r = c.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = c.get("/boom")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret internals" not in r.text
