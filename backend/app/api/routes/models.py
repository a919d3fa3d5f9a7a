from fastapi import APIRouter

from ...schemas import ModelInfo
from ...services import catalog

router = APIRouter(tags=["catalogue"])


@router.get("/models", response_model=list[ModelInfo])
def list_models() -> list[dict]:
    return catalog.list_models()
