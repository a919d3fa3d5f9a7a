"""The /api router: every route module mounted here, all behind the token check."""

from fastapi import APIRouter, Depends

from ..core.errors import error_responses
from .deps import require_token
from .routes import ablations, analyses, corpora, health, links, models, options, prunings
from .routes import protect as protect_routes

api_router = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=error_responses(401, 500))
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(options.router)
api_router.include_router(corpora.router)
api_router.include_router(analyses.router)
api_router.include_router(prunings.router)
api_router.include_router(protect_routes.router)
api_router.include_router(links.router)
api_router.include_router(ablations.router)
