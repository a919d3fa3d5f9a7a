from fastapi import APIRouter

from ...schemas import Health
from ...services import catalog
from ..deps import SettingsDep, StoreDep

router = APIRouter(tags=["catalogue"])


@router.get("/health", response_model=Health)
def health(settings: SettingsDep, store: StoreDep) -> Health:
    return Health(status="ok", version=catalog.version(), device=catalog.device_name(settings.DEVICE),
                  queue=settings.queue_kind, workers=store.live_workers())
