"""What the audit log says: runs, rounds, what a device uploads, the DP budget, the model card.

Dynamic (`no-cache`): the audit log grows during a run.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from fedchurn.server.api.constants import DYNAMIC_CACHE, PREFIX
from fedchurn.server.api.deps import Limit, Offset, RunIdPath, RunIdQuery, Store, reject_inverted_range
from fedchurn.server.api.problems import problem_responses
from fedchurn.server.api.views import (
    build_model_card,
    build_privacy_budget,
    build_upload_spec,
    to_audit_round,
    to_run_detail,
    to_run_summary,
)
from fedchurn.server.api_models import (
    AuditRoundPage,
    ModelCard,
    PrivacyBudget,
    ProtectionMode,
    RunDetail,
    RunPage,
    Timestamp,
    UploadSpec,
)
from fedchurn.server.audit import RoundFilters, UnknownRunError


def no_cache(response: Response) -> None:
    """Every answer here is revalidated: the audit log grows during a run."""
    response.headers["Cache-Control"] = DYNAMIC_CACHE


def next_offset(offset: int, shown: int, total: int) -> int | None:
    """Where the next page starts, or None on the last one."""
    nxt = offset + shown
    return nxt if shown and nxt < total else None


router = APIRouter(prefix=PREFIX, dependencies=[Depends(no_cache)])


@router.get(
    "/upload-spec",
    response_model=UploadSpec,
    tags=["privacy"],
    summary="What a device uploads per round",
    responses=problem_responses(404, 422, 503),
)
def upload_spec(store: Store, run_id: RunIdQuery = None) -> UploadSpec:
    """Size, protection mode, cryptographic parameters, and what the aggregator and the key
    holder can learn, as recorded by the run (default: the latest)."""
    return build_upload_spec(store, run_id)


@router.get(
    "/privacy-budget",
    response_model=PrivacyBudget,
    tags=["privacy"],
    summary="Differential-privacy budget",
    responses=problem_responses(404, 422, 503),
)
def privacy_budget(store: Store, run_id: RunIdQuery = None) -> PrivacyBudget:
    """ε spent so far, target ε, δ and the accountant of a run (default: the latest).

    ε is given twice: `epsilon_spent` against anyone outside the aggregator, assuming the
    sampling of devices is secret from them (amplification by sampling), and
    `epsilon_aggregator_spent` against the aggregator, which knows who took part (no
    amplification, every round counted)."""
    return build_privacy_budget(store, run_id)


@router.get(
    "/model-card",
    response_model=ModelCard,
    tags=["model"],
    summary="Model card",
    responses=problem_responses(503),
)
def model_card(store: Store) -> ModelCard:
    """Version, rounds, federated evaluation, baselines, the logic in plain words (GDPR Art.
    13(2)(f)), the categories that drive the score and the retention-policy rules."""
    return build_model_card(store)


@router.get(
    "/runs",
    response_model=RunPage,
    tags=["audit"],
    summary="Training runs, newest first",
    responses=problem_responses(422, 503),
)
def runs(store: Store, offset: Offset = 0, limit: Limit = 50) -> RunPage:
    page = store.list_runs(offset, limit)
    return RunPage(
        total=page.total,
        offset=offset,
        limit=page.limit,
        next_offset=next_offset(offset, len(page.items), page.total),
        items=[to_run_summary(r) for r in page.items],
    )


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    tags=["audit"],
    summary="One training run",
    responses=problem_responses(404, 422, 503),
)
def run(run_id: RunIdPath, store: Store) -> RunDetail:
    found = store.get_run(run_id)
    if found is None:
        raise UnknownRunError(f"no run {run_id!r}")
    return to_run_detail(found)


@router.get(
    "/audit/rounds",
    response_model=AuditRoundPage,
    tags=["audit"],
    summary="Audit log of training rounds",
    responses=problem_responses(404, 422, 503),
)
def audit_rounds(
    store: Store,
    run_id: Annotated[str | None, Query(max_length=64, description="Only this run.")] = None,
    protection_mode: Annotated[ProtectionMode | None, Query(description="Only this mode.")] = None,
    skipped: Annotated[bool | None, Query(description="Only skipped (true) or run (false) rounds.")] = None,
    with_refusals: Annotated[bool | None, Query(description="Only rounds with refused devices.")] = None,
    min_round: Annotated[
        int | None, Query(ge=0, le=10**9, description="Only rounds numbered this or more.")
    ] = None,
    max_round: Annotated[
        int | None, Query(ge=0, le=10**9, description="Only rounds numbered this or less (≥ min_round).")
    ] = None,
    since: Annotated[Timestamp | None, Query(description="Finished at or after (RFC 3339).")] = None,
    until: Annotated[
        Timestamp | None, Query(description="Finished before (RFC 3339; later than since).")
    ] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> AuditRoundPage:
    """Time, cohort size, devices refused counted by reason (never named), bytes received,
    protection mode, DP noise and ε spent so far (against outsiders and against the
    aggregator), per round; in run order then round order. Unknown parameters and ranges
    that hold nothing (`min_round` above `max_round`, `since` not before `until`) are 422; an
    unknown `run_id` is 404, as on every route that takes one."""
    reject_inverted_range("min_round", min_round, "max_round", max_round)
    reject_inverted_range("since", since, "until", until, exclusive=True)
    if run_id is not None and store.get_run(run_id) is None:
        raise UnknownRunError(f"no run {run_id!r}")
    filters = RoundFilters(
        run_id=run_id,
        protection_mode=protection_mode,
        skipped=skipped,
        with_refusals=with_refusals,
        min_round=min_round,
        max_round=max_round,
        since=since,
        until=until,
    )
    page = store.list_rounds(filters=filters, offset=offset, limit=limit)
    return AuditRoundPage(
        total=page.total,
        offset=offset,
        limit=page.limit,
        next_offset=next_offset(offset, len(page.items), page.total),
        items=[to_audit_round(r) for r in page.items],
    )
