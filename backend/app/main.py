"""The FastAPI app: ``create_app(settings=None)`` mounts /api, the UI at / and plotly.js at /vendor."""

from __future__ import annotations

import functools
import gzip
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .api.main import api_router
from .core.config import Settings, get_settings
from .core.errors import ERROR_MEANINGS, install_error_handlers
from .schemas import ErrorBody
from .services.jobs import JobStore

log = logging.getLogger("fnprune.backend")

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"


def plotly_js() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def _gzipped(path: str) -> bytes:
    return gzip.compress(Path(path).read_bytes(), compresslevel=6)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document with its default 422 body (a list of pydantic errors) replaced by the error body
    this app sends for every failure, ``{"detail", "field"}``."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                response = operation.get("responses", {}).get("422")
                if response is not None:
                    response["description"] = ERROR_MEANINGS[422]
                    response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["ErrorBody"] = ErrorBody.model_json_schema()
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None, *, immediate: bool = False) -> FastAPI:
    """Build the app. ``immediate=True`` runs jobs inline when queued (tests without a worker)."""
    from . import worker

    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="fnprune", version="0.1.0",
                  description="Functional networks of a language model's MLP neurons, and pruning that keeps them.")
    app.state.settings = settings
    app.state.store = JobStore(settings.jobs_path, settings.HEARTBEAT_TIMEOUT_S)
    _, run_job = worker.get_queue(settings, immediate=immediate)
    app.state.enqueue = run_job

    install_error_handlers(app)
    app.openapi = functools.partial(_openapi, app)
    app.add_middleware(GZipMiddleware, minimum_size=2048, compresslevel=4)  # 9 costs ~1 s per MB of base64

    @app.middleware("http")
    async def limit_upload_size(request: Request, call_next):
        # Reject an oversized upload before its body is read (the route also counts streamed bytes).
        if request.method == "POST" and request.url.path.rstrip("/") == "/api/corpora":
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
                return JSONResponse({"detail": f"file: larger than the {settings.MAX_UPLOAD_MB:g} MB limit",
                                     "field": "file"}, status_code=413)
        return await call_next(request)

    app.include_router(api_router)

    plotly_path = plotly_js()
    if plotly_path is not None:
        @app.get("/vendor/plotly.min.js", include_in_schema=False)
        def plotly_bundle(request: Request) -> Response:
            headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
            if "gzip" in request.headers.get("accept-encoding", ""):
                # compressed once per process; the gzip middleware leaves encoded responses alone
                return Response(_gzipped(str(plotly_path)), media_type="text/javascript",
                                headers={**headers, "Content-Encoding": "gzip"})
            return FileResponse(plotly_path, media_type="text/javascript", headers=headers)

    if (FRONTEND_DIR / "index.html").is_file():
        # html=True serves index.html at / ; js/ and css/ by path.
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    else:
        @app.get("/", include_in_schema=False)
        def no_frontend() -> JSONResponse:
            return JSONResponse({"detail": "the web UI is not installed; the API is at /api and /docs"})

    return app
