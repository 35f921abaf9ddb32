"""Schemathesis against the app's own OpenAPI schema: generated requests (valid and invalid) to every
operation must never produce a server error, and responses must match the documented schemas.

The app runs with an API key, so the auth checks (missing/ignored auth → 401) are exercised too.
`positive_data_acceptance` is left out: schema-valid requests naming things that do not exist
(an unknown model, an unknown training file) are rightly answered 400, as OpenAI does."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tunery.api.app import create_app
from tunery.settings import Settings
from tunery.store import Store, create_api_key

# The schema is loaded at collection time, so the app gets its own state dir (not the per-test home).
_HOME = Path(tempfile.mkdtemp(prefix="tunery-schemathesis-"))
atexit.register(shutil.rmtree, _HOME, True)
_SETTINGS = Settings.from_env(home=_HOME, max_upload_bytes=64 * 1024)
app = create_app(_SETTINGS)
# This area's operations (chat/completions generate text with real models: their owner bounds those).
schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex=r"^/v1/(files|fine_tuning|models)")
_KEY: list[str] = []


def auth_headers() -> dict:
    if not _KEY:
        store = Store(_SETTINGS)
        _KEY.append(create_api_key(store, "schemathesis")[1])
        store.close()
    return {"Authorization": f"Bearer {_KEY[0]}"}


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_openapi_operations(case):
    case.call_and_validate(headers=auth_headers(), excluded_checks=[positive_data_acceptance])
