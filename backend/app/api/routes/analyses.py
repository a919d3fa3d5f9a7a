from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from ...core.errors import ApiError, not_found
from ...schemas import (
    AnalysisRequest,
    ComponentDetail,
    Job,
    Labels,
    MapSet,
    NetworksTable,
    Overview,
    PreviewRequest,
    PreviewResult,
)
from ...services import analyses
from ...services.events import job_events
from ..deps import EnqueueDep, SettingsDep, StoreDep

router = APIRouter(prefix="/analyses", tags=["analyses"])
ThresholdQ = Query(default=None, gt=0, le=100, description="|z| threshold; default: the analysis' own")


@router.get("", response_model=list[Job])
def list_analyses(store: StoreDep) -> list[dict]:
    return store.list_jobs("analysis")


@router.post("", response_model=Job, status_code=202)
def create_analysis(req: AnalysisRequest, settings: SettingsDep, store: StoreDep, enqueue: EnqueueDep) -> dict:
    return analyses.create(req, settings, store, enqueue)


@router.get("/{job_id}", response_model=Job)
def get_analysis(job_id: str, store: StoreDep) -> dict:
    job = store.get(job_id, "analysis")
    if job is None:
        raise not_found("analysis", job_id)
    return job


@router.delete("/{job_id}", response_model=Job)
def cancel_analysis(job_id: str, store: StoreDep) -> dict:
    return cancel(store, job_id, "analysis")


def cancel(store, job_id: str, kind: str) -> dict:
    job = store.get(job_id, kind)
    if job is None:
        raise not_found(kind, job_id)
    if not store.cancel(job_id):
        job = store.get(job_id, kind)
        raise ApiError(409, f"{kind} {job_id} already {job['status']}; only queued or running jobs can be cancelled")
    return store.get(job_id, kind)


@router.get("/{job_id}/events")
def analysis_events(job_id: str, settings: SettingsDep, store: StoreDep) -> StreamingResponse:
    return events(store, settings, job_id, "analysis")


def events(store, settings, job_id: str, kind: str) -> StreamingResponse:
    if store.get(job_id, kind) is None:
        raise not_found(kind, job_id)
    return StreamingResponse(job_events(store, job_id, kind, settings.SSE_POLL_S), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/networks", response_model=NetworksTable)
def networks(job_id: str, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ) -> dict:
    return analyses.networks_table(settings, store, job_id, threshold)


@router.get("/{job_id}/networks/{k}", response_model=ComponentDetail)
def network(job_id: str, k: int, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ,
            points: int = Query(default=analyses.TIME_COURSE_POINTS, ge=10, le=200_000,
                                description="time-course points (subsampled evenly)")) -> dict:
    return analyses.component_map(settings, store, job_id, k, threshold, points)


@router.get("/{job_id}/maps", response_model=MapSet)
def map_set(job_id: str, settings: SettingsDep, store: StoreDep,
            threshold: float | None = Query(default=None, ge=2, le=100,
                                            description="|z| threshold (at least 2, to keep the payload small)")) -> dict:
    """All maps at once, sparse (|z| > threshold only), for the gallery."""
    return analyses.map_set(settings, store, job_id, threshold)


@router.get("/{job_id}/overview", response_model=Overview)
def overview(job_id: str, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ) -> dict:
    return analyses.overview(settings, store, job_id, threshold)


@router.post("/{job_id}/preview", response_model=PreviewResult)
def preview(job_id: str, req: PreviewRequest, settings: SettingsDep, store: StoreDep) -> dict:
    return analyses.preview(settings, store, job_id, req)


@router.get("/{job_id}/labels", response_model=Labels)
def get_labels(job_id: str, settings: SettingsDep, store: StoreDep) -> dict:
    analyses.finished_job(store, job_id)
    return {"labels": analyses.get_labels(settings, job_id)}


@router.put("/{job_id}/labels", response_model=Labels)
def put_labels(job_id: str, body: Labels, settings: SettingsDep, store: StoreDep) -> dict:
    return {"labels": analyses.put_labels(settings, store, job_id, body.labels)}


@router.get("/{job_id}/download/{artifact}")
def download(job_id: str, artifact: str, settings: SettingsDep, store: StoreDep,
             threshold: float | None = ThresholdQ,
             target_ratio: float | None = Query(default=None, gt=0, lt=1)) -> FileResponse:
    path, media, filename = analyses.artifact(settings, store, job_id, artifact, threshold, target_ratio)
    return FileResponse(path, media_type=media, filename=filename)
