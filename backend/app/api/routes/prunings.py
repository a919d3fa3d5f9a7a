from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from ...core.errors import error_responses
from ...schemas import GgufType, Job, PruningRequest
from ...services import prunings
from ...services.lookup import job_or_404
from ..deps import EnqueueDep, SettingsDep, StoreDep
from ..responses import EVENTS, PRUNING_DOWNLOADS, PRUNING_GGUF
from .analyses import cancel, events

router = APIRouter(prefix="/prunings", tags=["prunings"])


@router.get("", response_model=list[Job])
def list_prunings(store: StoreDep) -> list[dict]:
    return store.list_jobs("pruning")


@router.post("", response_model=Job, status_code=202, responses=error_responses(400, 404, 409, 410, 422))
def create_pruning(req: PruningRequest, settings: SettingsDep, store: StoreDep, enqueue: EnqueueDep) -> dict:
    return prunings.create(req, settings, store, enqueue)


@router.get("/{job_id}", response_model=Job, responses=error_responses(404))
def get_pruning(job_id: str, store: StoreDep) -> dict:
    return job_or_404(store, job_id, "pruning")


@router.delete("/{job_id}", response_model=Job, responses=error_responses(404, 409))
def cancel_pruning(job_id: str, store: StoreDep) -> dict:
    return cancel(store, job_id, "pruning")


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=EVENTS)
def pruning_events(job_id: str, settings: SettingsDep, store: StoreDep) -> StreamingResponse:
    return events(store, settings, job_id, "pruning")


@router.get("/{job_id}/download/gguf", response_class=FileResponse, responses=PRUNING_GGUF)
def download_gguf(job_id: str, settings: SettingsDep, store: StoreDep,
                  out_type: GgufType = Query(default="f16", alias="type", description=(
                      "tensor type: f16 (matrices f16, norms and biases f32), q8_0 (matrices whose rows are a "
                      "multiple of 32 quantised, others f16) or f32"))) -> FileResponse:
    """The pruned model as a GGUF file for llama.cpp, Ollama, LM Studio or node-llama-cpp."""
    path = prunings.gguf_path(settings, store, job_id, out_type)
    return FileResponse(path, media_type="application/octet-stream", filename=f"fnprune-{job_id}-{path.name}")


@router.get("/{job_id}/download/{artifact}", response_model=None, response_class=StreamingResponse,
            responses=PRUNING_DOWNLOADS)
def download(job_id: str, artifact: str, settings: SettingsDep, store: StoreDep) -> FileResponse | StreamingResponse:
    path = prunings.artifact_path(settings, store, job_id, artifact)
    if artifact == "model":
        return StreamingResponse(prunings.zip_stream(path), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="fnprune-{job_id}-model.zip"'})
    media = "text/html" if artifact == "report" else "application/json"
    return FileResponse(path, media_type=media, filename=f"fnprune-{job_id}-{path.name}")
