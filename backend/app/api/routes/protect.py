from fastapi import APIRouter

from ...schemas import ProtectProposal, ProtectSource
from ...services import protect
from ..deps import SettingsDep, StoreDep
from ..responses import FINISHED_CHOICE

router = APIRouter(prefix="/analyses", tags=["analyses"])


@router.post("/{job_id}/protect-proposal", response_model=ProtectProposal, responses=FINISHED_CHOICE)
def protect_proposal(job_id: str, req: ProtectSource, settings: SettingsDep, store: StoreDep) -> dict:
    """The `networks` networks most selective for a text against the analysis' calibration text, and the key
    neurons forcing them keeps: a preview of `protect.by = networks` on a few documents (a synchronous call;
    the model is loaded for it)."""
    return protect.propose(settings, store, job_id, req)
