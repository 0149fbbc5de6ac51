"""The catalogue, the feature specification and the policy rules: static bodies with ETags."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from fedchurn.server.api.caching import cached, cached_responses
from fedchurn.server.api.constants import PREFIX
from fedchurn.server.api.deps import IfNoneMatch
from fedchurn.server.api.problems import ProblemError
from fedchurn.server.api.views import static_bodies
from fedchurn.server.api_models import Category, CategoryList, FeatureSpec, RetentionPolicy
from fedchurn.server.problem_details import problem_type
from fedchurn.shared.catalogue import CATEGORIES, CATEGORY_IDS

router = APIRouter(prefix=PREFIX)


def _static(key: str, if_none_match: str | None) -> Response:
    """A body serialised once per process, with its ETag (304 when If-None-Match matches)."""
    s = static_bodies()[key]
    return cached(s.body, if_none_match, etag=s.etag)


@router.get(
    "/categories",
    response_model=CategoryList,
    tags=["catalogue"],
    summary="The 17 data categories",
    responses=cached_responses(),
)
async def categories(if_none_match: IfNoneMatch = None) -> Response:
    """Every catalogue entry: purposes, legal basis, retention, what leaves the device, features
    fed, and the Apple / Google Play / DPV mapping."""
    return _static("categories", if_none_match)


@router.get(
    "/categories/{category_id}",
    response_model=Category,
    tags=["catalogue"],
    summary="One data category",
    responses=cached_responses(404, 422),
)
async def category(
    category_id: Annotated[
        str,
        Path(
            max_length=64,
            description="A category id.",
            openapi_examples={c.id: {"value": c.id} for c in CATEGORIES[:3]},
        ),
    ],
    if_none_match: IfNoneMatch = None,
) -> Response:
    if f"category:{category_id}" not in static_bodies():
        raise ProblemError(
            404,
            problem_type("unknown_category"),
            "Unknown data category",
            f"no category {category_id!r}; known: {', '.join(CATEGORY_IDS)}",
        )
    return _static(f"category:{category_id}", if_none_match)


@router.get(
    "/features",
    response_model=FeatureSpec,
    tags=["catalogue"],
    summary="The feature specification",
    responses=cached_responses(),
)
async def features(if_none_match: IfNoneMatch = None) -> Response:
    """The 127 features in vector order, with the data categories each is computed from."""
    return _static("features", if_none_match)


@router.get(
    "/retention-policy",
    response_model=RetentionPolicy,
    tags=["model"],
    summary="Retention-policy rules",
    responses=cached_responses(),
)
async def retention_policy(if_none_match: IfNoneMatch = None) -> Response:
    """The rules the device applies, each with the module its values come from."""
    return _static("retention_policy", if_none_match)
