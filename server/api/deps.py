"""Request parameters and dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedchurn.server.api.problems import READ_ONLY, ProblemError
from fedchurn.server.audit import AuditStore
from fedchurn.server.bearer import presented_matches
from fedchurn.server.problem_details import CHALLENGE, UNAUTHORIZED

bearer = HTTPBearer(auto_error=False, description="The write token given to `fedchurn serve --writable`.")
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="An ETag from an earlier response; 304 when it matches."),
]
RunIdQuery = Annotated[str | None, Query(max_length=64, description="A run id; default: the latest run.")]
RunIdPath = Annotated[str, Path(max_length=64, description="A run id (from /v1/runs).")]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=500)]


def get_store(request: Request) -> AuditStore:
    """The app's audit store (one per app, closed with it)."""
    store: AuditStore = request.app.state.store
    return store


Store = Annotated[AuditStore, Depends(get_store)]


def require_writer(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Writes need the configured token; a server without one is read-only (403). The request gate
    (http_gate.RequestGate) checks the same before a body is read; this is the route's own check."""
    token: str | None = request.app.state.write_token
    if token is None:
        raise ProblemError(
            403, *READ_ONLY, "this server was started without a write token; writes are disabled"
        )
    if creds is None:
        raise ProblemError(
            401, *UNAUTHORIZED, "a bearer token is required", headers={"WWW-Authenticate": CHALLENGE}
        )
    if not presented_matches(creds, request.app.state.write_token_digest):
        raise ProblemError(
            401,
            *UNAUTHORIZED,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
        )
