"""Request parameters and dependencies shared by the routers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar, get_origin

from fastapi import Depends, Header, Path, Query, Request
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fedchurn.server.api.problems import READ_ONLY, ProblemError
from fedchurn.server.api_models import to_utc
from fedchurn.server.audit import AuditStore
from fedchurn.server.bearer import bearer_refusal, presented_matches
from fedchurn.server.problem_details import CHALLENGE, UNAUTHORIZED

bearer = HTTPBearer(auto_error=False, description="The write token given to `fedchurn serve --writable`.")
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="An ETag from an earlier response; 304 when it matches."),
]
RunIdQuery = Annotated[str | None, Query(max_length=64, description="A run id; default: the latest run.")]
RunIdPath = Annotated[str, Path(max_length=64, description="A run id (from /v1/runs).")]
R = TypeVar("R", int, datetime)
MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip (0 to 1,000,000,000).")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page (1 to 500).")]


_DECLARED: dict[int, tuple[APIRoute, frozenset[str], frozenset[str]]] = {}  # APIRoute is unhashable


def _query_parameters(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """(every query parameter the route declares, those that take a list), by the name a client sends."""
    found = _DECLARED.get(id(route))
    if found is None or found[0] is not route:
        params = get_flat_dependant(route.dependant).query_params
        lists = {p.alias for p in params if get_origin(p.field_info.annotation) in (list, set, tuple)}
        found = _DECLARED[id(route)] = (route, frozenset(p.alias for p in params), frozenset(lists))
    return found[1], found[2]


async def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not declare, or a single-valued one given twice, is a 422
    naming it: a misspelled filter would otherwise be ignored and the answer look like the one
    asked for (`?protection=ckks` listing every mode; `/v1/model-card?run_id=x` the latest card)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known, lists = _query_parameters(route)
    errors: list[dict[str, Any]] = []
    for name in dict.fromkeys(request.query_params.keys()):
        values = request.query_params.getlist(name)
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            msg = f"unknown query parameter {name!r}; this route takes: {takes}"
            errors.append({"loc": ("query", name), "msg": msg, "type": "extra_forbidden", "input": values})
        elif len(values) > 1 and name not in lists:
            msg = f"query parameter {name!r} is given {len(values)} times; it takes one value"
            errors.append({"loc": ("query", name), "msg": msg, "type": "repeated_parameter", "input": values})
    if errors:
        raise RequestValidationError(errors)


def reject_inverted_range(
    low_name: str, low: R | None, high_name: str, high: R | None, *, exclusive: bool = False
) -> None:
    """A 422 naming both parameters when the range from `low` to `high` holds nothing: `low`
    above `high`, or equal to it when `high` itself is excluded."""
    if low is None or high is None:
        return
    a, b = (
        (to_utc(low), to_utc(high))
        if isinstance(low, datetime) and isinstance(high, datetime)
        else (low, high)
    )
    if a < b or (a == b and not exclusive):
        return
    shown = [v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else str(v) for v in (a, b)]
    rel = "is not before" if exclusive else "is greater than"
    msg = f"{low_name} ({shown[0]}) {rel} {high_name} ({shown[1]}): the range holds nothing"
    raise RequestValidationError(
        [
            {"loc": ("query", low_name), "msg": msg, "type": "range_inverted", "input": shown[0]},
            {"loc": ("query", high_name), "msg": msg, "type": "range_inverted", "input": shown[1]},
        ]
    )


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
    if not presented_matches(creds, request.app.state.write_token_digest):
        detail, challenge = bearer_refusal(request.headers.get("authorization"), CHALLENGE)
        raise ProblemError(401, *UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})
