"""Request dependencies shared by the route modules: the store, the caller's organization, and the
OpenAI list/error shapes used in the OpenAPI schema."""

from __future__ import annotations

import threading
from typing import Any, Generic, Literal, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from tunery.errors import AuthenticationError, InvalidRequest
from tunery.store import Organization, Store, auth_required, ensure_org, open_store, org_for_key
from tunery.store.files import sweep_orphans
from tunery.store.jobs import recover_validating_jobs

_lock = threading.Lock()
_bearer = HTTPBearer(auto_error=False, description="An API key from `tunery keys create --org NAME`. "
                     "Not needed while no keys exist.")


def prepare_store(store: Store) -> Store:
    """Start-up work that makes the store consistent after a crash (idempotent)."""
    recover_validating_jobs(store)
    sweep_orphans(store)
    return store


def get_store(request: Request) -> Store:
    """The app's Store (opened, migrated and recovered on first use)."""
    app = request.app
    store = getattr(app.state, "store", None)
    if store is None:
        with _lock:
            store = getattr(app.state, "store", None)
            if store is None:
                store = prepare_store(open_store(app.state.settings))
                app.state.store = store
    return store


NO_KEYS_MESSAGE = ("This server listens on a non-loopback address and has no API keys, so it refuses every "
                   "request until one exists. Create one with `tunery keys create --org NAME` and send it as "
                   "'Authorization: Bearer <key>'.")


def _exposed(request: Request) -> bool:
    """True for a server reachable from other machines without --insecure (create_app(exposed=True))."""
    return bool(getattr(request.app.state, "exposed", False))


def current_org(request: Request, store: Store = Depends(get_store),
                credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Organization:
    """The caller's organization: from the Bearer key once any key exists, else the default ("personal").

    Evaluated on every request, so revoking the last key of an exposed server closes it (401 for
    everything) instead of opening it to anyone."""
    if not auth_required(store) and _exposed(request):
        raise AuthenticationError(NO_KEYS_MESSAGE, code="no_api_keys")
    if auth_required(store):
        if credentials is None or not credentials.credentials:
            raise AuthenticationError("You didn't provide an API key. Send 'Authorization: Bearer <key>' "
                                      "(create one with `tunery keys create --org NAME`).",
                                      code="missing_api_key")
        org = org_for_key(store, credentials.credentials)
        if org is None:
            shown = credentials.credentials[:12]
            raise AuthenticationError(f"Incorrect API key provided: {shown}…", code="invalid_api_key")
        return org
    app = request.app
    org = getattr(app.state, "default_org", None)
    if org is None:
        org = ensure_org(store, app.state.settings.default_org)
        app.state.default_org = org
    return org


def path_models_allowed(request: Request, store: Store) -> bool:
    """Whether callers may name any local directory as a model: only a single-user server (no keys) on
    loopback. With keys — or listening elsewhere with --insecure — only registry names, aliases and
    directories under TUNERY_MODEL_DIRS resolve (tunery.models.resolve(restricted=True))."""
    return not getattr(request.app.state, "public", False) and not auth_required(store)


def check_choices(n: int, engine, *, n_prompts: int = 1) -> None:
    """A request for more sequences than the engine's queue holds could only ever get 429: refuse it
    (400) so clients do not retry it forever. The limit is TUNERY_MAX_QUEUE, and at most 128 as OpenAI."""
    limit = min(MAX_CHOICES, engine.config.max_queue)
    if n * n_prompts > limit:
        what = "n" if n_prompts == 1 else "prompts × n"
        raise InvalidRequest(f"{what} is {n * n_prompts}; this server generates at most {limit} sequences per "
                             "request (TUNERY_MAX_QUEUE).", param="n" if n_prompts == 1 else "prompt",
                             code="invalid_value")


MAX_CHOICES = 128


# --- shapes for the OpenAPI schema -------------------------------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


T = TypeVar("T")


class CursorPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the error names the bad parameter)"},
    401: {"model": ErrorResponse, "description": "Missing or incorrect API key"},
    404: {"model": ErrorResponse, "description": "No such object in your organization"},
}


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def add_method_not_allowed(router, path: str, allowed: list[str]) -> None:
    """Answer other methods on `path` with 405 and an Allow header naming every method the path has
    (Starlette's own 405 names only the first route that matched the path)."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    allow = ", ".join(allowed)

    async def method_not_allowed():
        raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": allow})

    others = [m for m in _METHODS if m not in allowed and not (m == "HEAD" and "GET" in allowed)]
    router.add_api_route(path, method_not_allowed, methods=others, include_in_schema=False)
