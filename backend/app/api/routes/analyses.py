from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from ...core.errors import ApiError, error_responses
from ...schemas import (
    AnalysisRequest,
    ComponentDetail,
    Job,
    Labels,
    Layout,
    MapSet,
    NetworksTable,
    Overview,
    PreviewRequest,
    PreviewResult,
)
from ...services import analyses
from ...services.events import job_events
from ...services.lookup import job_or_404
from ..deps import EnqueueDep, SettingsDep, StoreDep
from ..responses import ANALYSIS_DOWNLOADS, EVENTS, FINISHED, FINISHED_CHOICE

router = APIRouter(prefix="/analyses", tags=["analyses"])
ThresholdQ = Query(default=None, gt=0, le=100, description="|z| threshold; default: the analysis' own")


@router.get("", response_model=list[Job])
def list_analyses(store: StoreDep) -> list[dict]:
    return store.list_jobs("analysis")


@router.post("", response_model=Job, status_code=202, responses=error_responses(400, 404, 422))
def create_analysis(req: AnalysisRequest, settings: SettingsDep, store: StoreDep, enqueue: EnqueueDep) -> dict:
    return analyses.create(req, settings, store, enqueue)


@router.get("/{job_id}", response_model=Job, responses=error_responses(404))
def get_analysis(job_id: str, store: StoreDep) -> dict:
    return job_or_404(store, job_id, "analysis")


@router.delete("/{job_id}", response_model=Job, responses=error_responses(404, 409))
def cancel_analysis(job_id: str, store: StoreDep) -> dict:
    return cancel(store, job_id, "analysis")


def cancel(store, job_id: str, kind: str) -> dict:
    job_or_404(store, job_id, kind)
    if not store.cancel(job_id):
        job = store.get(job_id, kind)
        raise ApiError(409, f"{kind} {job_id} already {job['status']}; only queued or running jobs can be cancelled")
    return store.get(job_id, kind)


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=EVENTS)
def analysis_events(job_id: str, settings: SettingsDep, store: StoreDep) -> StreamingResponse:
    return events(store, settings, job_id, "analysis")


def events(store, settings, job_id: str, kind: str) -> StreamingResponse:
    job_or_404(store, job_id, kind)
    return StreamingResponse(job_events(store, job_id, kind, settings.SSE_POLL_S, settings.SSE_MAX_S),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/networks", response_model=NetworksTable, responses=FINISHED)
def networks(job_id: str, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ) -> dict:
    return analyses.networks_table(settings, store, job_id, threshold)


@router.get("/{job_id}/networks/{k}", response_model=ComponentDetail, responses=FINISHED)
def network(job_id: str, k: int, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ,
            points: int = Query(default=analyses.TIME_COURSE_POINTS, ge=10, le=200_000,
                                description="time-course points (subsampled evenly)")) -> dict:
    return analyses.component_map(settings, store, job_id, k, threshold, points)


@router.get("/{job_id}/maps", response_model=MapSet, responses=FINISHED)
def map_set(job_id: str, settings: SettingsDep, store: StoreDep,
            threshold: float | None = Query(default=None, ge=2, le=100,
                                            description="|z| threshold (at least 2, to keep the payload small)")) -> dict:
    """All maps at once, sparse (|z| > threshold only), for the gallery."""
    return analyses.map_set(settings, store, job_id, threshold)


@router.get("/{job_id}/overview", response_model=Overview, responses=FINISHED)
def overview(job_id: str, settings: SettingsDep, store: StoreDep, threshold: float | None = ThresholdQ) -> dict:
    return analyses.overview(settings, store, job_id, threshold)


@router.get("/{job_id}/layout", response_model=Layout, responses=FINISHED)
def layout(job_id: str, settings: SettingsDep, store: StoreDep,
           name: Literal["atlas", "index"] = Query(default="atlas", description="atlas (networks as regions) or index")
           ) -> dict:
    """Where each neuron is drawn on its layer's grid, and its network in the atlas."""
    return analyses.layout(settings, store, job_id, name)


@router.post("/{job_id}/preview", response_model=PreviewResult, responses=FINISHED_CHOICE)
def preview(job_id: str, req: PreviewRequest, settings: SettingsDep, store: StoreDep) -> dict:
    return analyses.preview(settings, store, job_id, req)


@router.get("/{job_id}/labels", response_model=Labels, responses=FINISHED)
def get_labels(job_id: str, settings: SettingsDep, store: StoreDep) -> dict:
    analyses.finished_job(store, job_id)
    return {"labels": analyses.get_labels(settings, job_id), "names": analyses.get_names(settings, job_id)}


@router.put("/{job_id}/labels", response_model=Labels, responses=FINISHED)
def put_labels(job_id: str, body: Labels, settings: SettingsDep, store: StoreDep) -> dict:
    labels, names = analyses.put_labels(settings, store, job_id, body.labels, body.names)
    return {"labels": labels, "names": names}


@router.get("/{job_id}/download/{artifact}", response_class=FileResponse, responses=ANALYSIS_DOWNLOADS)
def download(job_id: str, artifact: str, settings: SettingsDep, store: StoreDep,
             threshold: float | None = ThresholdQ,
             target_ratio: float | None = Query(default=None, gt=0, lt=1),
             layout: Literal["index", "atlas"] = Query(default="index", description="maps: NIfTI neuron layout")
             ) -> FileResponse:
    path, media, filename = analyses.artifact(settings, store, job_id, artifact, threshold, target_ratio, layout)
    return FileResponse(path, media_type=media, filename=filename)
