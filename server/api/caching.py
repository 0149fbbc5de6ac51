"""ETags and caching of the static bodies (catalogue, features, policy rules, the page)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from fedchurn.server.api.constants import STATIC_CACHE
from fedchurn.server.api.problems import problem_responses

ETAG_HEADERS = {
    "ETag": {"description": "Strong validator of the body.", "schema": {"type": "string"}},
    "Cache-Control": {"description": "Caching policy.", "schema": {"type": "string"}},
}


def cached_responses(*errors: int) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"headers": ETAG_HEADERS},
        304: {"description": "Not modified (the If-None-Match ETag matches).", "headers": ETAG_HEADERS},
        **problem_responses(*sorted({422, *errors})),
    }


# --- caching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Static:
    """A body computed once per process, with its ETag."""

    body: bytes
    etag: str


def make_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in if_none_match.split(","))


def cached(
    body: bytes,
    if_none_match: str | None,
    *,
    media_type: str = "application/json",
    etag: str | None = None,
    cache_control: str = STATIC_CACHE,
    headers: dict[str, str] | None = None,
) -> Response:
    tag = etag or make_etag(body)
    h = {"ETag": tag, "Cache-Control": cache_control, **(headers or {})}
    if etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=h)
    return Response(content=body, media_type=media_type, headers=h)


def static_of(model: Any) -> Static:
    body = model.model_dump_json().encode()
    return Static(body, make_etag(body))
