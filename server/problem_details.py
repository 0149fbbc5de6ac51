"""RFC 9457 problem details: the one error format of fedchurn's two HTTP services.

The transparency API and the key holder are separate services, and the key holder imports
nothing of the API. Whoever reads a refusal from either one (a client, a reviewer, an operator
reading a log) still sees one format: the same media type, the same members, types named
`urn:fedchurn:problem:<name>`, and the same bearer challenge. Each service adds its own extension
members (RFC 9457 section 3.2) by subclassing `ProblemBody`: the API adds its field `errors`, the
key holder adds its `reason` and the devices it `dropped`.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

__all__ = [
    "CHALLENGE",
    "PROBLEM_JSON",
    "UNAUTHORIZED",
    "ProblemBody",
    "problem_json",
    "problem_type",
]

PROBLEM_JSON = "application/problem+json"
_TYPE_PREFIX = "urn:fedchurn:problem:"
CHALLENGE = 'Bearer realm="fedchurn"'  # WWW-Authenticate of a 401


def problem_type(name: str) -> str:
    """The type URI of a named kind of problem (`cohort_too_small` -> `...:cohort-too-small`)."""
    return _TYPE_PREFIX + name.replace("_", "-")


UNAUTHORIZED = (problem_type("unauthorized"), "Unauthorized")  # (type, title) of a 401


class ProblemBody(BaseModel):
    """The members RFC 9457 defines; a service's own model subclasses it with its extensions."""

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="Short, human-readable summary of the kind of problem.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong with this request.")
    instance: str | None = Field(default=None, description="The request path.")

    @classmethod
    def status_title(cls, status: int) -> str:
        """The title of a problem with no type of its own: the status's reason phrase."""
        return HTTPStatus(status).phrase


def problem_json(body: ProblemBody, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The response carrying `body`: its status, `application/problem+json`, no empty member."""
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=body.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )
