"""Schemathesis against the app's own OpenAPI schema, over every endpoint, once with API keys and once
without: generated requests (valid and invalid) must never produce a server error, and responses must
match the documented schemas.

With keys, the auth checks (missing/ignored auth → 401) are exercised too. Chat and completions are
included: generated model names never name a loadable model (an unknown name is 404, a generated path is
refused before any load), so no weights are loaded. `positive_data_acceptance` is left out: schema-valid
requests naming things that do not exist (an unknown model, an unknown training file) are rightly
answered 400/404, as OpenAI does. Every check that remains — no 5xx, status codes, content types and
response bodies as documented — runs on both. Derandomized and bounded (max_examples) so `make test` stays quick."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import ignored_auth, missing_required_header, negative_data_rejection, positive_data_acceptance

from tunery.api.app import create_app
from tunery.settings import Settings
from tunery.store import Store, create_api_key


def _app(tag: str):
    # The schema is loaded at collection time, so each app gets its own state dir (not the per-test home).
    home = Path(tempfile.mkdtemp(prefix=f"tunery-schemathesis-{tag}-"))
    atexit.register(shutil.rmtree, home, True)
    s = Settings.from_env(home=home, max_upload_bytes=64 * 1024)
    return s, create_app(s)


_KEYED_SETTINGS, keyed_app = _app("keys")
_OPEN_SETTINGS, open_app = _app("nokeys")
keyed = schemathesis.openapi.from_asgi("/openapi.json", keyed_app)
open_ = schemathesis.openapi.from_asgi("/openapi.json", open_app)
_KEY: list[str] = []


def auth_headers() -> dict:
    if not _KEY:
        store = Store(_KEYED_SETTINGS)
        _KEY.append(create_api_key(store, "schemathesis")[1])
        store.close()
    return {"Authorization": f"Bearer {_KEY[0]}"}


@keyed.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_openapi_operations_with_keys(case):
    # The key is added to every case, so schemathesis's "negative: no Authorization" cases would carry it
    # anyway: negative_data_rejection is checked in the run without keys, and here every generated request
    # is also sent without the key, which must be a 401 (a 404/405 for a path or method that does not exist).
    case.call_and_validate(headers=auth_headers(), excluded_checks=[positive_data_acceptance,
                                                                    negative_data_rejection])
    anon = case.call(headers={"Authorization": ""})
    # An unparseable JSON body is refused (400 invalid_json) before the key is looked at: nothing is served.
    assert anon.status_code in (401, 404, 405) or anon.json()["error"]["code"] in ("invalid_json", "invalid_body"), \
        (anon.status_code, anon.text[:300])
    if anon.status_code == 401:
        assert anon.json()["error"]["type"] == "authentication_error"


@open_.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_openapi_operations_without_keys(case):
    # No keys: the documented Bearer scheme is optional until a key exists, so schemathesis's
    # "Authorization is required" expectations (and the negative cases that drop it) do not apply.
    case.call_and_validate(excluded_checks=[positive_data_acceptance, negative_data_rejection,
                                            missing_required_header, ignored_auth])
