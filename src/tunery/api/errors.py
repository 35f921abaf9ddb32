"""The API's one error translation: every failure leaves as an OpenAI error body, never a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.errors import TuneryError

log = logging.getLogger("tunery.api")


def error_response(status: int, message: str, *, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


_LOC_SOURCES = ("body", "query", "path", "header", "form", "cookie")


def _loc_to_param(loc) -> str | None:
    """The user-facing field name: pydantic's location minus its source and union-member tags
    (`literal['auto']`, `int`, `function-after[...]`), which name no field a user wrote."""
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in _LOC_SOURCES or not str(p).isidentifier() or p in _TYPE_TAGS:
            continue
        else:
            parts.append(str(p))
    return ".".join(parts).replace(".[", "[") or None


_TYPE_TAGS = {"int", "float", "str", "bool", "list", "dict", "none", "literal", "union", "tagged-union"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneryError)
    async def _domain(_: Request, exc: TuneryError):
        return error_response(exc.status_code, exc.message, type_=exc.error_type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":  # its loc is a character offset, which names no field
            return error_response(
                400, "We could not parse the JSON body of your request. The API expects a JSON payload "
                f"({first.get('ctx', {}).get('error', 'invalid JSON')}).", param=None, code="invalid_json")
        param = _loc_to_param(first.get("loc", ()))
        msg = first.get("msg", "invalid request")
        if param:
            msg = f"Invalid value for '{param}': {msg}"
        if len(errs) > 1:
            msg += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
        return error_response(400, msg, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "Unknown URL; see /docs for the API"
        return error_response(exc.status_code, detail, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has details",
                              type_="server_error", code="internal_error")
