from fastapi import APIRouter, File, UploadFile

from ...core.errors import error_responses
from ...schemas import CorpusInfo, UploadedCorpus
from ...services import catalog
from ..deps import SettingsDep

router = APIRouter(tags=["catalogue"])


@router.get("/corpora", response_model=list[CorpusInfo])
def list_corpora(settings: SettingsDep) -> list[dict]:
    return catalog.list_corpora(settings)


@router.post("/corpora", response_model=UploadedCorpus, status_code=201, responses=error_responses(413, 422))
async def upload_corpus(settings: SettingsDep, file: UploadFile = File(...)) -> dict:
    """Upload a .txt (blank-line separated documents) or .jsonl (``{"text", "label"}`` per line) corpus."""
    return await catalog.save_upload(file, settings)
