"""Index and health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from fedchurn import __version__
from fedchurn.server.api.constants import PREFIX
from fedchurn.server.api.deps import Store
from fedchurn.server.api_models import ApiIndex, Health
from fedchurn.shared.catalogue import CATALOGUE_VERSION

router = APIRouter(tags=["meta"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/reviewer", status_code=307)


@router.get(PREFIX, response_model=ApiIndex, summary="Index of the API")
async def index(request: Request) -> ApiIndex:
    """Where to find each answer; the starting point for a reviewer's tooling."""
    return ApiIndex(
        name="fedchurn transparency API",
        version=__version__,
        catalogue_version=CATALOGUE_VERSION,
        writable=request.app.state.write_token is not None,
        links={
            "categories": f"{PREFIX}/categories",
            "features": f"{PREFIX}/features",
            "upload_spec": f"{PREFIX}/upload-spec",
            "privacy_budget": f"{PREFIX}/privacy-budget",
            "audit_rounds": f"{PREFIX}/audit/rounds",
            "runs": f"{PREFIX}/runs",
            "model_card": f"{PREFIX}/model-card",
            "retention_policy": f"{PREFIX}/retention-policy",
            "reviewer_page": f"{PREFIX}/reviewer",
            "openapi": "/openapi.json",
        },
    )


@router.get(f"{PREFIX}/health", response_model=Health, summary="Liveness")
async def health(request: Request, store: Store) -> Health:
    return Health(status="ok", writable=request.app.state.write_token is not None, database=store.dialect)
