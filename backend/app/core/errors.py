"""One error shape for every failure: ``{"detail": "<readable sentence>", "field": <name or null>}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fnprune.errors import ConfigError, CorpusError, FnpruneError, ModelLoadError, RunDirError

from ..schemas import PATTERN_HINTS, ErrorBody

log = logging.getLogger("fnprune.backend")

# What each error status means in this API (the OpenAPI document says it per route with these).
ERROR_MEANINGS = {
    400: "the request is well-formed but cannot be used (e.g. a model path outside FNPRUNE_MODEL_DIRS)",
    401: "authentication required (FNPRUNE_TOKEN is set)",
    404: "no such job, component, artifact, model or corpus",
    409: "the job is not in a state that allows this (e.g. not finished yet, already finished)",
    410: "the job's files are gone from the server",
    413: "the upload is larger than FNPRUNE_MAX_UPLOAD_MB",
    422: "a value is invalid; `field` names it",
    500: "internal error (details are in the server log)",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """``responses=`` for a route: each status with the one error body ``{"detail", "field"}``."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}


class ApiError(Exception):
    """Raised by services; becomes a JSON error response."""

    def __init__(self, status_code: int, detail: str, field: str | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field


def not_found(what: str, value: str, field: str | None = None) -> ApiError:
    return ApiError(404, f"no {what} with id {value!r}", field)


def _body(status: int, detail: str, field: str | None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def _loc_to_field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):  # where, not which field
        parts = parts[1:]
    return ".".join(parts) or None


def fnprune_status(exc: FnpruneError) -> int:
    if isinstance(exc, (ConfigError, CorpusError)):
        return 422
    if isinstance(exc, RunDirError):
        return 409
    if isinstance(exc, ModelLoadError):
        return 400
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return _body(exc.status_code, exc.detail, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc_to_field(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid value"))
        if first.get("type") == "json_invalid":
            msg, field = "the request body is not valid JSON", None
        elif first.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif first.get("type") == "missing":
            msg = "this field is required"
        elif first.get("type") == "string_pattern_mismatch":
            msg = PATTERN_HINTS.get(str(first.get("ctx", {}).get("pattern")), msg)
        detail = f"{field}: {msg}" if field else msg
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _body(422, detail, field)

    @app.exception_handler(FnpruneError)
    async def _fnprune(request: Request, exc: FnpruneError) -> JSONResponse:
        return _body(fnprune_status(exc), str(exc) or type(exc).__name__, getattr(exc, "field", None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        status, headers = exc.status_code, getattr(exc, "headers", None)
        if status == 404 and detail == "Not Found" and documented_methods(request):
            status = 405  # an API path without this method (the static UI's catch-all would say 404)
        if status == 404 and detail == "Not Found":
            detail = f"no such route: {request.method} {request.url.path}"
        elif status == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
            headers = {"Allow": ", ".join(allowed_methods(request))}
        elif status == 400:  # the framework could not parse the body (our own 400s are ApiErrors)
            status, detail = 422, f"the request body could not be parsed: {detail.rstrip('.')}"
        return _body(status, detail, None, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the traceback goes to the log; the client learns nothing about the server's insides
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _body(500, "internal error (details are in the server log)", None)


def documented_methods(request: Request) -> set[str]:
    """The methods /openapi.json lists for this request's path (empty when the path is not in it)."""
    import re

    path = request.url.path
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            return {m.upper() for m in operations}
    return set()


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents for this path (Starlette's 405 names only the first route's), plus
    HEAD where GET is served; paths outside the document (the static UI) allow GET and HEAD."""
    methods = documented_methods(request) or {"GET"}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
