"""The ``responses=`` of the routes, so that /openapi.json names every status and body a route can send."""

from __future__ import annotations

from ..core.errors import error_responses

# a finished analysis' views: 404 no such analysis or component, 409 not succeeded, 410 files gone
FINISHED = error_responses(404, 409, 410, 422)
# ... and a choice of networks and target, which the library may refuse (400)
FINISHED_CHOICE = error_responses(400, 404, 409, 410, 422)

SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string", "description": "absent (a job update) or `error` (the job was deleted)"},
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "the job (a Job as JSON), or an error body"}}}
EVENTS = {200: {"description": "server-sent events: the job (as JSON) whenever it changes, until it is finished "
                               "(or FNPRUNE_SSE_MAX_S has passed)",
                "content": {"text/event-stream": {"schema": SSE_EVENT}}},
          **error_responses(404)}


def _files(description: str, *media_types: str) -> dict:
    return {"description": description,
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in media_types}}


ANALYSIS_DOWNLOADS = {200: _files("masks: JSON; maps: gzipped NIfTI; labels: FSL FIX text; report: HTML",
                                  "application/json", "application/gzip", "text/plain", "text/html"),
                      **error_responses(400, 404, 409, 410, 422)}
PRUNING_DOWNLOADS = {200: _files("model: a zip of the pruned model directory; report: HTML; masks: JSON",
                                 "application/zip", "text/html", "application/json"),
                     **error_responses(404, 409, 410)}
PRUNING_GGUF = {200: _files("the pruned model as one GGUF file for llama.cpp (architecture llama when every layer "
                           "has the same MLP width and head counts, deci with per-layer arrays otherwise), "
                           "exported on the first request and kept", "application/octet-stream"),
                **error_responses(400, 404, 409, 410, 422)}
