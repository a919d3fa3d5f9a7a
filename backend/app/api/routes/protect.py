from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from ...core.errors import error_responses
from ...schemas import ProposalJob, ProtectSource
from ...services import protect
from ...services.lookup import job_or_404
from ..deps import EnqueueDep, SettingsDep, StoreDep
from ..responses import EVENTS
from .analyses import cancel, events

router = APIRouter(tags=["proposals"])


@router.post("/analyses/{analysis_id}/protect-proposal", response_model=ProposalJob, status_code=202,
             responses={200: {"model": ProposalJob, "description": "the same proposal (analysis, text, networks and "
                                                                   "docs) was already asked for: that job, finished "
                                                                   "or not"},
                        **error_responses(404, 409, 410, 422)})
def create_proposal(analysis_id: str, req: ProtectSource, response: Response, settings: SettingsDep,
                    store: StoreDep, enqueue: EnqueueDep) -> dict:
    """The `networks` networks most selective for a text against the analysis' calibration text, and the key
    neurons forcing them keeps: a preview of `protect.by = networks` on a few documents (a job: the worker
    loads the model; follow it like the others, its `result` is a `ProtectProposal`)."""
    job, existing = protect.create_proposal(analysis_id, req, settings, store, enqueue)
    if existing:
        response.status_code = 200
    return job


@router.get("/proposals/{job_id}", response_model=ProposalJob, responses=error_responses(404))
def get_proposal(job_id: str, store: StoreDep) -> dict:
    return job_or_404(store, job_id, protect.PROPOSAL_KIND)


@router.delete("/proposals/{job_id}", response_model=ProposalJob, responses=error_responses(404, 409))
def cancel_proposal(job_id: str, store: StoreDep) -> dict:
    return cancel(store, job_id, protect.PROPOSAL_KIND)


@router.get("/proposals/{job_id}/events", response_class=StreamingResponse, responses=EVENTS)
def proposal_events(job_id: str, settings: SettingsDep, store: StoreDep) -> StreamingResponse:
    return events(store, settings, job_id, protect.PROPOSAL_KIND)
