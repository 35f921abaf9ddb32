"""The web dashboard: static pages (plain HTML/CSS/JS in ./static, no build step) served at `/`, plus two
read-only routes under /tunery/v1 for what the OpenAI API has no call for. Every other piece of data the
pages show comes from the same /v1 API the SDK uses, with the same key, so permissions cannot differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel

from tunery.api.deps import ERROR_RESPONSES, current_org, get_store
from tunery.errors import NotFound
from tunery.store import Organization, Store
from tunery.store import files as store_files

STATIC = Path(__file__).parent / "static"
PREFIX = "/tunery/v1"

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

# Scripts and styles only from this origin, so an API string that slipped into markup could not run;
# data only from this origin (the /v1 API); no framing, no forms posting elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-cache"}

# The files are listed once: a request names one of them or gets 404, so no path is ever built from input.
_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES} if STATIC.is_dir() else {}


def _static(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        raise NotFound(f"No such dashboard file: {name[:100]}", param="name")
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)


pages = APIRouter(include_in_schema=False)


@pages.get("/")
def index() -> Response:
    return _static("index.html")


@pages.get("/dashboard/{name}")
def asset(name: str = PathParam(..., max_length=100)) -> Response:
    return _static(name)


api = APIRouter(prefix=PREFIX, tags=["tunery"], responses=ERROR_RESPONSES)


class ValidationReport(BaseModel):
    object: Literal["tunery.validation_report"] = "tunery.validation_report"
    file_id: str
    status: str
    status_details: str | None = None
    report: dict[str, Any] | None = None


class RegistryModel(BaseModel):
    name: str
    kind: str
    resolves_to: str | None = None
    context_length: int | None = None
    chat: bool | None = None
    available: bool | None = None
    description: str | None = None


class RegistryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegistryModel]


@api.get("/files/{file_id}/validation", response_model=ValidationReport,
         summary="A file's validation report (tunery)")
def file_validation(file_id: str = PathParam(..., max_length=256), store: Store = Depends(get_store),
                    org: Organization = Depends(current_org)) -> dict:
    """The full report the upload produced (every problem with its line numbers and fix); OpenAI's file
    object carries only a summary, and only for files that failed."""
    row = store_files.get_file(store, org, file_id)
    return {"object": "tunery.validation_report", "file_id": row.id, "status": row.status,
            "status_details": row.status_details, "report": row.validation}


@api.get("/models", response_model=RegistryList,
         summary="Base models and aliases with what they resolve to (tunery)")
def registry_models(store: Store = Depends(get_store), org: Organization = Depends(current_org)) -> dict:
    """The server's model registry (the same for every organization; fine-tuned models are in /v1/models)."""
    from tunery.models import list_models

    rows = [{k: row.get(k) for k in ("name", "kind", "resolves_to", "context_length", "chat", "available",
                                      "description")} for row in list_models(store.settings)]
    return {"object": "list", "data": rows}


def mount_dashboard(app: FastAPI) -> None:
    app.include_router(pages)
    app.include_router(api)
