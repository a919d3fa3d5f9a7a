"""Typed dependency aliases shared by the routes, and the bearer-token check."""

from __future__ import annotations

import secrets
from typing import Annotated

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


def require_token(request: Request, settings: SettingsDep) -> None:
    """``Authorization: Bearer <FNPRUNE_TOKEN>``; ``?token=`` also works (EventSource and download links
    cannot set headers)."""
    if not settings.TOKEN:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        given = request.query_params.get("token", "")
    if not given:
        raise ApiError(401, "authentication required: send Authorization: Bearer <FNPRUNE_TOKEN>", None)
    if not secrets.compare_digest(given.strip().encode(), settings.TOKEN.encode()):
        raise ApiError(401, "wrong token", None)
