from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from ...core.errors import error_responses
from ...schemas import AblationJob, AblationRequest
from ...services import ablations
from ...services.lookup import job_or_404
from ..deps import EnqueueDep, SettingsDep, StoreDep
from ..responses import EVENTS
from .analyses import cancel, events

router = APIRouter(tags=["ablations"])


@router.post("/analyses/{analysis_id}/ablations", response_model=AblationJob, status_code=202,
             responses={200: {"model": AblationJob, "description": "the same ablation (analysis and parameters) "
                                                                   "was already asked for: that job, finished or not"},
                        **error_responses(404, 409, 410, 422)})
def create_ablation(analysis_id: str, req: AblationRequest, response: Response, settings: SettingsDep,
                    store: StoreDep, enqueue: EnqueueDep) -> dict:
    """Zero the chosen networks' key neurons in the analysis' dense model and, as the control, as many random
    neurons in the same layers; score held-out documents of its corpus (a job: follow it like the others)."""
    job, existing = ablations.create(analysis_id, req, settings, store, enqueue)
    if existing:
        response.status_code = 200
    return job


@router.get("/analyses/{analysis_id}/ablations", response_model=list[AblationJob], responses=error_responses(404))
def list_ablations(analysis_id: str, store: StoreDep) -> list[dict]:
    job_or_404(store, analysis_id, "analysis")
    return ablations.list_for(store, analysis_id)


@router.get("/ablations/{job_id}", response_model=AblationJob, responses=error_responses(404))
def get_ablation(job_id: str, store: StoreDep) -> dict:
    return job_or_404(store, job_id, ablations.KIND)


@router.delete("/ablations/{job_id}", response_model=AblationJob, responses=error_responses(404, 409))
def cancel_ablation(job_id: str, store: StoreDep) -> dict:
    return cancel(store, job_id, ablations.KIND)


@router.get("/ablations/{job_id}/events", response_class=StreamingResponse, responses=EVENTS)
def ablation_events(job_id: str, settings: SettingsDep, store: StoreDep) -> StreamingResponse:
    return events(store, settings, job_id, ablations.KIND)
