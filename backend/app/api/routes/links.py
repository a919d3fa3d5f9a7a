from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter

from ...core.errors import ApiError, error_responses
from ...schemas import DownloadLink, DownloadLinkRequest
from ..deps import SettingsDep, sign_download

router = APIRouter(tags=["downloads"])


@router.post("/download-links", response_model=DownloadLink, responses=error_responses(422))
def download_link(req: DownloadLinkRequest, settings: SettingsDep) -> DownloadLink:
    """A short-lived link to one download (``/api/.../download/...``) that a browser can follow without the
    Authorization header; it names neither the token nor anything but that URL."""
    parts = urlsplit(req.path)
    if parts.scheme or parts.netloc or not parts.path.startswith("/api/") or "/download/" not in parts.path:
        raise ApiError(422, "path: give an /api/.../download/... path of this server", "path")
    url, expires = sign_download(settings, parts.path, parse_qsl(parts.query))
    return DownloadLink(url=url, expires=expires)
