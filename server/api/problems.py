"""RFC 9457 problem details: the error body of every response, the handlers that produce it, and
the OpenAPI fix that declares it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from fedchurn.server.api.constants import DATABASE_UNAVAILABLE
from fedchurn.server.api_models import Problem
from fedchurn.server.audit import (
    AuditDatabaseError,
    AuditError,
    InvalidRecordError,
    RoundAlreadyRecordedError,
    RunFinishedError,
    UnknownRunError,
)
from fedchurn.server.problem_details import (
    PROBLEM_JSON,
    UNAUTHORIZED,
    problem_json,
    problem_type,
)

log = logging.getLogger(__name__)

# --- problem details -------------------------------------------------------------------------


class ProblemError(StarletteHTTPException):
    """An HTTP error with an RFC 9457 type and title."""

    def __init__(
        self, status: int, type_: str, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.type = type_
        self.title = title


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    return problem_json(
        _problem(request.url.path, status, detail, type_=type_, title=title, errors=errors), headers
    )


def _problem(
    path: str,
    status: int,
    detail: str | None,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Problem:
    return Problem.model_validate(
        {
            "type": type_,
            "title": title or Problem.status_title(status),
            "status": status,
            "detail": detail,
            "instance": path,
            "errors": errors,
        }
    )


READ_ONLY = (problem_type("read_only"), "Read-only server")


def gate_problem(status: int, detail: str, path: str) -> bytes:
    """The body of a refusal by the request gate (http_gate.RequestGate), as the routes' own."""
    type_, title = {401: UNAUTHORIZED, 403: READ_ONLY}.get(status, ("about:blank", None))
    body = _problem(path, status, detail, type_=type_, title=title)
    return json.dumps(body.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode()


_AUDIT_ERRORS: dict[type[AuditError], tuple[int, str, str]] = {
    UnknownRunError: (404, problem_type("unknown_run"), "Unknown run"),
    RoundAlreadyRecordedError: (409, problem_type("round_already_recorded"), "Round already recorded"),
    RunFinishedError: (409, problem_type("run_finished"), "Run already finished"),
    InvalidRecordError: (422, problem_type("invalid_record"), "Invalid audit record"),
    AuditDatabaseError: (503, problem_type("database"), "Audit database unavailable"),
}


def _routes(routes: Iterable[Any]) -> Iterator[Route]:
    """Every route, with those of included routers (FastAPI keeps an included router whole, as its
    `original_router`; the routers here carry their full paths)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router.routes)


def _allowed(request: Request) -> str:
    """Every method of every route on this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        if route.methods:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def install_problem_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 304:
            return Response(status_code=304, headers=exc.headers)
        if exc.status_code == 405:
            return problem_response(request, 405, "method not allowed", headers={"Allow": _allowed(request)})
        if isinstance(exc, ProblemError):
            return problem_response(
                request, exc.status_code, exc.detail, type_=exc.type, title=exc.title, headers=exc.headers
            )
        return problem_response(request, exc.status_code, str(exc.detail), headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())],
                "msg": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else None
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "invalid request"
        return problem_response(
            request,
            422,
            detail,
            type_=problem_type("validation"),
            title="Invalid request",
            errors=errors,
        )

    async def audit_error(request: Request, exc: Exception) -> Response:
        for cls, (status, type_, title) in _AUDIT_ERRORS.items():
            if isinstance(exc, cls):
                if status >= 500:  # the cause names tables, SQL or the database file: the log only
                    log.error("%s %s: %s", request.method, request.url.path, exc)
                    return problem_response(request, status, DATABASE_UNAVAILABLE, type_=type_, title=title)
                errors = None
                if isinstance(exc, InvalidRecordError) and exc.field is not None:
                    # A record the store refused for what the body says: located like a 422 of the edge.
                    errors = [{"loc": ["body", exc.field], "msg": str(exc), "type": "invalid_record"}]
                return problem_response(request, status, str(exc), type_=type_, title=title, errors=errors)
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, 500, "audit store error; the operator's log has the cause")

    async def server_error(request: Request, exc: Exception) -> Response:
        return problem_response(request, 500, "internal error; the server log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(AuditError, audit_error)
    app.add_exception_handler(Exception, server_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses (the media type is fixed to problem+json afterwards)."""
    return {s: {"model": Problem, "description": HTTPStatus(s).phrase} for s in statuses}


def fix_problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are problem+json whatever the route's media type; 304 has no body."""
    for path in schema.get("paths", {}).values():
        for op in path.values():
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                if status[:1] in "45" and content:
                    resp["content"] = {PROBLEM_JSON: next(iter(content.values()))}
                if status == "304":
                    resp.pop("content", None)
    comps = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's defaults, replaced by Problem
        if unused in comps and f"#/components/schemas/{unused}" not in json.dumps(schema):
            del comps[unused]
    return schema
