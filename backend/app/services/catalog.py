"""Models and corpora: what exists, uploads, and turning request values into fnprune specs safely."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from fnprune.errors import CorpusError
from fnprune.io import atomic_path, atomic_write_json

from ..core.config import Settings
from ..core.errors import ApiError

UPLOAD_RE = re.compile(r"^upload:([0-9a-f]{12})$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
BARE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
UPLOAD_SUFFIXES = (".txt", ".jsonl")


# -- models ---------------------------------------------------------------------------------------
def load_model(spec: str, settings: Settings):
    """Worker side: ``(model, tokenizer)`` of a request's model spec as this server loads models (the spec
    checked by :func:`resolve_model`, on ``DEVICE``, remote code and local directories as configured)."""
    from fnprune.models.loading import load_model as _load

    return _load(resolve_model(spec, settings), device=settings.DEVICE, trust_remote_code=settings.TRUST_REMOTE_CODE,
                 allowed_dirs=settings.MODEL_DIRS)


def list_models() -> list[dict[str, Any]]:
    from fnprune.models.loading import list_models as _list

    return [{"name": m["name"], "description": m.get("description", ""), "available": bool(m.get("available", True))}
            for m in _list()]


def resolve_model(spec: str, settings: Settings) -> str:
    """Check a model spec at request time: a named model, a path inside MODEL_DIRS, or a hub id."""
    spec = spec.strip()
    if not spec or "\x00" in spec:
        raise ApiError(400, "model: give a model name or path", "model")
    named = {m["name"] for m in list_models()}
    if spec in named:
        return spec
    if BARE_NAME_RE.match(spec) and not spec.endswith(".gguf"):  # a name, not a path (schemas.MODEL_PATTERN)
        raise ApiError(404, f"model: no model named {spec!r} (named models: {', '.join(sorted(named))}; or a hub "
                            "id org/name, or an absolute path)", "model")
    looks_like_path = spec.startswith(("/", ".", "~")) or "\\" in spec or ".." in spec.split("/") \
        or spec.endswith(".gguf") or not HUB_ID_RE.match(spec)
    if not looks_like_path:
        return spec  # a hub id; loading it may fail later with a readable reason
    path = Path(os.path.expanduser(spec))
    if not path.is_absolute():
        raise ApiError(400, "model: local model paths must be absolute", "model")
    resolved = path.resolve()
    if not settings.MODEL_DIRS:
        raise ApiError(400, "model: local model paths are disabled (set FNPRUNE_MODEL_DIRS to allow a directory)",
                       "model")
    if not any(resolved == d or d in resolved.parents for d in settings.MODEL_DIRS):
        raise ApiError(400, "model: the path is outside the allowed model directories (FNPRUNE_MODEL_DIRS)", "model")
    if not resolved.exists():
        raise ApiError(404, f"model: no such file or directory: {spec}", "model")
    return str(resolved)


# -- corpora --------------------------------------------------------------------------------------
def _upload_meta_path(settings: Settings, upload_id: str) -> Path:
    return settings.uploads_dir / f"{upload_id}.json"


def _uploads(settings: Settings) -> list[dict[str, Any]]:
    out = []
    if settings.uploads_dir.is_dir():
        for meta_path in sorted(settings.uploads_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            out.append({"name": meta["name"], "description": f"uploaded file {meta.get('filename', '')}".strip(),
                        "n_documents": meta["n_documents"], "labels": meta["labels"], "available": True})
    return out


def list_corpora(settings: Settings) -> list[dict[str, Any]]:
    from fnprune.corpus import list_corpora as _list

    builtin = [{"name": c["name"], "description": c.get("description", ""), "n_documents": c.get("n_documents"),
                "labels": list(c.get("labels") or []), "available": bool(c.get("available", True))}
               for c in _list()]
    return builtin + _uploads(settings)


def corpus_info(name: str, settings: Settings) -> dict[str, Any]:
    for c in list_corpora(settings):
        if c["name"] == name:
            return c
    raise ApiError(404, f"corpus: no corpus named {name!r}", "corpus")


def resolve_corpus(name: str, settings: Settings) -> str:
    """The spec fnprune.corpus.load_corpus takes for a corpus name shown by the API."""
    m = UPLOAD_RE.match(name)
    if m:
        meta_path = _upload_meta_path(settings, m.group(1))
        if not meta_path.is_file():
            raise ApiError(404, f"corpus: no uploaded corpus {name!r}", "corpus")
        meta = json.loads(meta_path.read_text())
        return str(settings.uploads_dir / meta["file"])
    if "/" in name or "\\" in name or name.startswith("."):
        raise ApiError(400, "corpus: give a corpus name from GET /api/corpora, not a path", "corpus")
    info = corpus_info(name, settings)
    if not info["available"]:
        raise ApiError(422, f"corpus: {name!r} is not available on this server", "corpus")
    return name


def check_text_bytes(head: bytes) -> None:
    if b"\x00" in head:
        raise ApiError(422, "file: looks like a binary file; upload UTF-8 text (.txt) or JSON lines (.jsonl)", "file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end of the chunk is fine
            raise ApiError(422, "file: is not UTF-8 text", "file") from None


async def save_upload(upload, settings: Settings) -> dict[str, Any]:
    """Stream an UploadFile to the uploads dir with a size limit, then validate it with fnprune."""
    filename = os.path.basename(upload.filename or "")
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ApiError(422, "file: must be a .txt or .jsonl file", "file")
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex[:12]
    final = settings.uploads_dir / f"{upload_id}{suffix}"
    size = 0
    limit = settings.max_upload_bytes
    with atomic_path(final) as tmp:  # renamed to ``final`` only once the whole file is checked
        with open(tmp, "wb") as f:
            first = True
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"file: larger than the {settings.MAX_UPLOAD_MB:g} MB limit", "file")
                if first:
                    check_text_bytes(chunk[:65536])
                    first = False
                f.write(chunk)
        if size == 0:
            raise ApiError(422, "file: is empty", "file")
        from starlette.concurrency import run_in_threadpool

        from fnprune.corpus import load_corpus

        try:  # parsing a large file takes a while: off the event loop, so event streams keep flowing
            docs = await run_in_threadpool(load_corpus, str(tmp))
        except CorpusError as exc:
            raise ApiError(422, f"file: {exc}", "file") from None
        if not docs:
            raise ApiError(422, "file: holds no usable text", "file")
        labels = sorted({str(d.label) for d in docs if getattr(d, "label", None)})
    meta = {"name": f"upload:{upload_id}", "file": final.name, "filename": filename,
            "n_documents": len(docs), "labels": labels}
    atomic_write_json(_upload_meta_path(settings, upload_id), meta)
    return {"name": meta["name"], "n_documents": meta["n_documents"], "labels": labels}


def version() -> str:
    try:
        from importlib.metadata import version as _version

        return _version("fnprune")
    except Exception:
        return "0.1.0"


def device_name(device: str) -> str:
    from fnprune.models.loading import resolve_device

    return resolve_device(device).type
