from fastapi import APIRouter

from ...schemas import Options
from ...services import options

router = APIRouter(tags=["catalogue"])


@router.get("/options", response_model=Options)
def get_options() -> dict:
    """fnprune's names, help texts and defaults: methods (with their rules), repairs, allocations, ratio
    bases, modes, presets and every default a request field takes."""
    return options.vocabulary()
