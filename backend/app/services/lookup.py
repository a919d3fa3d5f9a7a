"""Finding a job for a request: one place for the 404 (no such job) and the 409 (not finished yet)."""

from __future__ import annotations

from typing import Any

from ..core.errors import ApiError, not_found
from .jobs import JobStore


def job_or_404(store: JobStore, job_id: str, kind: str) -> dict[str, Any]:
    """The job ``job_id`` of ``kind`` ("analysis" or "pruning"), or a 404 naming it."""
    job = store.get(job_id, kind)
    if job is None:
        raise not_found(kind, job_id)
    return job


def succeeded_or_409(store: JobStore, job_id: str, kind: str, what: str) -> dict[str, Any]:
    """The job if it has succeeded; else a 409 saying that ``what`` exists once it has."""
    job = job_or_404(store, job_id, kind)
    if job["status"] != "succeeded":
        raise ApiError(409, f"{kind} {job_id} is {job['status']}; {what} exist once it has succeeded")
    return job
