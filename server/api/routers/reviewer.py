"""The human page: everything the API says, server-rendered, in English or Simplified Chinese."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from fedchurn.server import i18n
from fedchurn.server.api.caching import ETAG_HEADERS, cached
from fedchurn.server.api.constants import DYNAMIC_CACHE, PREFIX
from fedchurn.server.api.deps import IfNoneMatch, Store
from fedchurn.server.api.problems import problem_responses
from fedchurn.server.api.views import (
    build_categories,
    build_features,
    build_model_card,
    build_privacy_budget,
    build_upload_spec,
    to_audit_round,
    to_run_summary,
)

router = APIRouter(prefix=PREFIX)


@router.get(
    "/reviewer",
    response_class=HTMLResponse,
    response_model=None,
    tags=["reviewer"],
    summary="The reviewer page (HTML)",
    responses={
        200: {"headers": {**ETAG_HEADERS, "Content-Language": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified.", "headers": ETAG_HEADERS},
        **problem_responses(422, 503),
    },
)
def reviewer(
    request: Request,
    store: Store,
    lang: Annotated[
        i18n.Lang | None, Query(description="Page language; default from Accept-Language, else en.")
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """All of the above on one server-rendered page, in English or Simplified Chinese."""
    from fedchurn.server.reviewer_page import ReviewerData, render

    chosen = i18n.negotiate(lang, request.headers.get("accept-language"))
    latest = store.latest_run()
    runs = store.list_runs(0, 20)
    data = ReviewerData(
        categories=build_categories(),
        features=build_features(),
        upload=build_upload_spec(store, None, chosen),
        budget=build_privacy_budget(store, None, chosen),
        card=build_model_card(store, chosen),
        latest_run=to_run_summary(latest) if latest else None,
        rounds=[to_audit_round(r) for r in store.list_rounds(latest.run_id, limit=200).items]
        if latest
        else [],
        rounds_total=latest.rounds_recorded if latest else 0,
        runs=[to_run_summary(r) for r in runs.items],
        runs_total=runs.total,
        api_prefix=PREFIX,
    )
    body = render(data, chosen).encode()
    return cached(
        body,
        if_none_match,
        media_type="text/html; charset=utf-8",
        cache_control=DYNAMIC_CACHE,
        headers={"Content-Language": i18n.HTML_LANG[chosen], "Vary": "Accept-Language"},
    )
