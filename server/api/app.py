"""`create_app`: the transparency API's FastAPI app, its routers, error handlers and request gate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from fedchurn import __version__
from fedchurn.server.api.constants import MAX_WRITE_BODY_BYTES, PREFIX
from fedchurn.server.api.deps import reject_unknown_query
from fedchurn.server.api.problems import fix_problem_media_types, gate_problem, install_problem_handlers
from fedchurn.server.api.routers import audit, catalogue, meta, reviewer, writes
from fedchurn.server.api.views import static_bodies
from fedchurn.server.audit import AuditStore
from fedchurn.server.bearer import token_digest
from fedchurn.server.http_gate import RequestGate
from fedchurn.server.problem_details import CHALLENGE

DESCRIPTION = """
Read-only transparency API of **fedchurn** for privacy reviewers and data-protection officers.
Everything is derived from the data-category catalogue and the audit log of federated training
runs; nothing is duplicated by hand. A human page for reviewers is at `/v1/reviewer`
(English and Simplified Chinese). Errors are `application/problem+json` (RFC 9457).
Writes (the aggregator's audit records) need `Authorization: Bearer <token>` and are refused with
403 when the server was started without a write token.
"""

TAGS = [
    {"name": "catalogue", "description": "What is collected, why, for how long, and what leaves the device."},
    {"name": "privacy", "description": "What a device uploads, what the servers learn, the DP budget."},
    {"name": "audit", "description": "The audit log of federated training runs and rounds."},
    {"name": "model", "description": "The model card and the retention-policy rules."},
    {"name": "reviewer", "description": "The human page."},
    {"name": "write", "description": "Authenticated writes used by the aggregator."},
    {"name": "meta", "description": "Index and health."},
]


def create_app(
    database_url: str,
    write_token: str | None,
    *,
    store: AuditStore | None = None,
    max_body_bytes: int = MAX_WRITE_BODY_BYTES,
) -> FastAPI:
    """The transparency app over the audit database at `database_url` (schema upgraded on creation).

    `write_token` None or empty: read-only, the POST routes answer 403. Token and body size
    (`max_body_bytes`) are checked before a body is read (http_gate.RequestGate).
    """
    audit_store = store or AuditStore(database_url)
    token = write_token or None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if store is None:  # the app opened it, the app closes it
            audit_store.close()

    app = FastAPI(
        title="fedchurn transparency API",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        dependencies=[Depends(reject_unknown_query)],  # every route: an unknown query parameter is a 422
    )
    app.state.store = audit_store
    app.state.write_token = token
    app.state.write_token_digest = token_digest(token) if token is not None else None
    app.state.writable = token is not None
    install_problem_handlers(app)
    static_bodies()  # serialise the static bodies now, not on the first request
    for module in (meta, catalogue, audit, reviewer, writes):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            app.openapi_schema = fix_problem_media_types(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(
        RequestGate,
        max_body_bytes=max_body_bytes,
        token=token,
        protected=lambda method, _path: method == "POST",  # every POST is a write
        problem=gate_problem,
        challenge=CHALLENGE,
    )
    return app
