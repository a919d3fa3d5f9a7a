"""Typed dependency aliases shared by the routes, and the bearer-token check."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Request

from ..core.config import Settings
from ..core.errors import ApiError
from ..services.jobs import JobStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_enqueue(request: Request):
    return request.app.state.enqueue


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
EnqueueDep = Annotated[object, Depends(get_enqueue)]


DOWNLOAD_LINK_TTL_S = 60


def _link_message(path: str, query: list[tuple[str, str]], expires: str) -> bytes:
    kept = sorted((k, v) for k, v in query if k not in ("expires", "signature"))
    return f"{path}?{urlencode(kept)}&expires={expires}".encode()


def sign_download(settings: Settings, path: str, query: list[tuple[str, str]]) -> tuple[str, int]:
    """A download URL for ``path`` (+ ``query``) that works without the Authorization header for
    :data:`DOWNLOAD_LINK_TTL_S` seconds (a browser link cannot send headers); ``(url, expires)``."""
    expires = int(time.time()) + DOWNLOAD_LINK_TTL_S
    if not settings.TOKEN:
        return (f"{path}?{urlencode(query)}" if query else path), expires
    signature = hmac.new(settings.TOKEN.encode(), _link_message(path, query, str(expires)), hashlib.sha256)
    return f"{path}?{urlencode([*query, ('expires', expires), ('signature', signature.hexdigest())])}", expires


def _valid_download_link(request: Request, settings: Settings) -> bool:
    expires, given = request.query_params.get("expires", ""), request.query_params.get("signature", "")
    if request.method not in ("GET", "HEAD") or "/download/" not in request.url.path or not expires.isdigit():
        return False
    if not 0 <= int(expires) - time.time() <= DOWNLOAD_LINK_TTL_S + 5:
        return False
    expected = hmac.new(settings.TOKEN.encode(),
                        _link_message(request.url.path, list(request.query_params.multi_items()), expires),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode(), expected.encode())


def require_token(request: Request, settings: SettingsDep) -> None:
    """``Authorization: Bearer <FNPRUNE_TOKEN>``, or a signed download link from ``POST /api/download-links``
    (short-lived, for one download URL). The token itself is never accepted in a URL (URLs end up in
    browser history and access logs)."""
    if not settings.TOKEN:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        if not secrets.compare_digest(given.strip().encode(), settings.TOKEN.encode()):
            raise ApiError(401, "wrong token", None)
        return
    if "signature" in request.query_params:
        if _valid_download_link(request, settings):
            return
        raise ApiError(401, "the download link is invalid or has expired; ask for a new one", None)
    raise ApiError(401, "authentication required: send Authorization: Bearer <FNPRUNE_TOKEN>", None)
